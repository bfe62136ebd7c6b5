"""Peak resident memory of one model's session, measured in a fresh child process."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bnfold.errors import BadInputError
from bnfold.verify.settings import SessionSettings


@dataclass(frozen=True)
class PeakMemory:
    """The child's peak RSS, and how much of it came after inputs and imports (session + runs)."""

    peak_mib: float
    session_mib: float

    def to_dict(self) -> dict:
        return dict(vars(self))


def peak_memory(
    model: Path, inputs_npz: Path, session: SessionSettings, runs: int = 3
) -> PeakMemory:
    """Create a session on ``model`` in a child process, run it ``runs`` times, read its peak RSS."""
    args = {
        "model": str(model),
        "inputs": str(inputs_npz),
        "provider": session.provider,
        "opt_level": session.opt_level,
        "threads": session.threads,
        "runs": runs,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bnfold.bench._peak_child", json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise BadInputError(model, f"peak-memory child failed: {last}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return PeakMemory(data["peak_kib"] / 1024, (data["peak_kib"] - data["baseline_kib"]) / 1024)

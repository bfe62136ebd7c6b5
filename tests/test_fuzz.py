"""A short, seeded fuzzing pass in CI: ``benchmarks/fuzz.py`` with its deterministic mutator.

Execution ``i`` of seed 0 always mutates the same seed model in the same way, so this pass runs
the same 10000 inputs every time; each must end in success, a clean bnfold error or a clean
verification failure, with the inputs untouched and nothing staged left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]
FUZZ = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz.py"
RUNS = 10000


def test_seeded_fuzz_pass_finds_nothing(tmp_path):
    summary = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [sys.executable, str(FUZZ), "--engine", "mutator", "--seed", "0", "--runs", str(RUNS),
         "--seconds", "600", "--json", str(summary)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(summary.read_text())
    assert data["executions"] == RUNS and data["findings"] == []
    outcomes = data["outcomes"]
    # the pass reaches past the loader: some inputs fold (and verify) cleanly
    assert outcomes["ok"] > 100 and outcomes["bad_input"] > 1000, outcomes

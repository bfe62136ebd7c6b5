"""The settings ``check`` and ``bench`` share: how input sets are made, how sessions are opened.

Plain typed dataclasses with no heavy imports (onnxruntime and numpy load only when a setting is
validated or used), so the CLI can build them before it needs the runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bnfold.errors import UsageError

# One input set (every input of one run) may take at most this many bytes unless raised.
DEFAULT_INPUT_BUDGET = 1 << 30
DEFAULT_BATCH = 1  # a symbolic batch (first) dim is run at this size unless told otherwise


@dataclass(frozen=True)
class SessionSettings:
    """How an onnxruntime session is opened: provider (cpu/cuda), optimisation level, and
    intra-op threads (None: onnxruntime chooses; else inter-op 1, sequential)."""

    provider: str = "cpu"
    opt_level: str = "disable"
    threads: int | None = None


@dataclass
class RunSettings:
    """What ``CheckOptions`` and ``BenchOptions`` share: input sets and sessions.

    ``shapes`` maps an input name to its full shape or a symbolic dim name to its size;
    ``batch`` sizes every symbolic first dim that ``shapes`` leaves open (None: 1, and the
    result notes it); ``inputs`` are real input sets (.npz files or folders of them);
    ``max_input_bytes`` caps one input set before it is drawn or read.
    """

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    batch: int | None = None
    seed: int = 0
    int_range: tuple[int, int] = (0, 10)
    inputs: list[str | os.PathLike[str]] = field(default_factory=list)
    max_input_bytes: int = DEFAULT_INPUT_BUDGET
    provider: str = "cpu"
    threads: int | None = None

    def session(self, opt_level: str) -> SessionSettings:
        """The session settings at ``opt_level``."""
        return SessionSettings(self.provider, opt_level, self.threads)

    def validate(self) -> None:
        """Raise UsageError on a setting no run can use (checks the provider is installed)."""
        from bnfold.verify.session import check_provider

        if self.batch is not None and self.batch < 1:
            raise UsageError(f"--batch must be >= 1, not {self.batch}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, not {self.threads}")
        if self.max_input_bytes < 1:
            raise UsageError(f"--max-input-mib must be >= 1, not {self.max_input_bytes}")
        for name, dims in self.shapes.items():
            if any(int(d) < 1 for d in dims):
                shape = "x".join(str(d) for d in dims)
                raise UsageError(
                    f"--shape {name}={shape}: every dim must be >= 1 "
                    "(an empty input proves nothing)"
                )
        lo, hi = self.int_range
        if lo > hi:
            raise UsageError(f"--int-range {lo} {hi}: low is above high")
        check_provider(self.provider)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON values (tuples as lists, paths as strings)."""
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}


def _json_value(value: object) -> object:
    if isinstance(value, Path | os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value

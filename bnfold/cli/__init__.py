"""Command-line interface: thin commands over the library API.

Each command module registers itself on ``bnfold.cli._app.app``; importing a module here must
not import torch, onnx, onnx-ir, onnxruntime, numpy or matplotlib (each command imports what it
needs inside its function), so ``bnfold --help`` starts fast (``tests/test_startup.py``).
"""

from __future__ import annotations

import importlib

from bnfold.cli._app import app

_COMMAND_MODULES = ("fold", "check", "bench", "quantize", "train")

for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"bnfold.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a command module not written yet
        if _exc.name != f"bnfold.cli.{_name}":
            raise


def main() -> None:
    """Console-script entry point: a signal during a write removes what was staged and exits
    128 + its number (see ``bnfold.atomic``)."""
    from bnfold.atomic import exit_on_signals

    exit_on_signals()
    app(prog_name="bnfold")  # also under `python -m bnfold`


__all__ = ["app", "main"]

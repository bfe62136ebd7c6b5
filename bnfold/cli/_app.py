"""The typer application every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="bnfold",
    help="Fold BatchNormalization into neighbouring linear layers of ONNX models, and prove it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

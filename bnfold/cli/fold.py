"""`bnfold fold` and `bnfold inspect`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bnfold.api import FoldResult, fold
from bnfold.cli._app import app
from bnfold.cli._errors import cli_errors
from bnfold.errors import BadInputError, UsageError
from bnfold.report import render_table

ModelArg = Annotated[Path, typer.Argument(help="The ONNX model to fold.", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
RefuseInputs = Annotated[
    bool,
    typer.Option(
        "--refuse-initializer-inputs",
        help="Refuse to fold parameters that are initializers and graph inputs (IR < 4).",
    ),
]
NoAffine = Annotated[
    bool,
    typer.Option(
        "--no-affine", help="Fold BatchNormalization only, not per-channel Mul/Add/Sub/Div."
    ),
]


def default_output(model: Path) -> Path:
    """``model.onnx`` -> ``model.folded.onnx`` beside it."""
    return model.with_name(f"{model.stem}.folded{model.suffix or '.onnx'}")


def _emit(result: FoldResult, as_json: bool, quiet: bool) -> None:
    report = result.report
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
        return
    if quiet:
        return
    console = Console()
    if report.folded or report.skipped:
        console.print(render_table(report))
    for note in report.notes:
        console.print(f"[dim]note:[/] {note}")
    console.print(report.summary())


def _write_report(path: Path | None, result: FoldResult) -> None:
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(result.report.to_json() + "\n")
    tmp.replace(path)


@app.command("fold")
def fold_command(
    model: ModelArg,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to write (default: MODEL.folded.onnx)."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the fold report as JSON here.")
    ] = None,
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
    refuse_initializer_inputs: RefuseInputs = False,
    no_affine: NoAffine = False,
) -> None:
    """Fold every foldable BatchNormalization of MODEL into its linear producer."""
    with cli_errors():
        out = output or default_output(model)
        if out.resolve() == model.resolve() and output is None:
            raise UsageError(f"{model}: refusing to overwrite the input; name it with -o")
        result = fold(
            model, allow_initializer_inputs=not refuse_initializer_inputs, affine=not no_affine
        )
        try:
            result.save(out)
        except OSError as exc:
            raise BadInputError(out, f"cannot write ({exc.strerror or exc})") from None
        _write_report(report, result)
        _emit(result, as_json, quiet)
        if not quiet and not as_json:
            Console(stderr=True).print(f"wrote {out}", style="dim")


@app.command("inspect")
def inspect_command(
    model: ModelArg,
    as_json: JsonFlag = False,
    refuse_initializer_inputs: RefuseInputs = False,
    no_affine: NoAffine = False,
) -> None:
    """Show what `bnfold fold` would do to MODEL, writing nothing."""
    with cli_errors():
        result = fold(
            model, allow_initializer_inputs=not refuse_initializer_inputs, affine=not no_affine
        )
        _emit(result, as_json, quiet=False)


__all__ = ["default_output", "fold_command", "inspect_command"]

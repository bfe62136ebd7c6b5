"""``bnfold check REFERENCE CANDIDATE``: prove two models equivalent with onnxruntime."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bnfold import paths
from bnfold.cli import output
from bnfold.cli import verify_options as vo
from bnfold.cli._app import app
from bnfold.cli._errors import cli_errors
from bnfold.cli.option_groups import option_groups


@app.command()
@option_groups
def check(
    reference: Annotated[Path, typer.Argument(help="The reference model (e.g. before folding).")],
    candidate: Annotated[Path, typer.Argument(help="The candidate model (e.g. the folded one).")],
    inputs: vo.InputFlags,
    compare: vo.CompareFlags,
    out_flags: vo.OutputFlags,
    opt_level: vo.OptLevelOpt = "disable",
    threads: vo.ThreadsOpt = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            help="Report errors as multiples of the reference's own noise.",
            rich_help_panel=vo.COMPARE_PANEL,
        ),
    ] = False,
    locate: Annotated[
        bool,
        typer.Option(
            help="On failure, name the first diverging tensor and its node.",
            rich_help_panel=vo.COMPARE_PANEL,
        ),
    ] = False,
) -> None:
    """Run both models on the same inputs and compare every output. Exit 0 equivalent, 1 not,
    2 bad input. Symbolic batch dims run at 1 unless --batch or --shape say otherwise."""
    from bnfold.verify.check import check_models

    with cli_errors():
        options = vo.check_options(
            inputs, compare, opt_level=opt_level, threads=threads, calibrate=calibrate,
            locate=locate,
        )  # fmt: skip
        paths.guard(
            [output.json_output(out_flags)],
            models=[reference, candidate],
            files=inputs.input_files(),
        )
        result = check_models(reference, candidate, options)
        output.show(out_flags, result.render())
        output.emit_json(out_flags, result.to_dict())
    if not result.passed:
        failed = ", ".join(result.failed_outputs)
        print(
            f"bnfold: error: {candidate}: not equivalent to {reference} ({failed} beyond "
            "tolerance)",
            file=sys.stderr,
        )
        raise typer.Exit(1)

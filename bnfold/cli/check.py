"""``bnfold check REFERENCE CANDIDATE``: prove two models equivalent with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bnfold import atomic, paths
from bnfold.cli import verify_options as vo
from bnfold.cli._app import app
from bnfold.cli._errors import cli_errors
from bnfold.verify import check_models
from bnfold.verify.inputs import npz_files


@app.command()
def check(
    reference: Annotated[Path, typer.Argument(help="The reference model (e.g. before folding).")],
    candidate: Annotated[Path, typer.Argument(help="The candidate model (e.g. the folded one).")],
    shape: vo.ShapeOpt = None,
    inputs: vo.InputsOpt = None,
    samples: vo.SamplesOpt = 3,
    seed: vo.SeedOpt = 0,
    int_range: vo.IntRangeOpt = (0, 10),
    batch: vo.BatchOpt = None,
    provider: vo.ProviderOpt = "cpu",
    opt_level: vo.OptLevelOpt = "disable",
    atol: vo.AtolOpt = None,
    rtol: vo.RtolOpt = None,
    tolerance_mode: vo.ToleranceModeOpt = "range",
    output_tol: vo.OutputTolOpt = None,
    threads: vo.ThreadsOpt = None,
    max_input_mib: vo.MaxInputMibOpt = vo.DEFAULT_MAX_INPUT_MIB,
    calibrate: Annotated[
        bool, typer.Option(help="Report errors as multiples of the reference's own noise.")
    ] = False,
    locate: Annotated[
        bool, typer.Option(help="On failure, name the first diverging tensor and its node.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="PATH", help="Write the full result as JSON.")
    ] = None,
) -> None:
    """Run both models on the same inputs and compare every output. Exit 0 equivalent, 1 not, 2 bad input."""
    with cli_errors():
        options = vo.build_check_options(
            shape=shape,
            inputs=inputs,
            samples=samples,
            seed=seed,
            int_range=int_range,
            batch=batch,
            provider=provider,
            opt_level=opt_level,
            atol=atol,
            rtol=rtol,
            tolerance_mode=tolerance_mode,
            output_tol=output_tol,
            threads=threads,
            calibrate=calibrate,
            locate=locate,
            max_input_mib=max_input_mib,
        )
        paths.guard(
            [paths.Output("--json", json_path) if json_path else None],
            models=[reference, candidate],
            files=npz_files(inputs or []),
        )
        result = check_models(reference, candidate, options)
        Console(width=max(Console().width, 160)).print(result.render())
        if json_path is not None:
            atomic.write_json(json_path, result.to_dict())
    if not result.passed:
        raise typer.Exit(1)

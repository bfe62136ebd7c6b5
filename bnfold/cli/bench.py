"""``bnfold bench REFERENCE CANDIDATE``: measure what a fold buys in onnxruntime."""

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
def bench(
    reference: Annotated[Path, typer.Argument(help="The reference model (e.g. before folding).")],
    candidate: Annotated[Path, typer.Argument(help="The candidate model (e.g. the folded one).")],
    inputs: vo.InputFlags,
    timing: vo.TimingFlags,
    out_flags: vo.OutputFlags,
    opt_level: Annotated[
        list[str] | None,
        typer.Option(
            "--opt-level",
            metavar="disable|basic|extended|all",
            help="Level(s) to measure; repeatable or comma-separated (default: disable and all).",
            rich_help_panel=vo.TIMING_PANEL,
        ),
    ] = None,
    memory: Annotated[
        bool,
        typer.Option(
            help="Measure peak memory in a child process per side.",
            rich_help_panel=vo.TIMING_PANEL,
        ),
    ] = True,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            metavar="PATH.png",
            help="Chart of per-round latencies.",
            rich_help_panel=vo.OUTPUT_PANEL,
        ),
    ] = None,
    fail_if_slower: Annotated[
        float | None,
        typer.Option(
            "--fail-if-slower",
            metavar="SPEEDUP",
            min=0.0,
            help="Exit 1 if at some level the whole 95% interval of the speed-up (reference / "
            "candidate latency) lies below SPEEDUP, e.g. 0.95: measurably over ~5% slower.",
            rich_help_panel=vo.TIMING_PANEL,
        ),
    ] = None,
) -> None:
    """Time both models: warm-up, shuffled paired rounds, speed-up (reference latency /
    candidate latency, above 1: the candidate is faster) with a bootstrap 95% interval."""
    from bnfold.bench.bench import FEW_ROUNDS, bench_models

    levels = tuple(
        x.strip() for v in (opt_level or ["disable,all"]) for x in v.split(",") if x.strip()
    )
    with cli_errors():
        options = vo.bench_options(inputs, timing, levels=levels, memory=memory)
        paths.guard(
            [output.json_output(out_flags), paths.Output("--plot", plot, "plot") if plot else None],
            models=[reference, candidate],
            files=inputs.input_files(),
        )
        if fail_if_slower is not None and fail_if_slower > 1:
            output.status(
                out_flags,
                f"note: --fail-if-slower {fail_if_slower} fails unless the candidate is "
                f"measurably at least {fail_if_slower}x as fast; to allow it 5% slower, give 0.95",
            )
        if fail_if_slower is not None and timing.rounds < FEW_ROUNDS:
            output.status(
                out_flags,
                f"note: {timing.rounds} rounds give wide intervals; --fail-if-slower fails only "
                f"a level whose whole interval is below {fail_if_slower} (use --rounds "
                f"{FEW_ROUNDS} or more)",
            )
        result = bench_models(reference, candidate, options)
        if plot is not None:
            from bnfold.bench.plot import write_plot

            write_plot(result, plot)
            output.wrote(out_flags, plot)
        output.show(out_flags, result.render())
        output.emit_json(out_flags, result.to_dict())
    if fail_if_slower is not None:
        slow = result.slower_than(fail_if_slower)
        if slow:
            detail = ", ".join(
                f"{lv.level} {lv.speedup.ratio:.3f} [{lv.speedup.ci_low:.3f}, "
                f"{lv.speedup.ci_high:.3f}]"
                for lv in slow
            )
            print(
                f"bnfold: error: {candidate}: slower than --fail-if-slower {fail_if_slower} "
                f"allows (speed-up [95% CI] wholly below it at {detail})",
                file=sys.stderr,
            )
            raise typer.Exit(1)

"""``bnfold bench REFERENCE CANDIDATE``: measure what a fold buys in onnxruntime."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bnfold import atomic, paths
from bnfold.bench import BenchOptions, bench_models, write_plot
from bnfold.cli import verify_options as vo
from bnfold.cli._app import app
from bnfold.cli._errors import cli_errors


@app.command()
def bench(
    reference: Annotated[Path, typer.Argument(help="The reference model (e.g. before folding).")],
    candidate: Annotated[Path, typer.Argument(help="The candidate model (e.g. the folded one).")],
    opt_level: Annotated[
        list[str] | None,
        typer.Option(
            "--opt-level",
            metavar="disable|basic|extended|all",
            help="Level(s) to measure; repeatable or comma-separated [default: disable and all].",
        ),
    ] = None,
    provider: vo.ProviderOpt = "cpu",
    threads: Annotated[
        int, typer.Option("--threads", min=1, help="onnxruntime intra-op threads (inter-op 1).")
    ] = 1,
    batch: vo.BatchOpt = None,
    shape: vo.ShapeOpt = None,
    seed: vo.SeedOpt = 0,
    int_range: vo.IntRangeOpt = (0, 10),
    max_input_mib: vo.MaxInputMibOpt = vo.DEFAULT_MAX_INPUT_MIB,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up runs per side and level.")] = 5,
    rounds: Annotated[int, typer.Option(min=1, help="Paired rounds per level.")] = 20,
    iters: Annotated[int, typer.Option(min=1, help="Runs per side per round (median kept).")] = 10,
    memory: Annotated[
        bool, typer.Option(help="Measure peak memory in a child process per side.")
    ] = True,
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="PATH", help="Write the result as JSON.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="PATH.png", help="Chart of per-round latencies."),
    ] = None,
    fail_if_slower: Annotated[
        float | None,
        typer.Option(
            "--fail-if-slower",
            metavar="RATIO",
            min=0.0,
            help="Exit 1 if candidate latency / reference latency exceeds RATIO at any level.",
        ),
    ] = None,
) -> None:
    """Time both models: warm-up, shuffled paired rounds, speed-up with a bootstrap 95% interval."""
    levels = tuple(
        x.strip() for v in (opt_level or ["disable,all"]) for x in v.split(",") if x.strip()
    )
    with cli_errors():
        options = BenchOptions(
            levels=levels,
            provider=provider,
            threads=threads,
            warmup=warmup,
            rounds=rounds,
            iters=iters,
            batch=batch,
            shapes=vo.parse_shapes(shape),
            seed=seed,
            int_range=tuple(int_range),
            memory=memory,
            max_input_bytes=max_input_mib << 20,
        )
        options.validate()
        paths.guard(
            [
                paths.Output("--json", json_path) if json_path else None,
                paths.Output("--plot", plot, "plot") if plot else None,
            ],
            models=[reference, candidate],
        )
        result = bench_models(reference, candidate, options)
        if plot is not None:
            write_plot(result, plot)
        Console(width=max(Console().width, 160)).print(result.render())
        if json_path is not None:
            atomic.write_json(json_path, result.to_dict())
    if fail_if_slower is not None:
        slow = result.slower_than(fail_if_slower)
        if slow:
            detail = ", ".join(
                f"{lv.level}: {lv.slowdown:.3f}x" for lv in result.levels if lv.level in slow
            )
            print(
                f"bnfold: candidate slower than {fail_if_slower}x the reference ({detail})",
                file=sys.stderr,
            )
            raise typer.Exit(1)

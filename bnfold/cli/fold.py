"""`bnfold fold` and `bnfold inspect`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bnfold import atomic, paths
from bnfold.api import FoldResult, fold, fold_file
from bnfold.cli import verify_options as vo
from bnfold.cli._app import app
from bnfold.cli._errors import cli_errors
from bnfold.errors import BadInputError, UsageError, VerificationError
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
    atomic.write_text(path, result.report.to_json() + "\n")


@app.command("fold")
def fold_command(
    model: ModelArg,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to write (default: MODEL.folded.onnx)."),
    ] = None,
    in_place: Annotated[
        bool,
        typer.Option("--in-place", help="Write the folded model over MODEL (-o must be absent)."),
    ] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the fold report as JSON here.")
    ] = None,
    as_json: JsonFlag = False,
    quiet: QuietFlag = False,
    refuse_initializer_inputs: RefuseInputs = False,
    no_affine: NoAffine = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Do not check the folded model with onnxruntime.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Write even if verification fails (the report says so).")
    ] = False,
    shape: vo.ShapeOpt = None,
    inputs: vo.InputsOpt = None,
    samples: vo.SamplesOpt = 3,
    seed: vo.SeedOpt = 0,
    int_range: vo.IntRangeOpt = (0, 10),
    batch: vo.BatchOpt = None,
    provider: vo.ProviderOpt = "cpu",
    atol: vo.AtolOpt = None,
    rtol: vo.RtolOpt = None,
    tolerance_mode: vo.ToleranceModeOpt = "range",
    output_tol: vo.OutputTolOpt = None,
    max_input_mib: vo.MaxInputMibOpt = vo.DEFAULT_MAX_INPUT_MIB,
) -> None:
    """Fold every foldable BatchNormalization of MODEL into its linear producer, then verify.

    The folded model is checked against MODEL with onnxruntime (optimisations off) before it is
    written; if outputs differ beyond tolerance nothing is written and the exit code is 1.
    A symbolic first dim is verified at 1 unless --batch or --shape says otherwise.
    """
    with cli_errors():
        if in_place and output is not None and not paths.same_file(output, model):
            raise UsageError("--in-place writes over MODEL: drop -o, or give -o MODEL")
        out = model if in_place else output or default_output(model)
        verify = None
        if not no_verify:
            verify = vo.build_check_options(
                shape=shape, inputs=inputs, samples=samples, seed=seed, int_range=int_range,
                batch=batch if batch is not None or shape else 1, provider=provider, atol=atol, rtol=rtol,
                tolerance_mode=tolerance_mode, output_tol=output_tol, locate=True,
                max_input_mib=max_input_mib,
            )  # fmt: skip
        try:
            with _save_progress(enabled=not (quiet or as_json)) as progress:
                result = fold_file(
                    model,
                    out,
                    verify=verify,
                    force=force,
                    allow_initializer_inputs=not refuse_initializer_inputs,
                    affine=not no_affine,
                    progress=progress,
                    in_place=in_place,
                    also_writes=[paths.Output("--report", report)] if report else [],
                )
        except VerificationError as exc:
            failed: FoldResult = exc.result
            _write_report(report, failed)
            if failed.check is not None and not as_json:
                Console(width=max(Console().width, 140)).print(failed.check.render())
            elif as_json:
                sys.stdout.write(failed.report.to_json() + "\n")
            raise
        except OSError as exc:
            if exc.filename is not None and not _staged_for(Path(exc.filename), out):
                raise
            raise BadInputError(out, f"cannot write ({exc.strerror or exc})") from None
        _write_report(report, result)
        _emit(result, as_json, quiet)
        if not quiet and not as_json:
            verified = result.report.verify
            if verified is not None:
                worst = _worst_error(verified)
                status = (
                    "[red]FAILED, written with --force[/]"
                    if result.report.forced
                    else "[green]passed[/]"
                )
                Console().print(
                    f"verify: {status} (onnxruntime, optimisations off; max error/range {worst})"
                )
            elif no_verify:
                Console().print("verify: skipped (--no-verify)")
            Console(stderr=True).print(f"wrote {out}", style="dim")


def _staged_for(path: Path, out: Path) -> bool:
    """Whether ``path`` is ``out`` or a file staged for it (in a temporary folder beside it)."""
    return paths.same_file(path, out) or path.parent.name.startswith(".bnfold-")


@contextlib.contextmanager
def _save_progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar over the tensors written (shown only for external-data saves, and only
    once writing starts: an error before it stays one line)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar: Progress | None = None
    task = None

    def update(done: int, total: int) -> None:
        nonlocal bar, task
        if bar is None:
            bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            bar.start()
            task = bar.add_task("writing tensors", total=total)
        assert task is not None
        bar.update(task, completed=done)

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


def _worst_error(verify: dict) -> str:
    values = [o.get("max_rel_range") for o in verify.get("outputs", [])]
    values = [v for v in values if isinstance(v, int | float)]
    return f"{max(values):.2e}" if values else "n/a"


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

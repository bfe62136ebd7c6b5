"""`bnfold fold` and `bnfold inspect`: one model in this process, several in worker processes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from bnfold import atomic, paths
from bnfold.cli import output
from bnfold.cli import verify_options as vo
from bnfold.cli._app import app
from bnfold.cli._errors import cli_errors
from bnfold.cli.option_groups import OptionGroup, option_groups
from bnfold.errors import BadInputError, UsageError, VerificationError

if TYPE_CHECKING:
    from bnfold.api import FoldResult
    from bnfold.cli.many import Job
    from bnfold.report import FoldReport
    from bnfold.verify.check import CheckOptions

FOLD_PANEL = "Folding"

ModelsArg = Annotated[
    list[Path],
    typer.Argument(
        help="ONNX model(s), or folders of them (searched recursively).", show_default=False
    ),
]


@dataclass
class FoldFlags(OptionGroup):
    """How to fold (fold, inspect)."""

    refuse_initializer_inputs: Annotated[
        bool,
        typer.Option(
            "--refuse-initializer-inputs",
            help="Refuse to fold parameters that are initializers and graph inputs (IR < 4).",
            rich_help_panel=FOLD_PANEL,
        ),
    ] = False
    no_affine: Annotated[
        bool,
        typer.Option(
            "--no-affine",
            help="Fold BatchNormalization only, not per-channel Mul/Add/Sub/Div.",
            rich_help_panel=FOLD_PANEL,
        ),
    ] = False
    forward: Annotated[
        str,
        typer.Option(
            "--forward",
            metavar="off|exact|int8-safe",
            help="Folds into the layers after a BN and through activations: off (backward "
            "only), exact (wherever exact), int8-safe (not where int8 weights would suffer).",
            rich_help_panel=FOLD_PANEL,
        ),
    ] = "exact"
    fail_if_unfolded: Annotated[
        bool,
        typer.Option(
            "--fail-if-unfolded",
            help="Exit 1 if any BatchNormalization is left (a CI gate).",
            rich_help_panel=FOLD_PANEL,
        ),
    ] = False
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Worker processes for several models (each model in its own process).",
            rich_help_panel=FOLD_PANEL,
        ),
    ] = 1

    def job(self, *, inspect: bool, verify: CheckOptions | None = None, force: bool = False,
            in_place: bool = False) -> Job:  # fmt: skip
        """The job for one model (its paths set per model)."""
        from bnfold.cli.many import Job

        return Job(
            model=Path(), output=Path(), inspect=inspect, verify=verify, force=force,
            in_place=in_place, allow_initializer_inputs=not self.refuse_initializer_inputs,
            affine=not self.no_affine, forward=self.forward,
            fail_if_unfolded=self.fail_if_unfolded,
        )  # fmt: skip


OutputDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output-dir",
        metavar="DIR",
        help="Write OUT/STEM.folded.onnx for each model (a folder's sub-folders kept below).",
    ),
]


def default_output(model: Path) -> Path:
    """``model.onnx`` -> ``model.folded.onnx`` beside it."""
    return model.with_name(f"{model.stem}.folded{model.suffix or '.onnx'}")


@app.command("fold")
@option_groups
def fold_command(
    models: ModelsArg,
    out_flags: vo.OutputFlags,
    inputs: vo.InputFlags,
    compare: vo.CompareFlags,
    how: FoldFlags,
    output_path: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to write (default: MODEL.folded.onnx)."),
    ] = None,
    output_dir: OutputDirOpt = None,
    in_place: Annotated[
        bool,
        typer.Option("--in-place", help="Write the folded model over MODEL (-o must be absent)."),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", metavar="PATH", help="Same as --json PATH.", rich_help_panel=vo.OUTPUT_PANEL
        ),
    ] = None,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Do not check the folded model with onnxruntime.",
            rich_help_panel=vo.COMPARE_PANEL,
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Write even if verification fails (the report says so).",
            rich_help_panel=vo.COMPARE_PANEL,
        ),
    ] = False,
) -> None:
    """Fold every foldable BatchNormalization of each MODEL, verify, write MODEL.folded.onnx.

    The folded model is checked against MODEL with onnxruntime (optimisations off, symbolic
    batch dims at 1 unless --batch or --shape say otherwise) before it is written; if outputs
    differ beyond tolerance nothing is written and the exit code is 1. Several models (or a
    folder) are folded in worker processes (-j N), each written as OUT/STEM.folded.onnx with
    --output-dir; the exit code is non-zero if any failed, and the others are still written.
    """
    from bnfold.cli import many

    with cli_errors():
        if report is not None and out_flags.json_file is not None:
            raise UsageError("--report is the older name of --json PATH: give one of them")
        verify = None if no_verify else vo.check_options(inputs, compare, locate=True)
        job = how.job(inspect=False, verify=verify, force=force, in_place=in_place)
        plan = many.plan_outputs(models, output_path, output_dir, in_place)
        if not plan.single:
            raise typer.Exit(many.run(plan, job, how.jobs, out_flags, report))
        model, out = plan.items[0]
        _fold_one(model, out, job, out_flags, report)


def _fold_one(model: Path, out: Path, job: Job, flags: vo.OutputFlags, report: Path | None) -> None:
    from bnfold.api import fold_file

    extra = [output.json_output(flags), paths.Output("--report", report) if report else None]
    also = [o for o in extra if o is not None]
    try:
        with _save_progress(enabled=flags.human) as progress:
            result = fold_file(
                model, out, verify=job.verify, force=job.force,
                allow_initializer_inputs=job.allow_initializer_inputs, affine=job.affine,
                forward=job.forward, progress=progress, in_place=job.in_place, also_writes=also,
            )  # fmt: skip
    except VerificationError as exc:
        failed: FoldResult = exc.result  # type: ignore[assignment]
        data = failed.report.to_dict()
        output.write_report(flags, report, data)
        output.emit_json(flags, data)
        if failed.check is not None:
            output.show(flags, failed.check.render())
        raise
    except OSError as exc:
        if exc.filename is not None and not _staged_for(Path(exc.filename), out):
            raise
        raise BadInputError(out, f"cannot write ({exc.strerror or exc})") from None
    data = result.report.to_dict()
    output.write_report(flags, report, data)
    output.emit_json(flags, data)
    output.show(flags, *_fold_lines(result.report, verified=job.verify is not None))
    for path in result.report.files_written:
        output.wrote(flags, path)
    if result.report.forced:
        print(f"bnfold: error: {forced_message(model)}", file=sys.stderr)
        raise typer.Exit(1)
    _gate(result.report, job.fail_if_unfolded, model, written=True)


def forced_message(model: Path) -> str:
    """``--force`` wrote a model that failed verification: still exit 1, as CI expects."""
    return f"{model}: the folded model differs beyond tolerance; written anyway (--force)"


def _fold_lines(report: FoldReport, *, verified: bool) -> list[Any]:
    from bnfold.report import render_report

    lines: list[Any] = [render_report(report)]
    if report.verify is not None:
        lines.extend(verify_lines(report.verify, report.forced))
    elif report.folded and not verified:
        lines.append("verify: skipped (--no-verify)")
    return lines


def verify_lines(verify: dict[str, Any], forced: bool) -> list[Text]:
    """The verification status line and its notes (e.g. the batch size a symbolic dim got)."""
    worst = _worst_error(verify)
    sets = len(verify.get("input_sets", []))
    status = (
        Text("FAILED (written with --force)", style="red")
        if forced
        else Text("passed", style="green")
    )
    line = Text.assemble(
        "verify: ", status, f" (max error/range {worst}; {sets} input sets, ORT optimisations off)"
    )
    return [line, *(Text.assemble(("note: ", "dim"), n) for n in verify.get("notes", []))]


def _gate(report: FoldReport, fail_if_unfolded: bool, model: Path, *, written: bool) -> None:
    """``--fail-if-unfolded``: one error line and exit 1 when a BN is left."""
    if not fail_if_unfolded or report.bn_after == 0:
        return
    print(f"bnfold: error: {unfolded_message(report, model, written)}", file=sys.stderr)
    raise typer.Exit(1)


def unfolded_message(report: FoldReport, model: Path, written: bool) -> str:
    reasons = ", ".join(f"{r} {n}" for r, n in report.skipped_by_reason().items())
    tail = "; the folded model was written" if written else ""
    return (
        f"{model}: {report.bn_after} BatchNormalization node(s) left (--fail-if-unfolded)"
        + (f": {reasons}" if reasons else "")
        + tail
    )


def _staged_for(path: Path, out: Path) -> bool:
    """Whether ``path`` is ``out`` or a file staged for it (in a temporary folder beside it)."""
    return paths.same_file(path, out) or path.parent.name.startswith(atomic.STAGING_PREFIX)


@contextlib.contextmanager
def _save_progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar over the tensors written (shown only for external-data saves, and only
    once writing starts: an error before it stays one line)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeElapsedColumn

    bar: Progress | None = None
    task: TaskID | None = None

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


def _worst_error(verify: dict[str, Any]) -> str:
    values = [o.get("max_rel_range") for o in verify.get("outputs", [])]
    numbers = [v for v in values if isinstance(v, int | float)]
    return f"{max(numbers):.2e}" if numbers else "n/a"


@app.command("inspect")
@option_groups
def inspect_command(
    models: ModelsArg,
    out_flags: vo.OutputFlags,
    how: FoldFlags,
) -> None:
    """Show what `bnfold fold` would do to each MODEL (and its inputs and outputs); writes
    nothing but the --json file."""
    from bnfold.cli import many

    with cli_errors():
        job = how.job(inspect=True)
        plan = many.plan_outputs(models, None, None, False, inspect=True)
        if not plan.single:
            raise typer.Exit(many.run(plan, job, how.jobs, out_flags, None))
        from bnfold.api import fold
        from bnfold.report import render_report

        model = plan.items[0][0]
        paths.guard([output.json_output(out_flags)], models=[model])
        result = fold(
            model, allow_initializer_inputs=job.allow_initializer_inputs, affine=job.affine,
            forward=job.forward,
        )  # fmt: skip
        output.emit_json(out_flags, result.report.to_dict())
        output.show(out_flags, render_report(result.report, signature=True))
        _gate(result.report, job.fail_if_unfolded, model, written=False)


__all__ = [
    "default_output",
    "fold_command",
    "inspect_command",
    "unfolded_message",
    "verify_lines",
]

"""Several models at once: ``bnfold fold A.onnx B.onnx DIR/ -j N --output-dir OUT``.

Each model is folded (and verified) in a fresh worker process of its own, at most ``-j`` at a
time, so one model's memory never adds to another's and a crash takes only its model down.
Workers are forked from a server that has bnfold and onnxruntime imported already (Unix), or
spawned. The parent shows a progress bar, one result line per model as it finishes, then a
summary table; it exits with the highest exit code of any model (0 all done, 1 verification or
``--fail-if-unfolded``, 2 bad input), after every other model has been written. A signal to the
parent stops the workers, which remove what they staged.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from bnfold import atomic, paths
from bnfold.cli import output
from bnfold.cli.verify_options import OutputFlags
from bnfold.errors import BadInputError, UsageError

if TYPE_CHECKING:
    from bnfold.report import FoldReport
    from bnfold.verify.check import CheckOptions

# Outputs bnfold writes, never taken as inputs when a folder is searched.
OUTPUT_SUFFIXES = (".folded.onnx", ".int8.onnx")
PRELOAD = ["bnfold.cli.many", "bnfold.api", "bnfold.verify.check"]


@dataclass
class Job:
    """One model to fold (or inspect) and how; sent to a worker process."""

    model: Path
    output: Path
    inspect: bool
    verify: CheckOptions | None
    force: bool = False
    in_place: bool = False
    allow_initializer_inputs: bool = True
    affine: bool = True
    forward: str = "exact"
    fail_if_unfolded: bool = False

    def with_paths(self, model: Path, out: Path) -> Job:
        from dataclasses import replace

        return replace(self, model=model, output=out)


@dataclass
class JobResult:
    """What a worker sends back: exit code, the error line (without ``bnfold: error:``), the
    report as JSON data (None when the model could not be read), the seconds it took and the
    worker's process id."""

    model: str
    output: str | None
    exit_code: int
    error: str | None
    report: dict[str, Any] | None
    seconds: float = 0.0
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class OutputPlan:
    """The models found and where each is written; ``single``: one model named as a file."""

    items: list[tuple[Path, Path]] = field(default_factory=list)
    single: bool = True


def find_models(args: list[Path]) -> list[tuple[Path, Path]]:
    """(model, path relative to its folder argument, or its name) for every argument; a folder
    stands for the .onnx files below it (not hidden ones, not bnfold's own outputs)."""
    found: list[tuple[Path, Path]] = []
    for arg in args:
        if arg.is_dir():
            inside = [
                p
                for p in sorted(arg.rglob("*.onnx"))
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(arg).parts)
                and not p.name.endswith(OUTPUT_SUFFIXES)
            ]
            if not inside:
                raise BadInputError(arg, "a directory with no .onnx models in it")
            found.extend((p, p.relative_to(arg)) for p in inside)
        elif arg.is_file():
            found.append((arg, Path(arg.name)))
        else:
            raise BadInputError(arg, "no such file or folder")
    unique: dict[str, tuple[Path, Path]] = {}
    for model, rel in found:
        unique.setdefault(os.path.realpath(model), (model, rel))
    return list(unique.values())


def plan_outputs(
    args: list[Path],
    output_path: Path | None,
    output_dir: Path | None,
    in_place: bool,
    *,
    inspect: bool = False,
) -> OutputPlan:
    """Where each model is written (``-o``, ``--in-place``, ``--output-dir`` or beside it)."""
    from bnfold.cli.fold import default_output

    found = find_models(args)
    single = len(args) == 1 and not args[0].is_dir()
    if in_place and output_dir is not None:
        raise UsageError("--in-place writes over each model: drop --output-dir")
    if output_path is not None and not single:
        raise UsageError("-o names one output; with several models use --output-dir DIR")
    items: list[tuple[Path, Path]] = []
    for model, rel in found:
        if inspect:
            out = model
        elif in_place:
            if output_path is not None and not paths.same_file(output_path, model):
                raise UsageError("--in-place writes over MODEL: drop -o, or give -o MODEL")
            out = model
        elif output_path is not None:
            out = output_path
        elif output_dir is not None:
            out = output_dir / rel.parent / default_output(rel).name
        else:
            out = default_output(model)
        items.append((model, out))
    if not inspect and not in_place:
        seen: dict[str, Path] = {}
        for model, out in items:
            key = os.path.abspath(out)
            if key in seen:
                raise UsageError(
                    f"{seen[key]} and {model} would both be written to {out}; "
                    "give them different names or folders"
                )
            seen[key] = model
    return OutputPlan(items, single)


def work(job: Job) -> JobResult:
    """Fold (or inspect) one model; every failure becomes a result, never an exception."""
    from bnfold.api import fold, fold_file
    from bnfold.cli._errors import error_text
    from bnfold.cli.fold import forced_message, unfolded_message
    from bnfold.errors import BnfoldError, VerificationError

    start = time.perf_counter()
    out = None  # set once the model is written
    report: FoldReport | None = None
    try:
        if job.inspect:
            report = fold(
                job.model, allow_initializer_inputs=job.allow_initializer_inputs,
                affine=job.affine, forward=job.forward,
            ).report  # fmt: skip
        else:
            report = fold_file(
                job.model, job.output, verify=job.verify, force=job.force,
                allow_initializer_inputs=job.allow_initializer_inputs, affine=job.affine,
                forward=job.forward, in_place=job.in_place,
            ).report  # fmt: skip
            out = report.output
        code, error = 0, None
        if report.forced:
            code, error = 1, forced_message(job.model)
        elif job.fail_if_unfolded and report.bn_after:
            code, error = 1, unfolded_message(report, job.model, written=not job.inspect)
    except VerificationError as exc:
        failed = getattr(exc.result, "report", None)
        code, error, report = 1, str(exc), failed
    except BnfoldError as exc:
        code, error = exc.exit_code, error_text(exc)
    except OSError as exc:
        code, error = 2, error_text(exc, job.model)
    except Exception as exc:  # a bug must not take the other models down
        code, error = 2, f"{job.model}: internal error: {type(exc).__name__}: {exc}"
    data = report.to_dict() if report is not None else None
    seconds = time.perf_counter() - start
    return JobResult(str(job.model), out, code, error, data, seconds, os.getpid())


def _worker(job: Job, conn: Connection) -> None:
    from bnfold.atomic import exit_on_signals

    exit_on_signals()
    conn.send(work(job))
    conn.close()


def _context() -> Any:
    """forkserver (with bnfold preloaded) where the platform has it, else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _died(job: Job, process: BaseProcess, seconds: float) -> JobResult:
    code = process.exitcode
    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return JobResult(
        str(job.model), None, 2, f"{job.model}: the worker process died ({how})", None,
        seconds,
    )  # fmt: skip


def run_jobs(jobs: list[Job], workers: int, on_done: Any = None) -> list[JobResult]:
    """Run every job in its own process, at most ``workers`` at once; ``on_done(result)`` as
    each finishes. Results come back in the order of ``jobs``."""
    ctx = _context()
    pending = list(enumerate(jobs))
    running: dict[Connection, tuple[int, BaseProcess, float]] = {}
    results: dict[int, JobResult] = {}

    def stop(signum: int, _frame: object) -> None:
        for _, process, _ in running.values():
            if process.is_alive():
                process.terminate()  # the worker removes what it staged, then exits
        for _, process, _ in running.values():
            process.join(5)
        signal.signal(signum, previous.get(signum, signal.SIG_DFL))
        os.kill(os.getpid(), signum)

    handled = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s]
    previous = {s: signal.getsignal(s) for s in handled}
    for s in handled:
        signal.signal(s, stop)
    try:
        while pending or running:
            while pending and len(running) < workers:
                index, job = pending.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_worker, args=(job, send), daemon=True)
                process.start()
                send.close()
                running[receive] = (index, process, time.perf_counter())
            for conn in wait(list(running)):
                assert isinstance(conn, Connection)
                index, process, started = running.pop(conn)
                try:
                    result: JobResult = conn.recv()
                except EOFError:
                    process.join()
                    result = _died(jobs[index], process, time.perf_counter() - started)
                conn.close()
                process.join()
                results[index] = result
                if on_done is not None:
                    on_done(result)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_forkserver()
    return [results[i] for i in range(len(jobs))]


def _stop_forkserver() -> None:
    """Stop and reap the fork server now (it would exit with this process anyway), so it does
    not linger and its CPU time, its workers' included, is accounted to this process."""
    import multiprocessing.forkserver

    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    stop = getattr(server, "_stop", None)  # CPython's own (used by its tests), 3.8 and later
    if callable(stop):
        stop()


def run(plan: OutputPlan, job: Job, workers: int, flags: OutputFlags, report: Path | None) -> int:
    """Fold (or inspect) every model of ``plan``; print as they finish; return the exit code."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    jobs = [job.with_paths(model, out) for model, out in plan.items]
    writes = [] if job.inspect or job.in_place else [paths.Output("--output-dir", o, "model")
                                                     for _, o in plan.items]  # fmt: skip
    extra = [output.json_output(flags), paths.Output("--report", report) if report else None]
    from bnfold.api import verification_inputs

    paths.guard(
        [*writes, *extra],
        models=[m for m, _ in plan.items],
        files=verification_inputs(job.verify),
    )
    stderr = Console(stderr=True)
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=flags.quiet or not stderr.is_terminal,
    )
    verb = "inspecting" if job.inspect else "folding"
    with progress:
        task = progress.add_task(f"{verb} {len(jobs)} models, {workers} at a time", total=len(jobs))

        def done(result: JobResult) -> None:
            progress.advance(task)
            if result.error and not flags.quiet:
                print(f"bnfold: error: {result.error}", file=sys.stderr)
            output.show(flags, result_line(result))
            for path in (result.report or {}).get("files_written", []):
                output.wrote(flags, path)

        # created by the workers, removed here when nothing was written in them (a worker
        # cannot tell whether another still writes into a folder it found missing)
        created = (
            []
            if job.inspect or job.in_place
            else atomic.missing_folders(o.parent for _, o in plan.items)
        )
        try:
            results = run_jobs(jobs, workers, done)
        finally:
            atomic.remove_empty(created)
    data = {
        "models": [r.to_dict() for r in results],
        "failed": [r.model for r in results if r.exit_code],
    }
    output.write_report(flags, report, data)
    output.emit_json(flags, data)
    output.show(flags, summary_table(results, inspect=job.inspect))
    failed = [r for r in results if r.exit_code]
    if failed:
        names = ", ".join(f"{r.model} (exit {r.exit_code})" for r in failed)
        print(
            f"bnfold: error: {len(failed)} of {len(results)} models failed: {names}",
            file=sys.stderr,
        )
    return max((r.exit_code for r in results), default=0)


def result_line(result: JobResult) -> Text:
    """One line per model: ok/FAIL, what was folded, the verification, where it went."""
    tag = Text("ok  ", style="green") if not result.exit_code else Text("FAIL", style="red")
    line = Text.assemble(tag, f" {result.model}")
    r = result.report
    if r is not None:
        line.append(f": {r['bn_folded']}/{r['bn_before']} BN folded")
        verify = r.get("verify")
        if verify is not None:
            line.append(", verified" if verify.get("passed") else ", verification FAILED")
        if result.output and result.output != result.model:
            line.append(f" -> {result.output}")
    elif result.error:
        line.append(": not folded")
    line.append(f" ({result.seconds:.1f} s)", style="dim")
    return line


def summary_table(results: list[JobResult], *, inspect: bool) -> Any:
    """Every model's BN and node counts, verification, time and result."""
    from bnfold.tables import Column, FitTable

    table = FitTable(
        [
            Column("model", wrap=True),
            Column("BN folded", "right"),
            Column("nodes", "right", drop=2),
            Column("verify", drop=3),
            Column("s", "right", drop=1),
            Column("result", wrap=True),
        ],
        title=f"bnfold {'inspect' if inspect else 'fold'}: {len(results)} models",
    )
    for res in results:
        r = res.report
        if r is None:
            counts = nodes = verify = "-"
        else:
            counts = f"{r['bn_folded']} of {r['bn_before']}"
            nodes = f"{r['nodes_before']} -> {r['nodes_after']}"
            v = r.get("verify")
            verify = "-" if v is None else ("passed" if v.get("passed") else "FAILED")
        result = (
            Text("ok", style="green")
            if not res.exit_code
            else Text(f"exit {res.exit_code}", style="red")
        )
        table.add_row(Text(res.model), counts, nodes, verify, f"{res.seconds:.1f}", result)
    return table

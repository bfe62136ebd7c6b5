"""``bnfold quantize MODEL -o OUT``: fold, quantize with onnxruntime, prove on real data."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from bnfold import paths
from bnfold.cli import output as cli_output
from bnfold.cli import verify_options as vo
from bnfold.cli._app import app
from bnfold.cli._errors import cli_errors
from bnfold.cli.option_groups import option_groups
from bnfold.errors import BadInputError, UsageError, VerificationError

DataOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--calibration",
        metavar="FILE.npz|DIR",
        help="Calibration data: .npz files (one array per input) or folders of them. Repeatable. "
        "Default for the zoo digits models: 200 images of the bundled training split.",
    ),
]
EvalOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--eval",
        metavar="FILE.npz|DIR",
        help="Held-out data to prove the int8 model on (an optional 'labels' array gives "
        "accuracy). Repeatable. Default for the zoo models: the digits test split.",
    ),
]


def default_output(model: Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` beside it."""
    return model.with_name(f"{model.stem}.int8{model.suffix or '.onnx'}")


def _reduce_range(value: str) -> bool | None:
    choices = {"auto": None, "on": True, "off": False}
    if value not in choices:
        raise UsageError(f"--reduce-range must be auto, on or off, not {value!r}")
    return choices[value]


@app.command("quantize")
@option_groups
def quantize_command(
    model: Annotated[Path, typer.Argument(help="The fp32 ONNX model.", show_default=False)],
    out_flags: vo.OutputFlags,
    timing: vo.TimingFlags,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to write (default: MODEL.int8.onnx)."),
    ] = None,
    calibration: DataOpt = None,
    calibration_samples: Annotated[
        int | None,
        typer.Option(
            min=1, help="Calibrate on at most N samples (default: all given; digits: 200)."
        ),
    ] = None,
    eval_data: EvalOpt = None,
    eval_samples: Annotated[
        int | None, typer.Option(min=1, help="Prove on at most N samples (default: all).")
    ] = None,
    method: Annotated[
        str, typer.Option(metavar="minmax|entropy|percentile", help="Calibration method.")
    ] = "minmax",
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", metavar="NODE", help="Leave this node in float. Repeatable."),
    ] = None,
    activation_type: Annotated[
        str | None,
        typer.Option(
            "--activation-type",
            metavar="int8|uint8",
            help="Activation type (default: onnxruntime's recommendation for this CPU).",
        ),
    ] = None,
    weight_type: Annotated[
        str | None,
        typer.Option(
            "--weight-type",
            metavar="int8|uint8",
            help="Weight type (default: onnxruntime's recommendation for this CPU).",
        ),
    ] = None,
    reduce_range: Annotated[
        str, typer.Option(metavar="auto|on|off", help="7-bit weights (auto: as recommended).")
    ] = "auto",
    forward: Annotated[
        str | None,
        typer.Option(
            metavar="off|exact|int8-safe",
            help="Forward folds (BN into the next layer; default: int8-safe where available).",
        ),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Least top-1 agreement with fp32 to pass.")
    ] = 0.99,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(min=0.0, help="Most accuracy lost to int8 (needs labels).")
    ] = None,
    max_mean_error: Annotated[
        float | None, typer.Option(min=0.0, help="Most mean |int8 - fp32| of any output.")
    ] = None,
    no_prove: Annotated[
        bool, typer.Option("--no-prove", help="Do not run the int8 model against fp32.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Write even if the proof fails (the report says so).")
    ] = False,
    bench: Annotated[
        bool,
        typer.Option(
            "--bench",
            help="Also time int8 against fp32 and onnxruntime's int8 of the unfolded model "
            "(without and with quant_pre_process), in one paired run.",
        ),
    ] = False,
    bench_batch: Annotated[
        list[int] | None,
        typer.Option(
            "--bench-batch", min=1, help="Batch size to time; repeatable (default: 1 and 64)."
        ),
    ] = None,
    provider: vo.ProviderOpt = "cpu",
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", metavar="PATH", help="Same as --json PATH.", rich_help_panel=vo.OUTPUT_PANEL
        ),
    ] = None,
) -> None:
    """Fold MODEL, quantize it to int8 with onnxruntime (QDQ, per-channel weights), prove it.

    The int8 model is run against MODEL on held-out data; if top-1 agreement (or a threshold
    you set) fails, the exit code is 1 and nothing is written (--force writes it anyway).
    Exit 2 on bad input or data.
    """
    from bnfold.quantize import ProofThresholds, QuantizeOptions, quantize_file

    with cli_errors():
        if report is not None and out_flags.json_file is not None:
            raise UsageError("--report is the older name of --json PATH: give one of them")
        out = output or default_output(model)
        options = QuantizeOptions(
            calibration=list(calibration or []), calibration_samples=calibration_samples,
            eval=list(eval_data or []), eval_samples=eval_samples, method=method,
            exclude=list(exclude or []), activation_type=activation_type, weight_type=weight_type,
            reduce_range=_reduce_range(reduce_range), forward=forward, prove=not no_prove,
            thresholds=ProofThresholds(min_agreement, max_accuracy_drop, max_mean_error),
            force=force, provider=provider,
        )  # fmt: skip
        extra = [cli_output.json_output(out_flags)]
        if report is not None:
            extra.append(paths.Output("--report", report))
        try:
            result = quantize_file(model, out, options, also_writes=[o for o in extra if o])
        except VerificationError as exc:
            failed = exc.result
            if hasattr(failed, "to_dict") and hasattr(failed, "render"):
                cli_output.write_report(out_flags, report, failed.to_dict())
                cli_output.emit_json(out_flags, failed.to_dict())
                cli_output.show(out_flags, failed.render())
            raise
        except OSError as exc:
            raise BadInputError(out, f"cannot write ({exc.strerror or exc})") from None
        cli_output.show(out_flags, result.render())
        if bench:
            result.bench = _bench(result, bench_batch or [1, 64], timing, out_flags)
    cli_output.write_report(out_flags, report, result.to_dict())
    cli_output.emit_json(out_flags, result.to_dict())
    cli_output.wrote(out_flags, out)
    if result.forced:
        assert result.proof is not None
        print(
            f"bnfold: error: {model}: the int8 model fails its proof "
            f"({'; '.join(result.proof.failures)}); written anyway (--force)",
            file=sys.stderr,
        )
        raise typer.Exit(1)


def _bench(result: Any, batches: list[int], timing: vo.TimingFlags, flags: vo.OutputFlags) -> dict:
    from bnfold.bench import BenchOptions
    from bnfold.quantize.compare import BNFOLD, compare_int8, ort_variants

    assert result.output is not None
    evaluation = result.evaluation or result.calibration
    with tempfile.TemporaryDirectory(prefix="bnfold-int8-bench-") as tmp:
        variants = ort_variants(
            result.model, tmp, result.calibration, result.types,
            method=result.options.method, exclude=result.options.exclude,
        )  # fmt: skip
        variants[BNFOLD] = Path(result.output)
        comparison = compare_int8(
            result.model, variants, evaluation, batches=batches,
            bench=BenchOptions(
                threads=timing.threads, warmup=timing.warmup, rounds=timing.rounds,
                iters=timing.iters, memory=False,
            ),
            provider=result.options.provider,
        )  # fmt: skip
        cli_output.show(flags, comparison.render())
        return comparison.to_dict()


__all__ = ["default_output", "quantize_command"]

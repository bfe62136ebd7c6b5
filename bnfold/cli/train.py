"""``bnfold train``, ``bnfold export`` and ``bnfold demo``: the training side (needs torch).

torch is imported inside the command functions, so ``bnfold --help`` works without the extra.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bnfold import paths
from bnfold.cli import output as cli_output
from bnfold.cli import verify_options as vo
from bnfold.cli._app import app
from bnfold.cli._errors import cli_errors
from bnfold.cli.option_groups import option_groups
from bnfold.errors import UsageError

MODEL_NAMES = (
    "digits_cnn",
    "mlp",
    "resnet",
    "mobilenet",
    "autoencoder",
)  # = bnfold.train.MODEL_NAMES


def _train_api():
    """Import the training library, or explain which extra is missing."""
    try:
        import bnfold.train as api
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("torch", "matplotlib"):
            raise UsageError(
                f"this command needs the train extra ({exc.name} is missing): "
                "pip install 'bnfold[train]'"
            ) from None
        raise
    return api


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


@app.command()
def train(
    model: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help=f"Zoo model: {', '.join(MODEL_NAMES)} (default digits_cnn; mlp with --compare).",
        ),
    ] = None,
    bn: Annotated[bool, typer.Option("--bn/--no-bn", help="Use BatchNorm.")] = True,
    bn_position: Annotated[
        str, typer.Option(metavar="before|after", help="BatchNorm before or after the activation.")
    ] = "before",
    activation: Annotated[
        str, typer.Option(metavar="relu|sigmoid", help="Hidden activation.")
    ] = "relu",
    lr: Annotated[
        float | None, typer.Option(min=0.0, help="SGD learning rate (default 0.1).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs (default 10; 40 with --compare).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Minibatch size.")] = 32,
    seed: Annotated[
        int, typer.Option(help="Seed for the split, the initial weights and the batch order.")
    ] = 0,
    bn_impl: Annotated[
        str,
        typer.Option(metavar="reference|torch", help="bnfold's reference BatchNorm or torch's."),
    ] = "reference",
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Where to write the files.")
    ] = Path("out/train"),
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Measure the paper's claims: with/without BN x learning rates x sigmoid/ReLU.",
        ),
    ] = False,
) -> None:
    """Train a zoo model on the bundled digits; write a checkpoint, metrics JSON and a curve PNG."""
    with cli_errors():
        api = _train_api()
        if compare:
            if (
                lr is not None
                or not bn
                or activation != "relu"
                or bn_position != "before"
                or bn_impl != "reference"
            ):
                raise UsageError(
                    "--compare runs its own grid; drop --lr, --no-bn, --activation, "
                    "--bn-position, --bn-impl"
                )
            paths.guard(_outputs(out, [out / name for name in api.COMPARE_NAMES]))
            _run_compare(api, model or "mlp", epochs or 40, batch_size, seed, out)
            return
        config = api.TrainConfig(
            model=model or "digits_cnn",
            bn=bn,
            bn_position=bn_position,
            activation=activation,
            bn_impl=bn_impl,
            lr=0.1 if lr is None else lr,
            epochs=epochs or 10,
            batch_size=batch_size,
            seed=seed,
        )
        paths.guard(_outputs(out, api.train_paths(config, out)))
        with _progress() as progress:
            task = progress.add_task(f"training {config.model}", total=config.epochs, status="")

            def on_epoch(s) -> None:
                status = f"loss {s.train_loss:.3f}" + (
                    f"  test acc {s.test_accuracy:.3f}"
                    if s.test_accuracy is not None
                    else f"  test mse {s.test_loss:.4f}"
                )
                progress.update(task, advance=1, status=status)

            files = api.train_to_dir(config, out, on_epoch=on_epoch)
    r = files.result
    summary = (
        f"final test accuracy {r.final_accuracy:.4f}, 90% reached at epoch {r.epochs_to() or 'never'}"
        if r.final_accuracy is not None
        else f"final test MSE {r.final_test_loss:.5f}"
    )
    print(f"{config.model}: {summary} ({r.seconds:.1f} s)")
    for f in (files.checkpoint, files.metrics, files.curve):
        print(f"wrote {f}", file=sys.stderr)


def _outputs(out: Path, files: Sequence[Path]) -> list[paths.Output | None]:
    """The output folder and each file to be written in it, to guard before any work."""
    kinds = {".png": "plot", ".onnx": "model"}
    return [
        paths.Output("--out", out, "folder"),
        *(paths.Output("--out", f, kinds.get(f.suffix, "file")) for f in files),
    ]


def _run_compare(api, model: str, epochs: int, batch_size: int, seed: int, out: Path) -> None:
    options = api.CompareOptions(model=model, epochs=epochs, batch_size=batch_size, seed=seed)
    with _progress() as progress:
        task = progress.add_task(f"comparing on {model}", total=len(options.configs()), status="")

        def on_run(run) -> None:
            status = f"{run.activation} lr {run.lr:g} {'BN' if run.bn else 'no BN'}: acc {run.final_accuracy:.3f}"
            progress.update(task, advance=1, status=status)

        files = api.compare_to_dir(options, out, on_run=on_run)
    print(files.result.table())
    for f in (files.table, files.metrics, files.plot):
        print(f"wrote {f}", file=sys.stderr)


@app.command()
@option_groups
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint written by bnfold train.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="PATH.onnx", help="The ONNX file to write.")
    ],
    out_flags: vo.OutputFlags,
    opset: Annotated[int, typer.Option(min=9, help="ONNX opset.")] = 17,
    dynamic_batch: Annotated[
        bool, typer.Option("--dynamic-batch", help="Make the batch axis symbolic.")
    ] = False,
) -> None:
    """Export a checkpoint in eval mode with BatchNorm kept as BatchNormalization nodes, verified
    against torch with onnxruntime (exit 1 if BN nodes were lost or outputs differ)."""
    with cli_errors():
        api = _train_api()
        paths.guard(
            [paths.Output("-o", output, "model"), cli_output.json_output(out_flags)],
            files=[checkpoint],
            in_place_hint=False,
        )
        result = api.export_checkpoint(checkpoint, output, opset=opset, dynamic_batch=dynamic_batch)
        cli_output.show(
            out_flags,
            f"{result.path}: opset {result.opset}, {result.bn_nodes} BatchNormalization "
            f"nodes ({result.bn_modules} BN modules), max |onnxruntime - torch| "
            f"{result.max_abs_error:.3g} on {result.verify_batch} digits",
        )
        cli_output.wrote(out_flags, result.path)
        cli_output.emit_json(out_flags, result.to_dict())


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="Where to write the files.")
    ] = Path("out/demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="A few seconds of everything (for CI).")
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help=f"Zoo model: {', '.join(MODEL_NAMES)} (default digits_cnn; mlp with "
            "--bn-position after, whose BNs all fold through the activation).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    bn_position: Annotated[
        str,
        typer.Option(
            metavar="before|after",
            help="BatchNorm before the activation (folded backward) or after it (folded "
            "through the activation or forward).",
        ),
    ] = "before",
) -> None:
    """Train a zoo model on the digits, export it, fold it, check it, bench it, quantize it to
    int8 (prove and bench that too), and summarise."""
    with cli_errors():
        _train_api()
        from bnfold.train.demo import STEPS, DemoOptions, run_demo

        if model is None:
            model = "mlp" if bn_position == "after" else "digits_cnn"
        options = DemoOptions(
            out_dir=out, quick=quick, model=model, seed=seed, bn_position=bn_position
        )
        paths.guard(_outputs(out, options.paths()))
        with _progress() as progress:
            task = progress.add_task("demo", total=len(STEPS), status="")

            def on_step(name: str) -> None:
                progress.update(task, advance=1, status=name)

            result = run_demo(options, on_step=on_step)
    print(result.summary())
    if not result.passed:
        if not result.check.get("passed"):
            problem = "the folded model does not match the original"
        elif result.fold.get("bn_after"):
            problem = f"{result.fold['bn_after']} BatchNormalization node(s) stay (listed above)"
        else:
            problem = "the int8 model fails its proof against fp32"
        print(f"bnfold: error: demo: {problem}", file=sys.stderr)
        raise typer.Exit(1)

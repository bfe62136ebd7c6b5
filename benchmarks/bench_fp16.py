"""fp16 models as users make them: the folded fp16 model's error against the fp32 original.

Each model is built in code: the zoo models trained with bnfold.train (seeded, ``--epochs``,
BN before the activation, and mlp and digits_cnn also with BN after it) and exported with BN
kept, and the ResNet-50-like of ``make_models.py`` (random weights) at a smaller input. Each is
converted to fp16 the way users do it, ``onnxconverter_common.float16.convert_float_to_float16(
model, keep_io_types=True)`` (fp16 weights and arithmetic inside, fp32 inputs and outputs), and
compared with the fp32 original (onnxruntime CPU, ORT_DISABLE_ALL so that onnxruntime does not
fold BN itself, 1 thread):

- ``fp16``: the converted model, unfolded;
- ``fp16 folded``: ``bnfold.fold`` of the converted model (default options);
- ``fold first``: ``bnfold.fold`` of the fp32 model, converted afterwards.

Inputs: the digits test split (450 images) for the zoo models, seeded N(0, 1) inputs for the
ResNet-50-like. Per variant: max |error| / output range (max |fp32 output|), mean |error|, top-1
agreement with fp32 and accuracy (classifiers), and the ratio of each error to the unfolded fp16
model's, with a paired bootstrap 95% interval over the inputs for the mean (an interval holding
1 means the fold is within noise of the unfolded model). ``bnfold check`` (default options) of
the fp16 model against its folded copy (``--batch 1``) is recorded too. Deterministic: seeded training, inputs
and bootstrap. Writes benchmarks/results/fp16.json and prints a table (``--markdown``: also the
README table).

    python benchmarks/bench_fp16.py [--epochs 10] [--seed 0] [--resnet50-size 112]
        [--resnet50-samples 32] [--markdown]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxconverter_common
import onnxruntime as ort
from onnxconverter_common.float16 import convert_float_to_float16
from rich.console import Console
from rich.table import Table

import bnfold
from bnfold import atomic
from bnfold.verify import CheckOptions, Tolerance, check_models, compare_arrays
from bnfold.verify.session import make_session, model_ref

RESULTS = Path(__file__).parent / "results"
ZOO = (
    ("digits_cnn", "before"),
    ("mlp", "before"),
    ("resnet", "before"),
    ("mobilenet", "before"),
    ("autoencoder", "before"),
    ("mlp", "after"),
    ("digits_cnn", "after"),
)
FP32, FP16, FOLDED, FIRST = "fp32", "fp16", "fp16 folded", "fold first"
BOOTSTRAP = 2000


@dataclass
class Subject:
    """One fp32 model and the inputs it is measured on."""

    name: str
    bn_position: str
    fp32: onnx.ModelProto
    x: np.ndarray
    labels: np.ndarray | None  # digits labels; None for random inputs
    classifier: bool
    inputs: str  # what ``x`` is, in words
    torch_accuracy: float | None = None


@dataclass
class Variant:
    """One variant's outputs compared with the fp32 original's."""

    name: str
    max_rel_range: float | None = None  # max |error| / max |fp32 output|
    max_abs: float | None = None
    mean_abs: float | None = None
    agreement: float | None = None  # top-1 agreement with fp32
    accuracy: float | None = None  # on the digits test split
    bn_folded: int | None = None
    bn_total: int | None = None
    ratio_max: float | None = None  # max_rel_range / the unfolded fp16 model's
    ratio_mean: float | None = None  # mean_abs / the unfolded fp16 model's
    ratio_mean_ci: list[float] | None = None  # paired bootstrap 95% interval of ratio_mean
    skipped: list[str] = field(default_factory=list)  # the fold's reasons for refusals


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 the way users make it: onnxconverter-common, fp32 inputs and outputs kept."""
    with warnings.catch_warnings():  # it warns for every value it clamps to 1e-7 or 1e4
        warnings.simplefilter("ignore")
        return convert_float_to_float16(model, keep_io_types=True)


def fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bnfold.FoldReport]:
    result = bnfold.fold(model)
    return ir.to_proto(result.model), result.report


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output on CPU, ORT_DISABLE_ALL, 1 thread, as float64."""
    session = make_session(model_ref(model, "model"), opt_level="disable", threads=1)
    (out,) = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: x})
    return np.asarray(out, dtype=np.float64)


def zoo_subject(model: str, position: str, epochs: int, seed: int, tmp: Path) -> Subject:
    from bnfold.train import TrainConfig, export_model, split_digits, train

    config = TrainConfig(model=model, bn_position=position, epochs=epochs, seed=seed)
    trained = train(config)
    path = tmp / f"{model}-{position}.onnx"
    export_model(trained.model, path, dynamic_batch=True)
    data = split_digits(config.test_fraction, config.seed)
    classifier = config.task == "classify"
    return Subject(
        model, position, onnx.load(path), data.x_test, data.y_test if classifier else None,
        classifier, f"digits test split ({len(data.x_test)})", trained.final_accuracy,
    )  # fmt: skip


def resnet50_subject(size: int, samples: int, seed: int) -> Subject:
    sys.path.insert(0, str(Path(__file__).parent))
    from make_models import build_resnet50

    model, _ = build_resnet50()
    model.graph.inputs[0].shape = ir.Shape(["N", 3, size, size])
    model.graph.outputs[0].shape = ir.Shape(["N", 1000])
    x = np.random.default_rng(seed).standard_normal((samples, 3, size, size), dtype=np.float32)
    return Subject(
        f"resnet50_like {size}x{size}", "before", ir.to_proto(model), x, None, True,
        f"N(0, 1), {samples} x 3x{size}x{size}",
    )  # fmt: skip


def per_sample_error(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.abs(out - ref).reshape(len(ref), -1).mean(axis=1)


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, seed: int) -> list[float]:
    """Paired bootstrap 95% interval of mean(num) / mean(den) over the inputs."""
    idx = np.random.default_rng(seed).integers(0, len(num), (BOOTSTRAP, len(num)))
    ratios = num[idx].mean(axis=1) / den[idx].mean(axis=1)
    return [float(v) for v in np.percentile(ratios, [2.5, 97.5])]


def compare(name: str, ref: np.ndarray, out: np.ndarray, subject: Subject) -> Variant:
    stats = compare_arrays(ref, out, Tolerance(0.0, 0.0, "range"))
    v = Variant(name, stats.max_rel_range, stats.max_abs, stats.mean_abs)
    if subject.classifier:
        top1 = out.reshape(len(out), -1).argmax(axis=1)
        v.agreement = float(np.mean(top1 == ref.reshape(len(ref), -1).argmax(axis=1)))
        if subject.labels is not None:
            v.accuracy = float(np.mean(top1 == subject.labels))
    return v


def check(fp16: onnx.ModelProto, folded: onnx.ModelProto) -> dict[str, Any]:
    """``bnfold check FP16 FOLDED --batch 1``: default options but the symbolic batch (the
    digits models are exported with a dynamic batch); the verdict and what it saw."""
    result = check_models(fp16, folded, CheckOptions(batch=1))
    output = result.to_dict()["outputs"][0]  # tolerance, rule and statistics of the one output
    return {"passed": result.passed, "notes": result.notes} | output


def measure(subject: Subject, seed: int) -> dict[str, Any]:
    fp16 = to_fp16(subject.fp32)
    folded, folded_report = fold(fp16)
    folded_fp32, first_report = fold(subject.fp32)
    first = to_fp16(folded_fp32)
    ref = run(subject.fp32, subject.x)
    outs = {
        FP16: run(fp16, subject.x),
        FOLDED: run(folded, subject.x),
        FIRST: run(first, subject.x),
    }
    base = compare(FP32, ref, ref, subject)
    variants = [base] + [compare(n, ref, o, subject) for n, o in outs.items()]
    errors = {n: per_sample_error(ref, o) for n, o in outs.items()}
    unfolded = variants[1]
    for v, report in ((variants[2], folded_report), (variants[3], first_report)):
        v.bn_folded, v.bn_total = report.bn_folded, report.bn_before
        v.skipped = [s.reason for s in report.skipped]
        v.ratio_max = ratio(v.max_rel_range, unfolded.max_rel_range)
        v.ratio_mean = ratio(v.mean_abs, unfolded.mean_abs)
        v.ratio_mean_ci = bootstrap_ratio(errors[v.name], errors[FP16], seed)
    for v in (base, unfolded):  # fp32 against itself: only its accuracy means anything
        v.bn_total = folded_report.bn_before
    base.max_rel_range = base.max_abs = base.mean_abs = base.agreement = None
    return {
        "model": subject.name,
        "bn_position": subject.bn_position,
        "inputs": subject.inputs,
        "torch_accuracy": subject.torch_accuracy,
        "output_range": float(np.max(np.abs(ref))),
        "variants": [asdict(v) for v in variants],
        "check": check(fp16, folded),
        "fold_reports": {FOLDED: folded_report.to_dict(), FIRST: first_report.to_dict()},
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def rows(measured: list[dict[str, Any]]) -> list[list[str]]:
    """The table's cells, shared by the rich table and the README's markdown."""
    out = []
    for m in measured:
        for i, v in enumerate(m["variants"]):
            folded = "-" if v["bn_folded"] is None else f"{v['bn_folded']}/{v['bn_total']}"
            ci = v["ratio_mean_ci"]
            mean_ratio = "-" if ci is None else f"{v['ratio_mean']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
            verdict = "-"
            if v["name"] == FOLDED:
                c = m["check"]
                verdict = f"{'pass' if c['passed'] else 'FAIL'} {_f(c['max_rel_range'], '.1e')}"
            out.append(
                [
                    m["model"] if i == 0 else "", m["bn_position"] if i == 0 else "", v["name"],
                    folded, _f(v["max_rel_range"], ".2e"), _f(v["mean_abs"], ".2e"),
                    _f(v["ratio_max"], ".2f"), mean_ratio, _f(v["agreement"], ".4f"),
                    _f(v["accuracy"], ".4f"), verdict,
                ]
            )  # fmt: skip
    return out


COLUMNS = ["model", "BN", "variant", "BN folded", "max err / range", "mean err", "× fp16 max",
           "× fp16 mean [95% CI]", "top-1 agree", "accuracy", "check"]  # fmt: skip


def table(measured: list[dict[str, Any]]) -> Table:
    t = Table(title="fp16 (onnxconverter-common, keep_io_types) against the fp32 original")
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("model", "BN", "variant") else "right")
    for r in rows(measured):
        t.add_row(*r)
    return t


def markdown(measured: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows(measured)])


def subjects(args: argparse.Namespace, tmp: Path) -> Iterator[Subject]:
    """The models in order, each built (trained) when its turn comes."""
    for model, position in ZOO:
        yield zoo_subject(model, position, args.epochs, args.seed, tmp)
    yield resnet50_subject(args.resnet50_size, args.resnet50_samples, args.seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resnet50-size", type=int, default=112)
    parser.add_argument("--resnet50-samples", type=int, default=32)
    parser.add_argument("--markdown", action="store_true", help="also print the README table")
    parser.add_argument("--json", type=Path, default=RESULTS / "fp16.json")
    args = parser.parse_args()
    start = time.perf_counter()
    console = Console(width=max(Console().width, 160))
    measured = []
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-fp16-") as tmp:
        for subject in subjects(args, Path(tmp)):
            measured.append(measure(subject, args.seed))
            console.print(
                f"{subject.name} ({subject.bn_position}): {time.perf_counter() - start:.0f} s"
            )
    console.print(table(measured))
    if args.markdown:
        print(markdown(measured))
    atomic.write_json(
        args.json,
        {
            "results": measured,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "environment": {
                "onnxruntime": ort.__version__,
                "onnxconverter_common": onnxconverter_common.__version__,
                "onnx": onnx.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
            },
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(f"wrote {args.json} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""int8 of the zoo models: onnxruntime alone against bnfold's fold first, BN before and after ReLU.

Trains each zoo model with bnfold.train (seeded, a few epochs) with BatchNorm before and after
its activation, exports it with BN kept, and builds, with the same calibration (200 digits
training images, MinMax) and onnxruntime's recommended types for this CPU:

- ``int8 ort``: ``quantize_static`` on the model as exported (no preprocess);
- ``int8 ort+preprocess``: ``quant_pre_process`` first (folds Conv+BN, not Gemm+BN);
- ``int8 bnfold`` (one per ``--forward`` mode): ``bnfold quantize`` (folds, then quantize_static).

Each is proved against fp32 on the digits test split (accuracy, top-1 agreement, mean logit
error), its float ops after onnxruntime's optimisation are counted, and fp32 and every int8
variant are timed together in one paired, shuffled run per batch size (ORT_ENABLE_ALL, 1 thread).
Writes benchmarks/results/bench_quantize.json and prints a table.

    python benchmarks/bench_quantize.py [--epochs 10] [--forward off exact int8-safe]
        [--rounds 20] [--iters 10] [--batches 1 64]

``--forward``: the bnfold variants to build; before bnfold has forward folds (``bnfold.fold``
takes no ``forward``) the script says so and builds the backward-only variant instead.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from bnfold import atomic
from bnfold.bench import BenchOptions
from bnfold.quantize import QuantizeOptions, digits_dataset, quantize_file
from bnfold.quantize.compare import FP32, compare_int8, ort_variants

RESULTS = Path(__file__).parent / "results"
MODELS = ("digits_cnn", "mlp")
POSITIONS = ("before", "after")


def _label(mode: str | None) -> str:
    return "int8 bnfold" if mode is None else f"int8 bnfold forward={mode}"


def measure(model: str, position: str, args, tmp: Path, modes: list[str | None]) -> dict:
    from bnfold.train import TrainConfig, export_model, train

    config = TrainConfig(model=model, bn_position=position, epochs=args.epochs, seed=args.seed)
    trained = train(config)
    fp32 = tmp / f"{model}-{position}.onnx"
    export_model(trained.model, fp32, dynamic_batch=True)
    results = {}
    for mode in modes:
        out = tmp / f"{model}-{position}-{mode or 'backward'}.int8.onnx"
        results[_label(mode)] = quantize_file(fp32, out, QuantizeOptions(forward=mode, force=True))
    first = next(iter(results.values()))
    variants = ort_variants(fp32, tmp / f"{model}-{position}-ort", first.calibration, first.types)
    variants |= {label: Path(r.output or "") for label, r in results.items()}
    bench = BenchOptions(rounds=args.rounds, iters=args.iters, threads=1, memory=False,
                         seed=args.seed)  # fmt: skip
    comparison = compare_int8(
        fp32, variants, digits_dataset("test"), candidate=_label(modes[0]),
        batches=args.batches, bench=bench,
    )  # fmt: skip
    return {
        "model": model,
        "bn_position": position,
        "epochs": args.epochs,
        "torch_accuracy": trained.final_accuracy,
        "types": first.types.to_dict(),
        "folds": {label: r.fold.report.to_dict() for label, r in results.items()},
        "dead_channels": first.dead_channels,
        "rows": comparison.rows(),
        "comparison": comparison.to_dict(),
    }


def _f(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def table(measured: list[dict], batches: list[int]) -> Table:
    t = Table(title="int8 of the zoo models (onnxruntime CPU, ORT_ENABLE_ALL, 1 thread)")
    cols = ["model", "BN", "variant", "accuracy", "agreement", "mean logit err", "float ops",
            "size KiB", *(f"ms b{b}" for b in batches)]  # fmt: skip
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "BN", "variant") else "right")
    for m in measured:
        for i, r in enumerate(m["rows"]):
            t.add_row(
                m["model"] if i == 0 else "", m["bn_position"] if i == 0 else "", r["variant"],
                _f(r["accuracy"]), _f(r["agreement"]), _f(r["mean_abs_error"], ".3f"),
                "-" if r["float_ops"] is None else str(r["float_ops"]),
                f"{r['size_bytes'] / 1024:.1f}",
                *(_f(r[f"latency_ms_b{b}"], ".3f") for b in batches),
            )  # fmt: skip
    return t


def speedups(measured: list[dict], batches: list[int]) -> Table:
    """The candidate (first bnfold variant) against every other variant, per batch size."""
    t = Table(title="bnfold int8 speed-up (other latency / bnfold latency, 95% CI)")
    for c in ("model", "BN", "against", *(f"b{b}" for b in batches)):
        t.add_column(c)
    for m in measured:
        for r in m["rows"]:
            if f"candidate_speedup_b{batches[0]}" not in r or r["variant"] == FP32:
                continue
            cells = []
            for b in batches:
                sp = r[f"candidate_speedup_b{b}"]
                cells.append(f"{sp['ratio']:.2f} [{sp['ci_low']:.2f}, {sp['ci_high']:.2f}]")
            t.add_row(m["model"], m["bn_position"], r["variant"], *cells)
    return t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--forward", nargs="+", default=["off", "exact", "int8-safe"],
                        choices=["off", "exact", "int8-safe"])  # fmt: skip
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--json", type=Path, default=RESULTS / "bench_quantize.json")
    args = parser.parse_args()
    modes: list[str | None] = list(args.forward)
    start = time.perf_counter()
    measured = []
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-quantize-") as tmp:
        for model in args.models:
            for position in POSITIONS:
                measured.append(measure(model, position, args, Path(tmp), modes))
    console = Console(width=200)
    console.print(table(measured, args.batches))
    console.print(speedups(measured, args.batches))
    atomic.write_json(
        args.json,
        {
            "results": measured,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "forward_modes": modes,
            "environment": {
                "onnxruntime": ort.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
            },  # fmt: skip
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(f"wrote {args.json} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

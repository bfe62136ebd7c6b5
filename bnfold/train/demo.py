"""The whole path on the embedded default: train -> export (BN kept) -> fold -> check -> bench,
then the int8 leg: quantize (fold first) -> prove against fp32 -> bench against onnxruntime's own
int8 of the unfolded model (with and without its preprocess).

``run_demo`` writes every artefact into one folder and returns a ``DemoResult`` whose
``summary()`` is what ``bnfold demo`` prints.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bnfold.train.data import split_digits
from bnfold.train.export import export_model
from bnfold.train.outputs import train_paths, train_to_dir, write_json
from bnfold.train.training import TARGET_ACCURACY, TrainConfig

__all__ = ["STEPS", "DemoOptions", "DemoResult", "run_demo"]

STEPS = ("train", "export", "fold", "check", "bench", "quantize", "bench int8", "report")
INT8_BATCHES = (1, 64)
FULL_LEVELS = ("disable", "basic", "extended", "all")
QUICK_LEVELS = ("disable", "all")
SUMMARY_WIDTH = 80


@dataclass(frozen=True)
class DemoOptions:
    """``quick`` trains one short epoch and benches briefly (for CI); otherwise the full run."""

    out_dir: str | os.PathLike = "out/demo"
    quick: bool = False
    model: str = "digits_cnn"
    seed: int = 0
    epochs: int | None = None  # default: 20, or 1 with quick
    bn_position: str = "before"  # or "after" the activation (folded through it / forward)

    def __post_init__(self) -> None:
        self.train_config()  # validates model, seed and epochs

    def train_config(self) -> TrainConfig:
        epochs = self.epochs if self.epochs is not None else (1 if self.quick else 20)
        return TrainConfig(
            model=self.model,
            epochs=epochs,
            seed=self.seed,
            lr=0.1,
            bn_position=self.bn_position,
        )

    def paths(self) -> list[Path]:
        """Every file the demo writes in ``out_dir``."""
        out = Path(self.out_dir)
        return [
            *train_paths(self.train_config(), out),
            out / f"{self.model}.onnx",
            out / f"{self.model}.folded.onnx",
            out / "bench.png",
            out / f"{self.model}.int8.onnx",
            out / "demo_report.json",
        ]

    def bench_options(self):
        from bnfold.bench import BenchOptions

        if self.quick:
            return BenchOptions(
                levels=QUICK_LEVELS,
                warmup=2,
                rounds=5,
                iters=5,
                creation_repeats=1,
                memory=False,
                resamples=200,
                seed=self.seed,
                batch=1,
            )
        return BenchOptions(
            levels=FULL_LEVELS, rounds=20, iters=20, memory=False, seed=self.seed, batch=1
        )

    def int8_bench_options(self):
        """One paired run per batch size of fp32 and the three int8 variants (level all)."""
        from bnfold.bench import BenchOptions

        if self.quick:
            return BenchOptions(warmup=2, rounds=5, iters=5, creation_repeats=1, memory=False,
                                resamples=200, seed=self.seed)  # fmt: skip
        return BenchOptions(rounds=15, iters=10, creation_repeats=1, memory=False, seed=self.seed)


@dataclass
class DemoResult:
    """What the demo measured and wrote."""

    options: DemoOptions
    files: dict[str, str] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    onnx_accuracy: dict[str, float | None] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    fold: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] = field(default_factory=dict)
    int8: list[dict[str, Any]] = field(default_factory=list)  # one row per variant
    bench_int8: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            bool(self.check.get("passed"))
            and self.fold.get("bn_after") == 0
            and bool(self.quantize.get("passed"))
        )

    def to_dict(self) -> dict[str, Any]:
        opts = {
            k: os.fspath(v) if isinstance(v, Path) else v for k, v in vars(self.options).items()
        }
        return {
            "passed": self.passed,
            "options": opts,
            "summary": self.summary_dict(),
            "files": self.files,
            "train": self.train,
            "onnx_accuracy": self.onnx_accuracy,
            "export": self.export,
            "fold": self.fold,
            "check": self.check,
            "bench": self.bench,
            "quantize": self.quantize,
            "int8": self.int8,
            "bench_int8": self.bench_int8,
            "timings_s": self.timings,
        }

    def summary_dict(self) -> dict[str, Any]:
        max_abs = max((o["max_abs"] for o in self.check.get("outputs", [])), default=None)
        speedups = {lv["level"]: lv["speedup"]["ratio"] for lv in self.bench.get("levels", [])}
        return {
            "model": self.options.model,
            "bn_position": self.options.bn_position,
            "folds_by_direction": self.folds_by_direction(),
            "test_accuracy": self.train.get("final_accuracy"),
            "test_mse": None
            if self.train.get("final_accuracy") is not None
            else self.train.get("final_test_loss"),
            "onnx_accuracy_before": self.onnx_accuracy.get("before"),
            "onnx_accuracy_after": self.onnx_accuracy.get("after"),
            "bn_nodes_before": self.fold.get("bn_before"),
            "bn_nodes_after": self.fold.get("bn_after"),
            "check_passed": self.check.get("passed"),
            "max_abs_error": max_abs,
            "speedup_original_over_folded": speedups,
            "int8_passed": self.quantize.get("passed"),
            "int8_float_ops_left": {r["variant"]: r["float_ops"] for r in self.int8},
            "int8_accuracy": {r["variant"]: r["accuracy"] for r in self.int8},
            "int8_agreement": {r["variant"]: r["agreement"] for r in self.int8},
            "int8_size_bytes": {r["variant"]: r["size_bytes"] for r in self.int8},
            "int8_latency_ms": {
                r["variant"]: {b: r.get(f"latency_ms_b{b}") for b in INT8_BATCHES}
                for r in self.int8
            },
            "int8_bnfold_speedup": {
                r["variant"]: {
                    b: r[f"candidate_speedup_b{b}"]["ratio"]
                    for b in INT8_BATCHES
                    if f"candidate_speedup_b{b}" in r
                }
                for r in self.int8
                if r["variant"] != "int8 bnfold"
            },  # fmt: skip
            "total_s": self.timings.get("total"),
        }

    def folds_by_direction(self) -> dict[str, int]:
        """BatchNormalization nodes folded per direction (backward, through the activation...)."""
        counts: dict[str, int] = {}
        for f in self.fold.get("folded", []):
            if f["op"] == "BatchNormalization":
                counts[f["direction"]] = counts.get(f["direction"], 0) + 1
        return counts

    def summary(self, width: int = SUMMARY_WIDTH) -> str:
        """The demo's report, every line at most ``width`` columns (wrapped at words)."""
        s = self.summary_dict()
        cfg = self.train.get("config", {})
        epochs = cfg.get("epochs")
        lines = [
            f"bnfold demo: {s['model']}, BN {s['bn_position']} the activation, {epochs} "
            f"epoch{'' if epochs == 1 else 's'} on the digits"
        ]
        if s["test_accuracy"] is not None:
            e90 = self.train.get("epochs_to_90")
            lines.append(
                f"  accuracy      torch {s['test_accuracy']:.4f}, ONNX before fold "
                f"{_fmt(s['onnx_accuracy_before'])}, after fold {_fmt(s['onnx_accuracy_after'])} "
                f"(test set; {TARGET_ACCURACY:.0%} reached at epoch {e90 or 'never'})"
            )
        else:
            lines.append(f"  test MSE      {s['test_mse']:.5f}")
        how = ", ".join(f"{n} {d}" for d, n in s["folds_by_direction"].items()) or "none"
        lines.append(
            f"  BatchNorm     {s['bn_nodes_before']} -> {s['bn_nodes_after']} nodes; folded: {how}; "
            f"graph {self.fold.get('nodes_before')} -> {self.fold.get('nodes_after')} nodes"
        )
        lines += [
            f"                {r['node']} stays: {r.get('short') or r['reason']}"
            for r in self.fold.get("skipped", [])
        ]
        verdict = "passed" if s["check_passed"] else "FAILED"
        lines.append(
            f"  check         {verdict}, max |folded - original| = {_fmt(s['max_abs_error'], '.3g')}"
        )
        lines.append(
            "  speed-up      original / folded latency (above 1: the folded model is faster)"
        )
        for lv in self.bench.get("levels", []):
            sp = lv["speedup"]
            lines.append(
                f"    {lv['level']:<9} {sp['ratio']:.3f} [{sp['ci_low']:.3f}, {sp['ci_high']:.3f}] "
                f"{sp['verdict']}"
            )
        lines += self._int8_lines()
        lines = [_wrap(line, width) for line in lines]
        lines.append("  files")  # paths are never wrapped
        lines += [f"    {name:<12} {path}" for name, path in self.files.items()]
        lines.append(f"  total {s['total_s']:.1f} s")
        return "\n".join(lines)

    def _int8_lines(self) -> list[str]:
        if not self.quantize:
            return []
        q = self.quantize
        types = q["types"]
        proof = q.get("proof") or {}
        verdict = "passed" if q.get("passed") else "FAILED"
        outputs = proof.get("outputs") or [{}]
        o = outputs[0]
        classes = ""
        if o.get("agreement") is not None:
            classes = f"top-1 agreement {_fmt(o['agreement'])}, "
            if o.get("accuracy_int8") is not None:
                classes += f"accuracy {_fmt(o['accuracy_fp32'])} -> {_fmt(o['accuracy_int8'])}, "
        lines = [
            f"  int8          {types['activation']} activations, {types['weight']} weights per "
            f"channel{', reduced range' if types['reduce_range'] else ''} (onnxruntime's rule for "
            f"this CPU), calibrated on {q['calibration']['samples']} training images",
            f"                proof {verdict}: {classes}mean |error| "
            f"{_fmt(o.get('mean_abs'), '.3g')}; {q['sizes']['fp32'] / 1024:.0f} -> "
            f"{q['sizes']['int8'] / 1024:.0f} KiB",
            f"                float ops left: {q['float_ops']['summary']}",
        ]
        if self.int8:
            batches = " / ".join(f"b{b}" for b in INT8_BATCHES)
            lines.append(
                f"  int8 latency  ms at {batches} (ORT_ENABLE_ALL, 1 thread), float ops left"
            )
            for r in self.int8:
                ms = " / ".join(_fmt(r.get(f"latency_ms_b{b}"), ".3f") for b in INT8_BATCHES)
                ops = "-" if r["float_ops"] is None else str(r["float_ops"])
                lines.append(f"    {r['variant']:<20} {ms:<16} {ops}")
            speedups = self.summary_dict()["int8_bnfold_speedup"]
            parts = [
                f"{name} " + " / ".join(f"{x:.2f}x" for x in by_batch.values())
                for name, by_batch in speedups.items()
            ]
            lines.append(f"    bnfold int8 speed-up against: {'; '.join(parts)}")
        return lines


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _wrap(line: str, width: int) -> str:
    """``line`` wrapped at words to ``width``; a labelled line ("  check         ...")
    continues under its text, any other 2 columns in."""
    if len(line) <= width:
        return line
    lead = len(line) - len(line.lstrip(" "))
    indent = lead + (14 if lead == 2 else 2)
    return textwrap.fill(line, width, subsequent_indent=" " * indent, break_long_words=False,
                         break_on_hyphens=False)  # fmt: skip


def _onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x})
    return float((logits.argmax(axis=1) == y).mean())


def run_demo(
    options: DemoOptions | None = None, on_step: Callable[[str], None] | None = None
) -> DemoResult:
    """Run every step of ``STEPS``, writing into ``options.out_dir``; ``on_step`` after each."""
    import bnfold
    from bnfold.bench import bench_models, write_plot
    from bnfold.model_io import save_model
    from bnfold.verify import CheckOptions, check_models

    options = options or DemoOptions()
    out = Path(options.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(options)
    start = last = time.perf_counter()

    def done(step: str) -> None:
        nonlocal last
        now = time.perf_counter()
        result.timings[step] = round(now - last, 3)
        last = now
        if on_step is not None:
            on_step(step)

    config = options.train_config()
    files = train_to_dir(config, out)
    result.train = files.result.to_dict()
    result.files |= {
        "checkpoint": str(files.checkpoint),
        "metrics": str(files.metrics),
        "curve": str(files.curve),
    }
    done("train")

    _, _, _, before, after, bench_plot, int8, report = options.paths()
    result.export = export_model(files.result.model, before, dynamic_batch=True).to_dict()
    result.files["onnx_before"] = str(before)
    done("export")

    folded = bnfold.fold(before)
    save_model(folded.model, after)
    result.fold = folded.report.to_dict()
    result.files["onnx_after"] = str(after)
    done("fold")

    check = check_models(before, after, CheckOptions(seed=options.seed, batch=8))
    result.check = check.to_dict()
    if config.task == "classify":
        data = split_digits(config.test_fraction, config.seed)
        result.onnx_accuracy = {
            side: _onnx_accuracy(p, data.x_test, data.y_test)
            for side, p in (("before", before), ("after", after))
        }
    done("check")

    bench = bench_models(before, after, options.bench_options())
    result.bench = bench.to_dict()
    write_plot(bench, bench_plot)
    result.files["bench_plot"] = str(bench_plot)
    done("bench")

    from bnfold.quantize import QuantizeOptions, quantize_file
    from bnfold.quantize.compare import BNFOLD, compare_int8, ort_variants

    quantized = quantize_file(before, int8, QuantizeOptions(force=True))
    result.quantize = quantized.to_dict()
    result.files["onnx_int8"] = str(int8)
    done("quantize")

    with tempfile.TemporaryDirectory(prefix="bnfold-demo-int8-") as tmp:
        variants = ort_variants(before, tmp, quantized.calibration, quantized.types)
        variants[BNFOLD] = int8
        evaluation = quantized.evaluation or quantized.calibration
        comparison = compare_int8(
            before, variants, evaluation, batches=INT8_BATCHES, bench=options.int8_bench_options()
        )
    result.int8 = comparison.rows()
    result.bench_int8 = comparison.to_dict()
    done("bench int8")

    result.files["report"] = str(report)
    result.timings["total"] = round(time.perf_counter() - start, 3)
    write_json(result.to_dict(), report)
    done("report")
    return result

"""bnfold's int8 model against fp32 and against onnxruntime's own int8 of the unfolded model.

The baselines are what a user gets from onnxruntime alone, with the same calibration data, types
and method: ``int8 ort`` (``quantize_static`` on the model as it is) and ``int8 ort+preprocess``
(``quant_pre_process`` first: shape inference and onnxruntime's basic optimisations, which fold
Conv+BN but not Gemm+BN). Every variant is proved against the fp32 original on the evaluation
data, its float ops are listed, and all of them are timed in one paired, shuffled run per batch
size (:func:`bnfold.bench.bench_many`, ORT_ENABLE_ALL).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnfold.bench import BenchOptions, MultiBenchResult, bench_many
from bnfold.quantize.data import Dataset
from bnfold.quantize.float_ops import FloatOps, float_ops
from bnfold.quantize.prove import Proof, ProofThresholds, prove_int8
from bnfold.quantize.types import QuantTypes

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "BNFOLD",
    "FP32",
    "ORT",
    "ORT_PREPROCESS",
    "Int8Comparison",
    "VariantFigures",
    "compare_int8",
    "ort_variants",
]

FP32, ORT, ORT_PREPROCESS, BNFOLD = "fp32", "int8 ort", "int8 ort+preprocess", "int8 bnfold"


@dataclass
class VariantFigures:
    """One model of the comparison: its file, proof against fp32 and float ops."""

    label: str
    path: str
    size_bytes: int
    proof: Proof | None = None
    float_ops: FloatOps | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "proof": self.proof.to_dict() if self.proof else None,
            "float_ops": self.float_ops.to_dict() if self.float_ops else None,
        }


@dataclass
class Int8Comparison:
    """Every variant's figures, and one paired latency run per batch size."""

    variants: list[VariantFigures]
    candidate: str
    bench: dict[int, MultiBenchResult] = field(default_factory=dict)

    def pairs(self) -> list[tuple[str, str]]:
        """(reference, candidate): the candidate against every other variant."""
        return [(v.label, self.candidate) for v in self.variants if v.label != self.candidate]

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "variants": [v.to_dict() for v in self.variants],
            "bench": {str(b): r.to_dict(self.pairs()) for b, r in self.bench.items()},
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per variant (the table's figures)."""
        fp32_accuracy = next(
            (o.accuracy_fp32 for v in self.variants if v.proof for o in v.proof.outputs
             if o.accuracy_fp32 is not None), None,
        )  # fmt: skip
        out = []
        for v in self.variants:
            row: dict[str, Any] = {"variant": v.label, "size_bytes": v.size_bytes}
            classifier = [o for o in v.proof.outputs if o.agreement is not None] if v.proof else []
            if v.proof is None:
                row |= {"accuracy": fp32_accuracy, "agreement": 1.0, "mean_abs_error": 0.0}
            else:
                first = classifier[0] if classifier else v.proof.outputs[0]
                row |= {
                    "accuracy": first.accuracy_int8,
                    "agreement": first.agreement,
                    "mean_abs_error": max(o.mean_abs for o in v.proof.outputs),
                }
            row["float_ops"] = None if v.float_ops is None else len(v.float_ops.between)
            row["float_ops_by_op"] = (
                None if v.float_ops is None else v.float_ops.to_dict()["between_by_op"]
            )
            for batch, result in self.bench.items():
                lv = result.levels[0]
                row[f"latency_ms_b{batch}"] = lv.sides[v.label].median_ms
                if v.label != self.candidate:
                    sp = result.speedup(lv.level, v.label, self.candidate)
                    row[f"candidate_speedup_b{batch}"] = sp.to_dict()
            out.append(row)
        return out

    def render(self) -> Table:
        """A rich table: one row per variant."""
        from rich.table import Table

        batches = list(self.bench)
        table = Table(title=f"int8 variants (speed-up: {self.candidate} against each)")
        cols = ["variant", "accuracy", "agreement", "mean |err|", "float ops", "size KiB"]
        for b in batches:
            cols += [f"ms b{b}", f"speed-up b{b} [95% CI]"]
        for c in cols:
            table.add_column(c, justify="left" if c == "variant" else "right")
        for row in self.rows():
            cells = [
                row["variant"],
                _fmt(row["accuracy"]),
                _fmt(row["agreement"]),
                _fmt(row["mean_abs_error"], ".3g"),
                "-" if row["float_ops"] is None else str(row["float_ops"]),
                f"{row['size_bytes'] / 1024:.1f}",
            ]
            for b in batches:
                cells.append(f"{row[f'latency_ms_b{b}']:.3f}")
                sp = row.get(f"candidate_speedup_b{b}")
                cells.append(
                    "-"
                    if sp is None
                    else f"{sp['ratio']:.2f} [{sp['ci_low']:.2f}, {sp['ci_high']:.2f}]"
                )
            table.add_row(*cells)
        return table


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def ort_variants(
    model: str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    calibration: Dataset,
    types: QuantTypes,
    *,
    method: str = "minmax",
    exclude: Sequence[str] = (),
) -> dict[str, Path]:
    """onnxruntime's int8 of the unfolded ``model``, without and with ``quant_pre_process``."""
    import onnx

    from bnfold.quantize.quantize import ort_quantize, quiet_onnxruntime

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    plain, pre, pre_int8 = (
        work / "ort.int8.onnx",
        work / "preprocessed.onnx",
        work / "pre.int8.onnx",
    )
    names = {n.name for n in onnx.load(os.fspath(model), load_external_data=False).graph.node}
    ort_quantize(model, plain, calibration, types, method=method,
                 exclude=[n for n in exclude if n in names])  # fmt: skip
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with quiet_onnxruntime():
        quant_pre_process(os.fspath(model), os.fspath(pre))
    names = {n.name for n in onnx.load(os.fspath(pre), load_external_data=False).graph.node}
    ort_quantize(pre, pre_int8, calibration, types, method=method,
                 exclude=[n for n in exclude if n in names])  # fmt: skip
    return {ORT: plain, ORT_PREPROCESS: pre_int8}


def compare_int8(
    model: str | os.PathLike[str],
    variants: Mapping[str, str | os.PathLike[str]],
    evaluation: Dataset,
    *,
    candidate: str = BNFOLD,
    batches: Sequence[int] = (1,),
    bench: BenchOptions | None = None,
    provider: str = "cpu",
) -> Int8Comparison:
    """Prove each int8 variant (label -> path) against fp32 ``model`` on ``evaluation``, list
    its float ops, and time fp32 and every variant together once per batch size."""
    if candidate not in variants:
        raise ValueError(f"candidate {candidate!r} is not among the variants")
    figures = [VariantFigures(FP32, os.fspath(model), Path(model).stat().st_size)]
    thresholds = ProofThresholds(min_agreement=0.0)  # figures only; the verdict is the caller's
    for label, path in variants.items():
        figures.append(
            VariantFigures(
                label,
                os.fspath(path),
                Path(path).stat().st_size,
                prove_int8(model, path, evaluation, thresholds, provider=provider),
                float_ops(path, provider=provider),
            )
        )
    result = Int8Comparison(figures, candidate)
    base = bench or BenchOptions()
    models = {FP32: model, **variants}
    for batch in batches:
        options = dataclasses.replace(base, levels=("all",), batch=batch)
        result.bench[batch] = bench_many(models, options)
    return result

"""Shared helpers for the fold tests: build small models, run them with onnxruntime, compare.

Models run under onnxruntime with every graph optimisation disabled (``ORT_DISABLE_ALL``) on the
CPU: with optimisations on, onnxruntime folds BatchNormalization itself and hides a bad fold.
Outputs are compared with a tolerance scaled to the output's range::

    |ref - cand| <= atol + rtol * max|ref|
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

import bnfold

# (rtol, atol) per dtype for a range-scaled comparison of a folded model against the original.
# float32 atol: an output near 0 can be a sum of 64 terms of size ~1 that cancel, whose
# rounding (and a fold's) is a few 1e-7 each (hypothesis met 1.34e-6 on a forward Gemm fold with
# outputs ~0.009, before and after the fixes of e55d9c7); a wrong fold is off by far more.
TOLERANCES = {
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float32): (3e-5, 1e-5),
    np.dtype(np.float16): (2e-2, 1e-3),
}


def tolerance(dtype) -> tuple[float, float]:
    return TOLERANCES[np.dtype(dtype)]


def bn_stats(rng: np.random.Generator, channels: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """Random, clearly non-identity BN parameters: gamma of both signs, var far from 1."""
    sign = rng.choice([-1.0, 1.0], channels)
    return {
        "gamma": (sign * rng.uniform(0.5, 2.0, channels)).astype(dtype),
        "beta": rng.normal(0.0, 1.0, channels).astype(dtype),
        "mean": rng.normal(0.0, 1.0, channels).astype(dtype),
        "var": rng.uniform(0.1, 4.0, channels).astype(dtype),
    }


def make_model(
    text: str, initializers: dict[str, np.ndarray] | None = None, *, check: bool = True
) -> onnx.ModelProto:
    """Parse ONNX text and append ``initializers`` (IR >= 4: not graph inputs).

    A graph output written without a shape (``float y``) gets its inferred shape (the parser
    would make it a scalar).
    """
    model = onnx.parser.parse_model(text)
    for info in model.graph.output:
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape") and len(tensor_type.shape.dim) == 0:
            tensor_type.ClearField("shape")
    for name, array in (initializers or {}).items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    missing = [o for o in model.graph.output if not o.type.tensor_type.HasField("shape")]
    if missing:  # the checker wants output shapes: take the inferred ones
        inferred = onnx.shape_inference.infer_shapes(model)
        by_name = {o.name: o for o in inferred.graph.output}
        for out in missing:
            out.type.CopyFrom(by_name[out.name].type)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def session(model: onnx.ModelProto | bytes | ir.Model) -> ort.InferenceSession:
    if isinstance(model, ir.Model):
        model = ir.to_proto(model)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run(
    model: onnx.ModelProto | bytes | ir.Model, feeds: dict[str, np.ndarray], runner: str = "ort"
) -> list[np.ndarray]:
    """Run ``model`` on the CPU with onnxruntime's optimisations off.

    ``runner="reference"`` uses onnx's reference evaluator instead, for what onnxruntime's CPU
    provider cannot run (float64 Conv and ConvTranspose).
    """
    if runner == "reference":
        from onnx.reference import ReferenceEvaluator

        if isinstance(model, ir.Model):
            model = ir.to_proto(model)
        if isinstance(model, bytes):
            model = onnx.load_from_string(model)
        return [np.asarray(o) for o in ReferenceEvaluator(model).run(None, feeds)]
    return session(model).run(None, feeds)


def assert_close(ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float, what: str = ""):
    """``|ref - cand| <= atol + rtol * max|ref|`` elementwise, computed in float64."""
    ref = np.asarray(ref, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.float64)
    assert ref.shape == cand.shape, f"{what}: shape {cand.shape} != {ref.shape}"
    assert np.all(np.isfinite(cand) == np.isfinite(ref)), f"{what}: non-finite values differ"
    scale = float(np.max(np.abs(ref), initial=0.0))
    err = float(np.max(np.abs(ref - cand), initial=0.0))
    bound = atol + rtol * scale
    assert err <= bound, f"{what}: max |ref-cand| = {err:.3g} > {bound:.3g} (max|ref| {scale:.3g})"


def serialize(model: ir.Model | onnx.ModelProto) -> bytes:
    """Deterministic bytes, as ``FoldResult.save`` writes them."""
    if isinstance(model, ir.Model):
        model = ir.to_proto(model)
    return model.SerializeToString(deterministic=True)


def fold_bytes(data: bytes, **options) -> tuple[bytes, bnfold.FoldResult]:
    result = bnfold.fold(data, **options)
    return serialize(result.model), result


def checker_ok(model: onnx.ModelProto | bytes) -> bool:
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception:
        return False
    return True


def node_count(model: onnx.ModelProto) -> int:
    """Nodes in the main graph, every subgraph and every function."""

    def count(graph: onnx.GraphProto) -> int:
        total = 0
        for node in graph.node:
            total += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    total += count(attr.g)
                for sub in attr.graphs:
                    total += count(sub)
        return total

    return count(model.graph) + sum(len(f.node) for f in model.functions)


def op_types(model: onnx.ModelProto | bytes) -> list[str]:
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    return [n.op_type for n in model.graph.node]


def check_fold(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    *,
    dtype=None,
    tol: tuple[float, float] | None = None,
    expect_folded: int | None = None,
    runner: str = "ort",
    **options,
) -> tuple[onnx.ModelProto, bnfold.FoldResult]:
    """Fold ``model`` and check everything that must hold of any fold.

    Outputs equal under onnxruntime (range-scaled tolerance), never more nodes, the checker
    still passes if it passed, idempotent (a second fold gives identical bytes) and
    deterministic (a second fold of the input gives identical bytes).
    """
    data = model.SerializeToString()
    folded, result = fold_bytes(data, **options)
    folded_proto = onnx.load_from_string(folded)
    if expect_folded is not None:
        assert len(result.report.folded) == expect_folded, result.report.summary()
    assert node_count(folded_proto) <= node_count(model)
    if checker_ok(model):
        onnx.checker.check_model(folded_proto, full_check=True)
    again, again_result = fold_bytes(folded, **options)
    assert again == folded, "folding the folded model changed it"
    assert not again_result.report.folded
    twice, _ = fold_bytes(data, **options)
    assert twice == folded, "two folds of the same input differ"
    ref = run(model, feeds, runner)
    cand = run(folded_proto, feeds, runner)
    if tol is None:
        tol = tolerance(dtype if dtype is not None else ref[0].dtype)
    for i, (r, c) in enumerate(zip(ref, cand, strict=True)):
        assert c.dtype == r.dtype
        assert_close(r, c, *tol, what=f"output {i}")
    return folded_proto, result


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor).copy()
    raise KeyError(name)


def set_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(np.asarray(array), name))
            return
    raise KeyError(name)


def reasons(result: bnfold.FoldResult) -> str:
    return " | ".join(s.reason for s in result.report.skipped)

"""Measure the fp16 fold refusal rule: per-channel rounding error, and what it does to outputs.

A folded fp16 weight is refused when one output channel's relative rounding error exceeds
``bnfold.arithmetic.MAX_CHANNEL_ERROR_ROUNDOFFS`` unit roundoffs (fp16: u = 2^-11). This script
shows where the limit sits, on a Conv(32 -> 64, 3x3) with weights N(0, 0.1):

1. the relative rounding error of fp16 weights rounded from fp32 (what the unfolded model
   already carries) and of folded weights under ordinary BN statistics, per channel, in u;
2. one channel scaled by s (1e-1 ... 1e-6, no shift): its share of subnormal weights, its
   rounding error in u, and the output error of that channel for the folded fp16 Conv against
   float64 (ORT's CPU runs fp16 Conv, with optimisations off), as a multiple of the unfolded
   fp16 Conv+BN's own error on the same channel; and whether bnfold refuses the fold.

Writes benchmarks/results/fp16_fold_rule.json and prints a table.

    python benchmarks/fp16_fold_rule.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

import bnfold
from bnfold import atomic
from bnfold.arithmetic import MAX_CHANNEL_ERROR_ROUNDOFFS, unit_roundoff

RESULTS = Path(__file__).parent / "results"
U = unit_roundoff(np.dtype(np.float16))
SCALES = (1e-1, 1e-2, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6)


def channel_error(exact: np.ndarray, rounded: np.ndarray) -> np.ndarray:
    """Relative rounding error per output channel (axis 0), in unit roundoffs."""
    diff = (rounded.astype(np.float64) - exact).reshape(exact.shape[0], -1)
    norm = np.linalg.norm(exact.reshape(exact.shape[0], -1), axis=1)
    return np.linalg.norm(diff, axis=1) / np.where(norm > 0, norm, 1) / U


def conv_bn(w: np.ndarray, stats: dict[str, np.ndarray], eps: float) -> bytes:
    inits = [numpy_helper.from_array(w, "W")]
    inits += [numpy_helper.from_array(stats[k], k) for k in ("gamma", "beta", "mean", "var")]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W"], ["z"]),
            helper.make_node(
                "BatchNormalization", ["z", "gamma", "beta", "mean", "var"], ["y"], epsilon=eps
            ),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, 32, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def run(model: bytes, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0].astype(np.float64)


def reference(x: np.ndarray, w: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """float64 Conv (valid, stride 1) then s * z + t."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(x64, (3, 3), axis=(2, 3))
    z = np.einsum("nchwij,ocij->nohw", windows, w64)
    return z * s.reshape(1, -1, 1, 1) + t.reshape(1, -1, 1, 1)


def main() -> int:
    rng = np.random.default_rng(0)
    w32 = rng.normal(0, 0.1, (64, 32, 3, 3))
    w = w32.astype(np.float16)
    own = channel_error(w32, w)
    eps = 1e-5
    stats = {
        "gamma": rng.uniform(0.5, 2.0, 64).astype(np.float16),
        "beta": rng.normal(0, 1, 64).astype(np.float16),
        "mean": rng.normal(0, 1, 64).astype(np.float16),
        "var": rng.uniform(0.1, 4.0, 64).astype(np.float16),
    }
    g, b, m, v = (stats[k].astype(np.float64) for k in ("gamma", "beta", "mean", "var"))
    s_typical = g / np.sqrt(v + eps)
    typical = channel_error(
        w.astype(np.float64) * s_typical.reshape(-1, 1, 1, 1),
        (w.astype(np.float64) * s_typical.reshape(-1, 1, 1, 1)).astype(np.float16),
    )
    x = rng.normal(0, 1, (4, 32, 10, 10)).astype(np.float16)
    rows = []
    for scale in SCALES:
        st = dict(stats)
        var = np.full(64, 1.0, np.float16)
        gamma, beta, mean = (stats[k].copy() for k in ("gamma", "beta", "mean"))
        gamma[0] = np.float16(scale * np.sqrt(1.0 + eps))  # channel 0: s = scale, no shift
        beta[0] = mean[0] = 0.0  # (a shift would dominate that channel's output and its error)
        st.update(gamma=gamma, beta=beta, mean=mean, var=var)
        s = gamma.astype(np.float64) / np.sqrt(1.0 + eps)
        t = st["beta"].astype(np.float64) - s * st["mean"].astype(np.float64)
        product = w.astype(np.float64)[0] * s[0]
        subnormal = float(np.mean(np.abs(product) < np.finfo(np.float16).tiny))
        err_u = float(channel_error(product[None], product.astype(np.float16)[None])[0])
        model = conv_bn(w, st, eps)
        result = bnfold.fold(model)
        truth = reference(x, w, s, t)[:, 0]
        unfolded = np.abs(run(model, x)[:, 0] - truth).max()
        weight = (w.astype(np.float64) * s.reshape(-1, 1, 1, 1)).astype(np.float16)
        bias = t.astype(np.float16)
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "W", "B"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, 32, 10, 10])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
            [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
        )
        folded_model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)]
        ).SerializeToString()
        folded = np.abs(run(folded_model, x)[:, 0] - truth).max()
        rows.append(
            {
                "scale": scale,
                "subnormal_share": subnormal,
                "channel_error_u": err_u,
                "output_error_folded": float(folded),
                "output_error_unfolded": float(unfolded),
                "output_error_ratio": float(folded / unfolded) if unfolded else None,
                "refused": not result.report.folded,
                "reason": result.report.skipped[0].reason if result.report.skipped else None,
            }
        )
    data = {
        "unit_roundoff": U,
        "limit_u": MAX_CHANNEL_ERROR_ROUNDOFFS,
        "own_rounding_u": {"min": float(own.min()), "max": float(own.max())},
        "typical_fold_u": {"min": float(typical.min()), "max": float(typical.max())},
        "one_channel_scaled": rows,
    }
    atomic.write_json(RESULTS / "fp16_fold_rule.json", data)
    console = Console()
    console.print(
        f"fp16 weights rounded from fp32: {own.min():.2f}-{own.max():.2f} u per channel; folded "
        f"with ordinary BN statistics: {typical.min():.2f}-{typical.max():.2f} u "
        f"(u = {U:.3g}; limit {MAX_CHANNEL_ERROR_ROUNDOFFS:g} u)"
    )
    table = Table(title="one channel scaled by s: fp16 Conv(32->64, 3x3) + BN")
    for col in ("s", "subnormal", "channel err (u)", "out err folded / unfolded", "bnfold"):
        table.add_column(col, justify="right")
    for r in rows:
        ratio = r["output_error_ratio"]
        table.add_row(
            f"{r['scale']:g}",
            f"{r['subnormal_share']:.0%}",
            f"{r['channel_error_u']:.2f}",
            "-" if ratio is None else f"{ratio:.2f}",
            "refused" if r["refused"] else "folds",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

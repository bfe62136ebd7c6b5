"""Differential testing of bnfold on random ONNX graphs, run by onnxruntime before and after.

Seed ``S`` always makes the same model: every random choice is drawn, in a fixed order, from
``numpy.random.default_rng(S)`` (so keep the draws as they are: tests/test_random_graphs.py
pins the models of the seeds that found bugs by digest; a new choice goes after the others or
behind an option). The generator is heavy on BatchNormalization next to the layers bnfold
folds into, and on what stands between them:

* layers: Conv 1d/2d/3d (group 1, grouped, depthwise; pads, auto_pad, strides, dilations,
  with or without bias), ConvTranspose (groups, strides, pads, output_padding, auto_pad), Gemm
  (transA, transB, alpha, beta, C of every broadcastable shape or none), MatMul (rank 2 and up, weight
  on the left, batched weight, with a bias Add of several shapes on either side);
* BatchNormalization: gamma of both signs, zero gammas, tiny variances, epsilon 1e-5 ... 0.1,
  ``training_mode=0`` and opset 9's ``spatial=1``;
* per-channel, scalar, last-axis, one-axis, full and broadcasting-growing Mul/Add/Sub/Div
  constants (a zero divisor now and then);
* activations Relu, LeakyRelu (negative alpha too), PRelu (per-channel, scalar), Sigmoid;
  shape ops Flatten, Reshape (merge, split, shuffle), Transpose (with or without perm),
  Unsqueeze, Squeeze (with or without axes), Identity; MaxPool (second output, dilations,
  ceil_mode), AveragePool (count_include_pad, ceil_mode), GlobalAveragePool, GlobalMaxPool;
  an opaque com.microsoft Gelu;
* structures: layer -> BN, BN -> path -> layer, layer -> activation -> BN -> layer, affine
  chains, BN -> BN, residual Add, Concat of two branches, a BN (or the layer before it) that is
  also a graph output or has a second consumer, a BN with 1 to 3 consumers behind paths, shared
  weights, and dead nodes;
* models: opsets 9 (IR 3: initializers are graph inputs too) and 11-21, fp32 and fp16, a fixed
  or symbolic batch, constants as initializers, Constant nodes (value, value_float,
  value_floats) or both, the last segment in an If (both branches), a one-trip Loop or a
  model-local function.

bnfold's folds are all in reach: backward (conv+bn, conv_transpose+bn, gemm+bn, matmul+bn,
gemm+add, ..., also through shape ops), forward (bn+conv, bn+gemm, bn+matmul, ..., through
shape ops and pools, into one to three layers), the merge of adjacent BNs and affine ops
(bn+bn, bn+mul, ...) and the folds through an activation (gemm+relu+bn+gemm, ...); the JSON
counts each label.

Each seed's model is run by onnxruntime (CPU, ORT_DISABLE_ALL, one thread) on two seeded
inputs (an If's condition true, then false); a model that onnxruntime refuses or cannot run as
it is is a legitimate skip (``orig_fails``), as is one the generator gives up on (``gen_skip``).
Otherwise ``bnfold.fold`` (``--forward`` mode) must not raise (else ``fold_crash``) and the
folded model must (else ``bad``, with its problems):

* give the same outputs: max |difference| / max |original output| at most 1e-4 for fp32, the
  same shapes and NaNs; fp16 at most 1e-3, or else no more than 4 x (+ 0.02) the original's own
  error against its fp32 twin;
* pass ``onnx.checker`` with ``full_check`` where the original does;
* have no more nodes than the original (subgraphs and functions included);
* fold to itself: folding it again folds nothing and leaves it unchanged.

A crash of the worker process (native code) is placed by the stage it happened in: running
the generated model is onnxruntime's or onnx's own crash (``ort_crash``, not bnfold's); in the
fold it is ``fold_crash``, and on the folded model (whose original ran) ``bad``. A seed that
takes longer than ``--timeout`` is ``timeout`` (the worker is killed), an exception of the
generator itself ``gen_error``; the run goes on.

    python benchmarks/random_graphs.py --seeds START COUNT [--jobs N] [--json PATH]
        [--forward exact|int8-safe|off] [--timeout SECONDS]

Prints a table of outcomes and the distinct problems (one example seed each); writes the seeds,
the outcome counts, every failing seed with its problems, the op and fold coverage and the
elapsed time to ``--json`` (default benchmarks/results/random_graphs.json). Exit 1 if bnfold
failed on a seed (``bad``, ``fold_crash``, ``timeout``), else 0. To look at one seed:
``generate(seed).model()`` is the model, ``run_seed(seed)`` the verdict.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import re
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from multiprocessing import connection, get_context
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from rich.console import Console
from rich.table import Table

import bnfold
from bnfold import atomic

RESULTS = Path(__file__).parent / "results"
STATUSES = ("ok", "gen_skip", "orig_fails", "bad", "fold_crash", "ort_crash", "timeout",
            "gen_error")  # fmt: skip
FAILURES = ("bad", "fold_crash", "timeout")  # bnfold's: exit 1
LEGITIMATE = ("ok", "gen_skip", "orig_fails")
OPSETS = [11, 13, 14, 15, 17, 18, 19, 20, 21]
FP32_TOLERANCE, FP16_TOLERANCE = 1e-4, 1e-3


class Skip(Exception):
    """The generator gives up on this seed (a shape it cannot infer)."""


# ======================================================================== the generator


class Builder:
    """A graph under construction: nodes, constants, inputs, outputs and known shapes."""

    def __init__(self, rng, opset, dtype, ir3=False, sym_batch=False) -> None:
        self.rng = rng
        self.opset = opset
        self.dtype = dtype  # np.float32 or np.float16
        self.tp = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
        self.ir3 = ir3
        self.sym_batch = sym_batch
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []
        self.shapes: dict[str, tuple] = {}  # value -> dims (ints; the batch may be "N")
        self.n = 0  # name counter
        self.ops: set[str] = set()  # coverage tags
        self.const_mode = "init"  # init | const (Constant nodes) | mixed
        self.weights: dict[tuple, str] = {}  # shape -> name, to share weights
        self.opaque = False  # may insert com.microsoft Gelu
        self.uses_ms = False
        self.functions: list[onnx.FunctionProto] = []
        self.extra_opsets: list[onnx.OperatorSetIdProto] = []

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, arr, hint: str = "c") -> str:
        """A constant (an initializer or a Constant node, per ``const_mode``)."""
        arr = np.asarray(arr)
        if arr.dtype.kind == "f":
            arr = arr.astype(self.dtype)
        mode = self.const_mode
        if mode == "mixed":
            mode = "init" if self.rng.random() < 0.6 else "const"
        nm = self.name(hint)
        if mode == "init":
            self.inits.append(nh.from_array(arr, nm))
            return nm
        r = self.rng.random()
        if arr.dtype == np.float32 and arr.ndim == 0 and r < 0.3:
            node = oh.make_node("Constant", [], [nm], value_float=float(arr))
        elif arr.dtype == np.float32 and arr.ndim == 1 and r < 0.3:
            node = oh.make_node("Constant", [], [nm], value_floats=[float(x) for x in arr])
        else:
            node = oh.make_node("Constant", [], [nm], value=nh.from_array(arr, nm + "_t"))
        self.nodes.append(node)
        return nm

    def wconst(self, shape, hint: str = "W") -> str:
        """A weight of ``shape`` scaled by 1/sqrt(fan-in); now and then one already made."""
        shape = tuple(shape)
        if shape in self.weights and self.rng.random() < 0.3:
            self.ops.add("shared_weight")
            return self.weights[shape]
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        nm = self.const(self.rng.standard_normal(shape) * (1.0 / np.sqrt(max(fan, 1))), hint)
        self.weights[shape] = nm
        return nm

    def infer(self, value: str) -> tuple:
        """``value``'s dims by onnx's strict shape inference (cached); Skip if unknown."""
        if value in self.shapes:
            return self.shapes[value]
        m = self.model([value], check=False)
        for n in m.graph.node:
            if n.domain == "com.microsoft":  # opaque to onnx: shape-preserving
                n.domain, n.op_type = "", "Identity"
        try:
            m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        except Exception as e:
            raise Skip(f"shape inference: {e}") from None
        for vi in list(m.graph.value_info) + list(m.graph.output):
            if vi.name == value:
                self.shapes[value] = _dims(vi)
                return self.shapes[value]
        raise Skip("value not inferred")

    def add(self, op: str, inputs: list[str], attrs=None, nout: int = 1, out=None) -> str:
        """A node; returns its first output."""
        outs = [out or self.name(op.lower())] + [self.name("aux") for _ in range(nout - 1)]
        self.nodes.append(oh.make_node(op, inputs, outs, name=self.name("n_" + op), **(attrs or {})))  # fmt: skip
        self.ops.add(op)
        return outs[0]

    def model(self, outputs=None, check: bool = True) -> onnx.ModelProto:
        """The model with ``outputs`` (default: the builder's); ``check``: known output shapes."""
        outs = outputs or self.outputs
        outvi = [
            oh.make_tensor_value_info(
                o, self.tp, list(self.shapes[o]) if (check and o in self.shapes) else None
            )
            for o in outs
        ]
        inputs = list(self.inputs)
        if self.ir3:  # IR 3: every initializer is a graph input too
            inputs += [oh.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits]  # fmt: skip
        g = oh.make_graph(self.nodes, "g", inputs, outvi, self.inits)
        extra = list(self.extra_opsets)
        if self.uses_ms:
            extra.append(oh.make_opsetid("com.microsoft", 1))
        m = oh.make_model(g, opset_imports=[oh.make_opsetid("", self.opset)] + extra)
        m.ir_version = 3 if self.ir3 else min(oh.VERSION_TABLE[-1][1], _ir_for(self.opset))
        m.functions.extend(self.functions)
        return m

    def snapshot(self) -> tuple:
        return list(self.nodes), list(self.inits), list(self.outputs), set(self.ops), dict(self.weights)  # fmt: skip

    def restore(self, saved: tuple) -> None:
        self.nodes, self.inits, self.outputs, self.ops, self.weights = saved


def _dims(vi: onnx.ValueInfoProto) -> tuple:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        raise Skip("no shape")
    dims: list[int | str] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            raise Skip("unknown dim")
    return tuple(dims)


def _ir_for(opset: int) -> int:
    """The IR version that goes with ``opset`` (its last row in onnx's table)."""
    return [ir_version for _, ir_version, op, *_ in oh.VERSION_TABLE if op == opset][-1]


# --------------------------------------------------------------------------- layers


def rand_bn(b: Builder, x: str) -> str:
    shp = b.infer(x)
    if len(shp) < 2 or not isinstance(shp[1], int):
        raise Skip("bn rank")
    C = shp[1]
    r = b.rng
    gamma = r.uniform(0.3, 2.0, C) * r.choice([1, 1, 1, -1], C)
    if r.random() < 0.2:
        gamma[r.integers(0, C)] = 0.0
    if r.random() < 0.4:
        gamma = np.abs(gamma)
    beta = r.standard_normal(C) * r.choice([0, 1, 1, 3])
    mean = r.standard_normal(C) * r.choice([0, 1, 1])
    var = r.uniform(0.2, 3.0, C)
    if r.random() < 0.15:
        var[r.integers(0, C)] = r.choice([1e-6, 1e-3])
    eps = float(r.choice([1e-5, 1e-3, 0.1, 1e-5]))
    if b.dtype == np.float16:
        var = np.maximum(var, 1e-3)
    stats = zip((gamma, beta, mean, var), ("gamma", "beta", "mean", "var"), strict=True)
    names = [b.const(a, h) for a, h in stats]
    attrs: dict[str, Any] = {"epsilon": eps}
    if b.opset >= 14 and r.random() < 0.3:
        attrs["training_mode"] = 0
    if b.opset < 9 and r.random() < 0.5:
        attrs["spatial"] = 1
    y = b.add("BatchNormalization", [x] + names, attrs)
    b.ops.add("BN")
    return y


def _conv_groups(r, C: int, keep_shape: bool) -> tuple[int, int]:
    """(group, output channels) of a random Conv on C channels."""
    kind = r.choice(["g1", "grouped", "dw"], p=[0.55, 0.25, 0.2])
    if kind == "g1" or C == 1:
        g = 1
        cout = C if keep_shape else int(r.integers(1, 7))
    elif kind == "grouped":
        divs = [d for d in range(2, C + 1) if C % d == 0]
        g = int(r.choice(divs)) if divs else 1
        cout = g * (1 if keep_shape else int(r.integers(1, 3)))
        if keep_shape:
            cout = C
    else:
        g = C
        cout = C * (1 if keep_shape else int(r.integers(1, 3)))
    if cout % g:
        cout = g * max(1, cout // g)
    return g, cout


def rand_conv(b: Builder, x: str, keep_shape: bool = False) -> str:
    """A Conv; ``keep_shape``: same channels and spatial size (odd kernel, same padding)."""
    shp = b.infer(x)
    r = b.rng
    if len(shp) not in (3, 4, 5) or not isinstance(shp[1], int):
        raise Skip("conv rank")
    C = shp[1]
    nsp = len(shp) - 2
    g, cout = _conv_groups(r, C, keep_shape)
    k = [int(r.integers(1, 4)) for _ in range(nsp)]
    attrs: dict[str, Any] = {}
    if g > 1 or r.random() < 0.2:
        attrs["group"] = g
    if keep_shape:
        k = [int(r.choice([1, 3])) for _ in range(nsp)]
        attrs["pads"] = [kk // 2 for kk in k] * 2
    else:
        pm = r.random()
        if pm < 0.35:
            pass
        elif pm < 0.7:
            attrs["pads"] = [int(r.integers(0, 3)) for _ in range(2 * nsp)]
        else:
            attrs["auto_pad"] = str(r.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
        if r.random() < 0.3:
            attrs["strides"] = [int(r.integers(1, 3)) for _ in range(nsp)]
        if r.random() < 0.25 and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"):
            attrs["dilations"] = [int(r.integers(1, 3)) for _ in range(nsp)]
    if r.random() < 0.3:
        attrs["kernel_shape"] = k
    inputs = [x, b.wconst((cout, C // g, *k))]
    if r.random() < 0.6:
        inputs.append(b.const(r.standard_normal(cout) * 0.5, "bias"))
    y = b.add("Conv", inputs, attrs)
    b.ops.add(f"Conv{nsp}d" + ("" if g == 1 else ("_dw" if g == C else "_grp")))
    return y


def rand_convT(b: Builder, x: str) -> str:
    shp = b.infer(x)
    r = b.rng
    if len(shp) not in (3, 4, 5) or not isinstance(shp[1], int):
        raise Skip("convT rank")
    C = shp[1]
    nsp = len(shp) - 2
    divs = [d for d in range(1, C + 1) if C % d == 0]
    g = int(r.choice(divs)) if r.random() < 0.4 else 1
    coutg = int(r.integers(1, 4))
    k = [int(r.integers(1, 4)) for _ in range(nsp)]
    attrs: dict[str, Any] = {}
    if g > 1:
        attrs["group"] = g
    s = [int(r.integers(1, 3)) for _ in range(nsp)]
    if r.random() < 0.6:
        attrs["strides"] = s
    else:
        s = [1] * nsp
    if r.random() < 0.4:
        attrs["pads"] = [int(r.integers(0, min(kk, 2))) for kk in k] * 2
    if r.random() < 0.3:
        attrs["output_padding"] = [int(r.integers(0, ss)) for ss in s]
    if r.random() < 0.15 and "pads" not in attrs:
        attrs["auto_pad"] = str(r.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    inputs = [x, b.wconst((C, coutg, *k))]
    if r.random() < 0.5:
        inputs.append(b.const(r.standard_normal(coutg * g) * 0.5, "bias"))
    y = b.add("ConvTranspose", inputs, attrs)
    b.ops.add("ConvTranspose" + ("_grp" if g > 1 else ""))
    return y


def rand_gemm(b: Builder, x: str) -> str:
    if len(b.infer(x)) != 2:
        x = b.add("Flatten", [x], {"axis": 1})
    shp = b.infer(x)
    r = b.rng
    if not all(isinstance(d, int) for d in shp) and r.random() < 0.5:
        raise Skip("gemm sym")
    rows, K = shp
    transA = int(r.random() < 0.15) if isinstance(rows, int) else 0
    if transA:
        rows, K = K, rows
    M = int(r.integers(1, 7))
    transB = int(r.random() < 0.5)
    W = b.wconst((M, K) if transB else (K, M))
    attrs: dict[str, Any] = {}
    if transA:
        attrs["transA"] = 1
    if transB or r.random() < 0.2:
        attrs["transB"] = transB
    if r.random() < 0.4:
        attrs["alpha"] = float(r.choice([0.5, 2.0, -1.0, 1.0]))
    if r.random() < 0.4:
        attrs["beta"] = float(r.choice([0.5, 2.0, -1.0, 0.0, 1.0]))
    inputs = [x, W]
    if not (r.random() < 0.25 and b.opset >= 11):  # else no C (optional from opset 11)
        opts: list[tuple] = [(M,), (1, M), (), (1,), (1, 1)]
        if isinstance(rows, int):
            opts += [(rows, M), (rows, 1)]
        cs = opts[int(r.integers(0, len(opts)))]
        inputs.append(b.const(r.standard_normal(cs) * 0.5, "C"))
        b.ops.add(f"GemmC{cs}")
    y = b.add("Gemm", inputs, attrs)
    if transA:
        b.ops.add("Gemm_transA")
    return y


def rand_matmul(b: Builder, x: str) -> str:
    shp = b.infer(x)
    r = b.rng
    if len(shp) < 2:
        raise Skip("mm rank")
    K = shp[-1]
    if not isinstance(K, int):
        raise Skip("mm sym")
    M = int(r.integers(1, 7))
    side = r.random()
    if side < 0.12 and isinstance(shp[-2], int):  # weight on the left: W (P, rows) @ x
        y = b.add("MatMul", [b.wconst((int(r.integers(1, 5)), shp[-2])), x])
        b.ops.add("MatMul_left")
        return y
    if side < 0.2 and len(shp) >= 3 and isinstance(shp[-3], int):
        W = b.wconst((shp[-3], K, M))
        b.ops.add("MatMul_batchedW")
    else:
        W = b.wconst((K, M))
    y = b.add("MatMul", [x, W])
    b.ops.add(f"MatMul{len(shp)}d")
    if r.random() < 0.5:
        opts: list[tuple] = [(M,), (1, M), (), (1,)]
        if len(shp) >= 3:
            opts.append((1, 1, M))
        if isinstance(shp[-2], int):
            opts.append((shp[-2], M))
        cs = opts[int(r.integers(0, len(opts)))]
        c = b.const(r.standard_normal(cs) * 0.5, "mmb")
        y = b.add("Add", [y, c] if r.random() < 0.7 else [c, y])
        b.ops.add("MatMul+Add")
    return y


def rand_layer(b: Builder, x: str) -> str:
    r = b.rng
    if len(b.infer(x)) >= 3:
        f = [rand_conv, rand_conv, rand_convT, rand_matmul, rand_gemm][int(r.integers(0, 5))]
    else:
        f = [rand_gemm, rand_matmul][int(r.integers(0, 2))]
    return f(b, x)


# --------------------------------------------------------------------------- other ops


def _elementwise_shape(b: Builder, shp: tuple) -> tuple[tuple, str]:
    """The constant's shape for an elementwise op on ``shp``, and its kind."""
    r = b.rng
    rank = len(shp)
    mode = r.random()
    if mode < 0.4 and rank >= 2 and isinstance(shp[1], int):
        cshape: Any = (shp[1],) + (1,) * (rank - 2)
        if r.random() < 0.4:
            cshape = (1,) + cshape
        return cshape, "perch"
    if mode < 0.6:
        return [(), (1,), (1,) * rank][int(r.integers(0, 3))], "scalar"
    if mode < 0.75 and isinstance(shp[-1], int):
        return (shp[-1],), "last"
    if mode < 0.85:
        ax = int(r.integers(0, rank))
        if not isinstance(shp[ax], int):
            raise Skip("sym")
        cshape = [1] * rank
        cshape[ax] = shp[ax]
        return tuple(cshape)[int(r.integers(0, ax + 1)) :], "axis"
    if mode < 0.93 and all(isinstance(d, int) for d in shp[1:]):
        return tuple(shp[1:]), "full"
    # broadcasting-growing constant: a dim of 1 in x meets 3 in the constant
    ones = [i for i, d in enumerate(shp) if d == 1]
    if not ones:
        return (1,), "grow"
    cshape = [1] * rank
    cshape[ones[-1]] = 3
    return tuple(cshape), "grow"


def rand_elementwise(b: Builder, x: str) -> str:
    shp = b.infer(x)
    r = b.rng
    op = str(r.choice(["Mul", "Add", "Sub", "Div"]))
    cshape, kind = _elementwise_shape(b, shp)
    vals = r.standard_normal(cshape)
    if op in ("Mul", "Div") and r.random() < 0.5:
        vals = r.uniform(0.5, 2.0, cshape) * r.choice([1, -1], cshape)
    if op == "Div" and r.random() < 0.05:
        vals = np.array(vals)
        vals.flat[0] = 0.0
    c = b.const(vals, "k")
    inputs = [x, c] if op == "Div" else ([x, c] if r.random() < 0.6 else [c, x])
    y = b.add(op, inputs)
    b.ops.add(f"{op}_{kind}")
    return y


def rand_act(b: Builder, x: str) -> str:
    r = b.rng
    op = str(r.choice(["Relu", "Relu", "LeakyRelu", "PRelu", "Sigmoid"]))
    if op == "LeakyRelu":
        return b.add(op, [x], {"alpha": float(r.choice([0.01, 0.2, -0.5, 1.5]))})
    if op == "PRelu":
        shp = b.infer(x)
        if len(shp) >= 2 and isinstance(shp[1], int) and r.random() < 0.6:
            sl = (shp[1],) + (1,) * (len(shp) - 2)
        else:
            sl = (1,)
        s = b.const(r.uniform(-0.5, 0.5, sl), "slope")
        b.ops.add("PRelu" + ("_perch" if sl != (1,) else "_scalar"))
        return b.add(op, [x, s])
    return b.add(op, [x])


def _axes(b: Builder, axes: list[int]) -> str:
    nm = b.name("axes")
    b.inits.append(nh.from_array(np.array(axes, dtype=np.int64), nm))
    return nm


def _squeeze(b: Builder, x: str, shp: tuple) -> str:
    r = b.rng
    ones = [i for i, d in enumerate(shp) if d == 1]
    if not ones:
        return b.add("Identity", [x])
    ax = int(r.choice(ones))
    if r.random() < 0.3 and b.opset >= 11:
        ax -= len(shp)
    if b.opset < 13:
        return b.add("Squeeze", [x], {"axes": [ax]})
    if r.random() < 0.15:
        b.ops.add("Squeeze_noaxes")
        return b.add("Squeeze", [x])
    return b.add("Squeeze", [x, _axes(b, [ax])])


def _reshape(b: Builder, x: str, shp: tuple) -> str:
    r = b.rng
    if not all(isinstance(d, int) for d in shp[1:]):
        raise Skip("reshape sym")
    tail = list(shp[1:])
    choice = r.random()
    if choice < 0.3 and len(tail) >= 2:
        tgt = [0, tail[0], int(np.prod(tail[1:]))]  # merge the spatial dims
    elif choice < 0.5 and len(tail) >= 1 and tail[0] % 2 == 0 and tail[0] > 2:
        tgt = [0, 2, tail[0] // 2] + tail[1:]  # split the channels
    elif choice < 0.65:
        tgt = [0, -1]
    elif choice < 0.8 and len(tail) >= 2:
        tgt = [0, tail[0] * tail[1]] + tail[2:]  # merge C with the next dim
    else:
        tgt = [int(t) for t in [0] + list(r.permutation(tail))]  # same elements, dims shuffled
    if isinstance(shp[0], int) and r.random() < 0.3:
        tgt[0] = shp[0]
    t = np.array(tgt, dtype=np.int64)
    nm = b.name("shape")
    if r.random() < 0.7:
        b.inits.append(nh.from_array(t, nm))
    else:
        b.nodes.append(oh.make_node("Constant", [], [nm], value=nh.from_array(t, nm + "_t")))
    return b.add("Reshape", [x, nm])


def rand_shape_op(b: Builder, x: str) -> str:
    shp = b.infer(x)
    r = b.rng
    rank = len(shp)
    op = str(r.choice(["Flatten", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Identity"]))
    if op == "Identity":
        return b.add(op, [x])
    if op == "Flatten":
        return b.add(op, [x], {"axis": int(r.integers(0, rank + 1))})
    if op == "Transpose":
        perm = list(r.permutation(rank)) if r.random() < 0.8 else None
        if perm is None:
            b.ops.add("Transpose_noperm")
            return b.add(op, [x])
        return b.add(op, [x], {"perm": [int(p) for p in perm]})
    if op == "Unsqueeze":
        ax = int(r.integers(-rank - 1 if b.opset >= 11 else 0, rank + 1))
        if b.opset >= 13:
            return b.add(op, [x, _axes(b, [ax])])
        return b.add(op, [x], {"axes": [ax]})
    if op == "Squeeze":
        return _squeeze(b, x, shp)
    return _reshape(b, x, shp)


def rand_pool(b: Builder, x: str) -> str:
    shp = b.infer(x)
    r = b.rng
    if len(shp) < 3:
        raise Skip("pool rank")
    nsp = len(shp) - 2
    op = str(r.choice(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "MaxPool",
                       "AveragePool"]))  # fmt: skip
    if op.startswith("Global"):
        return b.add(op, [x])
    k = [int(r.integers(1, 4)) for _ in range(nsp)]
    attrs: dict[str, Any] = {"kernel_shape": k}
    if r.random() < 0.4:
        attrs["strides"] = [int(r.integers(1, 3)) for _ in range(nsp)]
    pm = r.random()
    if pm < 0.4:
        attrs["pads"] = [int(r.integers(0, kk)) for kk in k] * 2
    elif pm < 0.55:
        attrs["auto_pad"] = str(r.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    if b.opset >= 10 and r.random() < 0.3:
        attrs["ceil_mode"] = 1
    if op == "AveragePool" and r.random() < 0.5:
        attrs["count_include_pad"] = 1
    if op == "MaxPool" and b.opset >= 10 and r.random() < 0.2 and "auto_pad" not in attrs:
        attrs["dilations"] = [int(r.integers(1, 3)) for _ in range(nsp)]
    y = b.add(op, [x], attrs, nout=2 if (op == "MaxPool" and r.random() < 0.1) else 1)
    tags = ("_cip" if attrs.get("count_include_pad") else "") + ("_ceil" if attrs.get("ceil_mode") else "")  # fmt: skip
    b.ops.add(op + tags)
    return y


def rand_opaque(b: Builder, x: str) -> str:
    b.uses_ms = True
    b.ops.add("opaque_ms_Gelu")
    return b.add("Gelu", [x], {"domain": "com.microsoft"})


def rand_path_op(b: Builder, x: str) -> str:
    if len(b.infer(x)) >= 3 and b.rng.random() < 0.35:
        return rand_pool(b, x)
    return rand_shape_op(b, x)


# --------------------------------------------------------------------------- blocks


def rand_path_block(b: Builder, x: str) -> str:
    """A fold across a path: backward (layer -> shape ops -> BN), through an activation
    (layer -> shape ops -> activation -> BN -> layers) or forward (BN -> paths -> 1-3 layers)."""
    r = b.rng
    kind = r.choice(["fwd", "act", "bwd"])
    if kind == "bwd":
        x = rand_layer(b, x)
        for _ in range(int(r.integers(0, 4))):
            x = rand_shape_op(b, x)
        for _ in range(int(r.integers(1, 3))):
            x = rand_bn(b, x) if r.random() < 0.7 else rand_elementwise(b, x)
        return x
    if kind == "act":
        x = rand_layer(b, x)
        for _ in range(int(r.integers(0, 2))):
            x = rand_shape_op(b, x)
        x = rand_act(b, x)
        if r.random() < 0.2:
            x = b.add("Identity", [x])
    x = rand_bn(b, x)
    if r.random() < 0.3:
        x = rand_elementwise(b, x)
    ncons = int(r.choice([1, 1, 2, 3]))
    outs = []
    for _ in range(ncons):
        y = x
        for _ in range(int(r.integers(0, 4))):
            y = rand_path_op(b, y)
        outs.append(rand_layer(b, y))
    b.ops.add(f"fwd_consumers{ncons}")
    b.outputs += outs[:-1]
    return outs[-1]


def _block_bn_path_layer(b: Builder, x: str) -> str:
    r = b.rng
    x = rand_bn(b, x)
    if r.random() < 0.3:
        x = rand_act(b, x) if r.random() < 0.3 else x
    q = r.random()
    if q < 0.25:
        x = rand_pool(b, x) if len(b.infer(x)) >= 3 else x
    elif q < 0.5:
        x = rand_shape_op(b, x)
    return rand_layer(b, x)


def _block_layer_act_bn(b: Builder, x: str) -> str:
    r = b.rng
    x = rand_bn(b, rand_act(b, rand_layer(b, x)))
    if r.random() < 0.3 and len(b.infer(x)) >= 3:
        x = rand_pool(b, x)
    if r.random() < 0.8:
        x = rand_layer(b, x)
    return x


def _block_affine_chain(b: Builder, x: str) -> str:
    r = b.rng
    if r.random() < 0.5:
        x = rand_layer(b, x)
    for _ in range(int(r.integers(1, 4))):
        x = rand_elementwise(b, x) if r.random() < 0.7 else rand_bn(b, x)
    return x


def _block_bn_bn(b: Builder, x: str) -> str:
    r = b.rng
    x = rand_bn(b, x)
    if r.random() < 0.3:
        x = b.add("Identity", [x])
    return rand_bn(b, x) if r.random() < 0.6 else rand_elementwise(b, x)


def _block_residual(b: Builder, x: str) -> str:
    r = b.rng
    if len(b.infer(x)) >= 3:
        y = rand_bn(b, rand_conv(b, x, keep_shape=True))
        if r.random() < 0.5:
            y = b.add("Relu", [y])
        b.ops.add("residual")
        return b.add("Add", [x, y] if r.random() < 0.5 else [y, x])
    y = rand_bn(b, x)
    b.ops.add("residual")
    return b.add("Add", [x, y])


def _block_concat(b: Builder, x: str) -> str:
    r = b.rng
    shp = b.infer(x)
    # the first draw is overwritten below: its node stays in the graph, unused (dead code)
    y1 = rand_bn(b, x) if r.random() < 0.5 else rand_layer(b, x)
    if len(shp) >= 3:
        y1 = rand_conv(b, x, keep_shape=True)
        y2 = rand_conv(b, x, keep_shape=True)
    else:
        y2 = rand_bn(b, x)
        y1 = rand_elementwise(b, x) if r.random() < 0.5 else b.add("Identity", [x])
        if b.infer(y1) != b.infer(x):
            y1 = x
    y1 = rand_bn(b, y1)
    b.ops.add("Concat")
    return b.add("Concat", [y1, y2], {"axis": 1})


def _block_fan_out(b: Builder, x: str) -> str:
    """A layer feeding a BN that is also a graph output, or a BN that is a graph output."""
    r = b.rng
    y = rand_layer(b, x)
    z = rand_bn(b, y)
    if r.random() < 0.5:
        b.outputs.append(y)
        b.ops.add("layer_out_also_graph_output")
    else:
        b.outputs.append(z)
        b.ops.add("bn_out_graph_output")
        if r.random() < 0.5:
            return rand_layer(b, z)
    return z


def _block_bn_two_consumers(b: Builder, x: str) -> str:
    r = b.rng
    z = rand_bn(b, x)
    b.outputs.append(rand_layer(b, z))
    b.ops.add("bn_two_consumers")
    return rand_layer(b, z) if r.random() < 0.5 else rand_elementwise(b, z)


def _block_layer_bn(b: Builder, x: str) -> str:
    x = rand_layer(b, x)
    if b.rng.random() < 0.2:
        x = rand_shape_op(b, x)
    return rand_bn(b, x)


# (upper bound of the draw p, block): the first bound above p is taken
BLOCKS: list[tuple[float, Callable[[Builder, str], str]]] = [
    (0.22, _block_layer_bn),
    (0.36, _block_bn_path_layer),
    (0.48, _block_layer_act_bn),
    (0.56, _block_affine_chain),
    (0.62, _block_bn_bn),
    (0.68, rand_shape_op),
    (0.72, rand_act),
    (0.76, rand_pool),
    (0.82, _block_residual),
    (0.87, _block_concat),
    (0.93, _block_fan_out),
    (float("inf"), _block_bn_two_consumers),
]


def rand_block(b: Builder, x: str) -> str:
    """A random pattern, heavy on BN next to layers."""
    r = b.rng
    if b.opaque and r.random() < 0.35:
        x = rand_opaque(b, x)
    p = r.random()
    if r.random() < 0.35:
        return rand_path_block(b, x)
    return next(block for bound, block in BLOCKS if p < bound)(b, x)


def grow(b: Builder, x: str) -> str:
    """``x`` followed by a random block; up to five tries, then ``x`` as it is."""
    for _ in range(5):
        saved = b.snapshot()
        try:
            y = rand_block(b, x)
            b.infer(y)
            return y
        except Exception:
            b.restore(saved)
    return x


# --------------------------------------------------------------------------- models


def make_input(b: Builder) -> str:
    r = b.rng
    kind = r.choice(["4d", "4d", "3d", "5d", "2d", "seq"], p=[0.35, 0.15, 0.15, 0.1, 0.15, 0.1])
    N = int(r.integers(1, 3))
    Nd: int | str = "N" if b.sym_batch else N
    if kind == "4d":
        shape = [Nd, int(r.integers(1, 6)), int(r.integers(3, 8)), int(r.integers(3, 8))]
    elif kind == "3d":
        shape = [Nd, int(r.integers(1, 6)), int(r.integers(3, 9))]
    elif kind == "5d":
        shape = [Nd, int(r.integers(1, 4)), *(int(r.integers(2, 5)) for _ in range(3))]
    elif kind == "2d":
        shape = [Nd, int(r.integers(1, 9))]
    else:
        shape = [Nd, int(r.integers(2, 5)), int(r.integers(2, 7))]
    b.inputs.append(oh.make_tensor_value_info("x", b.tp, shape))
    b.shapes["x"] = tuple(shape)
    return "x"


def generate(seed: int) -> Builder:
    """The builder of seed ``seed``'s model (``.model()``); raises Skip when it gives up."""
    r = np.random.default_rng(seed)
    legacy = r.random() < 0.07  # opset 9, IR 3
    opset = 9 if legacy else int(r.choice(OPSETS))
    dtype = np.float16 if r.random() < 0.1 else np.float32
    b = Builder(r, opset, dtype, ir3=legacy, sym_batch=(r.random() < 0.15 and not legacy))
    b.const_mode = str(r.choice(["init", "init", "const", "mixed"]))
    b.opaque = (r.random() < 0.2) and dtype == np.float32
    if legacy:
        b.const_mode = "init"
    x = make_input(b)
    nblocks = int(r.integers(1, 5))
    if legacy:
        wrap = "If" if r.random() < 0.2 else None
    else:
        wrap = str(r.choice(["If", "Loop", "Function"], p=[0.34, 0.33, 0.33])) if r.random() < 0.25 else None  # fmt: skip
    for i in range(nblocks):
        if wrap and i == nblocks - 1:
            x = wrap_segment(b, x, wrap)
            break
        x = grow(b, x)
    b.outputs.append(x)
    b.outputs = list(dict.fromkeys(b.outputs))
    for o in b.outputs:
        with contextlib.suppress(Skip):
            b.infer(o)
    return b


# --------------------------------------------------------------------------- subgraphs


def wrap_segment(b: Builder, x: str, kind: str) -> str:
    """A random segment on the outer value ``x``, in an If, a Loop or a model-local function."""
    r = b.rng
    sub = Builder(r, b.opset, b.dtype, ir3=b.ir3, sym_batch=b.sym_batch)
    sub.const_mode = "const" if kind == "Function" else str(r.choice(["init", "const", "outer"]))
    outer_consts = sub.const_mode == "outer"  # the subgraph's constants in the main graph
    if outer_consts:
        sub.const_mode = "init"
    if b.ir3:
        sub.const_mode = "const"
    sub.n = b.n + 1000
    sub.opaque = b.opaque
    shp = b.infer(x)  # the segment reads x: it is the sub builder's input
    sub.inputs.append(oh.make_tensor_value_info(x, b.tp, list(shp)))
    sub.shapes[x] = shp
    y = x
    for _ in range(int(r.integers(1, 4))):
        y = grow(sub, y)
    if y == x:
        y = sub.add("Identity", [x])
    b.n = sub.n + 1
    b.ops |= sub.ops
    b.uses_ms = b.uses_ms or sub.uses_ms
    b.ops.add("wrap_" + kind)
    outs = [y] + [o for o in sub.outputs if o != y]
    yshape = sub.infer(y)
    if kind == "Function":
        return _as_function(b, sub, x, outs)
    if outer_consts:
        b.inits.extend(sub.inits)
        sub_inits = []
    else:
        sub_inits = sub.inits
    if kind == "If":
        return _as_if(b, sub, x, outs, sub_inits, yshape)
    return _as_loop(b, sub, outs, sub_inits, yshape)


def _publish(b: Builder, names: list[str]) -> str:
    """The wrapper's extra outputs become graph outputs; returns its first."""
    b.outputs += names[1:]
    return names[0]


def _value_infos(b: Builder, sub: Builder, outs: list[str], rename=lambda v: v) -> list:
    return [oh.make_tensor_value_info(rename(o), b.tp, list(sub.infer(o))) for o in outs]


def _as_function(b: Builder, sub: Builder, x: str, outs: list[str]) -> str:
    constants = [oh.make_node("Constant", [], [t.name], value=t) for t in sub.inits]
    opsets = [oh.make_opsetid("", b.opset)]
    if sub.uses_ms:
        opsets.append(oh.make_opsetid("com.microsoft", 1))
    b.functions = [oh.make_function("local", "Seg", [x], outs, constants + sub.nodes, opsets)]
    b.extra_opsets = [oh.make_opsetid("local", 1)]
    names = [b.name("fout") for _ in outs]
    b.nodes.append(oh.make_node("Seg", [x], names, domain="local"))
    return _publish(b, names)


def _renamed(nodes, inits, rename) -> tuple[list, list]:
    """Copies of ``nodes`` and ``inits`` with every value renamed and node names suffixed."""
    out_nodes = []
    for n in nodes:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        del m.input[:]
        m.input.extend(rename(v) for v in n.input)
        del m.output[:]
        m.output.extend(rename(v) for v in n.output)
        m.name = n.name + "_e"
        out_nodes.append(m)
    out_inits = []
    for t in inits:
        t2 = onnx.TensorProto()
        t2.CopyFrom(t)
        t2.name = rename(t.name)
        out_inits.append(t2)
    return out_nodes, out_inits


def _as_if(b, sub, x, outs, sub_inits, yshape) -> str:
    """An If on a graph input ``cond``: both branches compute the segment (else renamed)."""
    b.inputs.append(oh.make_tensor_value_info("cond", TensorProto.BOOL, []))
    then_g = oh.make_graph(sub.nodes, "then", [], _value_infos(b, sub, outs), sub_inits)
    outer = {t.name for t in b.inits}
    renames: dict[str, str] = {}

    def rename(v: str) -> str:
        if v == x or v == "" or v in outer:
            return v
        return renames.setdefault(v, v + "_e")

    enodes, einits = _renamed(sub.nodes, sub_inits, rename)
    else_g = oh.make_graph(enodes, "else", [], _value_infos(b, sub, outs, rename), einits)
    names = [b.name("ifout") for _ in outs]
    b.nodes.append(oh.make_node("If", ["cond"], names, then_branch=then_g, else_branch=else_g))
    b.ops.add("If")
    b.shapes[names[0]] = yshape
    return _publish(b, names)


def _as_loop(b, sub, outs, sub_inits, yshape) -> str:
    """A Loop with a trip count of 1: the segment's outputs are scan outputs (a leading 1)."""
    it, cin, cout = b.name("it"), b.name("cin"), b.name("cout")
    body = oh.make_graph(
        sub.nodes + [oh.make_node("Identity", [cin], [cout])], "body",
        [oh.make_tensor_value_info(it, TensorProto.INT64, []),
         oh.make_tensor_value_info(cin, TensorProto.BOOL, [])],
        [oh.make_tensor_value_info(cout, TensorProto.BOOL, []), *_value_infos(b, sub, outs)],
        sub_inits,
    )  # fmt: skip
    trip = b.name("trip")
    b.inits.append(nh.from_array(np.array(1, np.int64), trip))
    names = [b.name("loopout") for _ in outs]
    b.nodes.append(oh.make_node("Loop", [trip, ""], names, body=body))
    b.shapes[names[0]] = (1,) + tuple(yshape)
    return _publish(b, names)


# ======================================================================== the checker


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """onnxruntime CPU, optimisations off (so that it folds nothing itself), one thread."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def feeds(model: onnx.ModelProto, rng, batch: int = 2) -> dict[str, np.ndarray]:
    """N(0, 4) inputs (a symbolic dim is ``batch``), a random bool for a bool input."""
    out = {}
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim]
        dt = oh.tensor_dtype_to_np_dtype(t.elem_type)
        if dt == np.bool_:
            out[vi.name] = np.array(rng.random() < 0.5)
        else:
            out[vi.name] = (rng.standard_normal(shape) * 2).astype(dt)
    return out


def seed_feeds(model: onnx.ModelProto, seed: int) -> list[dict[str, np.ndarray]]:
    """The two inputs of seed ``seed``: an If's condition true in the first, false in the second."""
    rng = np.random.default_rng(seed)
    fs = [feeds(model, rng) for _ in range(2)]
    if any(vi.name == "cond" for vi in model.graph.input):
        fs[0]["cond"], fs[1]["cond"] = np.array(True), np.array(False)
    return fs


def count_nodes(model: onnx.ModelProto) -> int:
    """Nodes of the main graph, its subgraphs and the functions' bodies."""

    def nodes(ns: Iterable[onnx.NodeProto]) -> int:
        total = 0
        for node in ns:
            total += 1
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    total += nodes(a.g.node)
                for g in a.graphs:
                    total += nodes(g.node)
        return total

    return nodes(model.graph.node) + sum(nodes(f.node) for f in model.functions)


def canonical(model: onnx.ModelProto) -> bytes:
    """The serialized model with initializers and value_info sorted by name (in subgraphs too)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)

    def fix(g: onnx.GraphProto) -> None:
        for field in (g.initializer, g.value_info):
            items = sorted(field, key=lambda t: t.name)
            del field[:]
            field.extend(items)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    fix(a.g)

    fix(m.graph)
    return m.SerializeToString()


def to_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp32 twin of an fp16 model (tensors, value types and Cast targets)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)

    def tensor(t: onnx.TensorProto) -> None:
        if t.data_type == TensorProto.FLOAT16:
            t.CopyFrom(nh.from_array(nh.to_array(t).astype(np.float32), t.name))

    def nodes(ns: Iterable[onnx.NodeProto]) -> None:
        for n in ns:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    tensor(a.t)
                if a.type == onnx.AttributeProto.GRAPH:
                    graph(a.g)
                if a.name == "to" and a.i == TensorProto.FLOAT16:
                    a.i = TensorProto.FLOAT

    def graph(g: onnx.GraphProto) -> None:
        for t in g.initializer:
            tensor(t)
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
                vi.type.tensor_type.elem_type = TensorProto.FLOAT
        nodes(g.node)

    graph(m.graph)
    for f in m.functions:
        nodes(f.node)
    return m


def _f64(runs: list, k: int) -> list[np.ndarray]:
    return [np.asarray(run[k], np.float64) for run in runs]


def relative_error(ref: list[list], outs: list[list]) -> float:
    """max |out - ref| / max |ref| (at least 0.01) over outputs and inputs; inf when a shape or
    a NaN differs."""
    worst = 0.0
    for k in range(len(ref[0])):
        xs, ys = _f64(ref, k), _f64(outs, k)
        if any(x.shape != y.shape for x, y in zip(xs, ys, strict=True)):
            return float("inf")
        if any(np.any(np.isnan(x) != np.isnan(y)) for x, y in zip(xs, ys, strict=True)):
            return float("inf")
        scale = max([float(np.max(np.abs(np.nan_to_num(x)))) for x in xs if x.size] + [1e-2])
        diffs = [
            np.abs(np.nan_to_num(x) - np.nan_to_num(y))
            for x, y in zip(xs, ys, strict=True)
            if x.size
        ]
        worst = max(worst, max([float(np.max(d)) for d in diffs] + [0.0]) / scale)
    return worst


def fp16_errors(model, fs, ref, outs) -> tuple[float, float]:
    """The original's and the folded model's error against the original's fp32 twin."""
    twin = session(to_fp32(model))
    r32s = [twin.run(None, {k: v.astype(np.float32) if v.dtype == np.float16 else v
                            for k, v in f.items()}) for f in fs]  # fmt: skip
    e_orig = e_fold = 0.0
    for k in range(len(ref[0])):
        zs = _f64(r32s, k)
        sc = max([float(np.max(np.abs(z))) for z in zs if z.size] + [1e-2])
        for z, a, b in zip(zs, _f64(ref, k), _f64(outs, k), strict=True):
            if z.size:
                e_orig = max(e_orig, float(np.max(np.abs(z - a))) / sc)
                e_fold = max(e_fold, float(np.max(np.abs(z - b))) / sc)
    return e_orig, e_fold


def describe(exc: BaseException) -> str:
    """Exception type, the innermost bnfold frame and the message's first line."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "bnfold" in f.filename and "benchmarks" not in f.filename]
    where = ours[-1] if ours else (frames[-1] if frames else None)
    at = f" at {Path(where.filename).name}:{where.lineno} in {where.name}" if where else ""
    message = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}{at}: {message}"


def output_problems(model, folded, fs, ref, fp16: bool, res: dict) -> list[str]:
    """The folded model's outputs against the original's."""
    try:
        outs = [session(folded).run(None, f) for f in fs]
    except Exception as e:
        return ["folded_ort_fails:" + str(e)[:250]]
    worst = relative_error(ref, outs)
    res["err_rel"] = worst
    if not fp16:
        return [] if worst <= FP32_TOLERANCE else [f"mismatch:{worst:.3g}"]
    if worst <= FP16_TOLERANCE:
        return []
    e_orig, e_fold = fp16_errors(model, fs, ref, outs)
    res["fp16_calib"] = (e_orig, e_fold)
    return [f"mismatch_fp16:{e_orig:.3g}->{e_fold:.3g}"] if e_fold > 4 * e_orig + 2e-2 else []


def refold_problems(folded: onnx.ModelProto, forward: str) -> list[str]:
    """Folding the folded model again must fold nothing and change nothing."""
    try:
        again = bnfold.fold(folded, forward=forward)
        twice = ir.serde.serialize_model(again.model)
    except Exception as e:
        return ["second_fold_crash:" + describe(e)]
    if again.report.folded:
        return ["second_fold_folds:" + str([(f.fold, f.direction) for f in again.report.folded])]
    return [] if canonical(twice) == canonical(folded) else ["second_fold_differs"]


def _checks(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
        return True
    except Exception:
        return False


def _no_stage(stage: str) -> None:
    pass


def run_seed(
    seed: int, forward: str = "exact", stage: Callable[[str], None] = _no_stage
) -> dict[str, Any]:
    """Seed ``seed``'s verdict: ``status`` (see STATUSES), ``problems`` and what was covered.
    ``stage`` is told each step as it starts (one of STAGES), so that a native crash can be
    placed: in onnxruntime on the original (not bnfold's), in the fold or on the folded model."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return _run_seed(seed, forward, stage)


def _run_seed(seed: int, forward: str, stage: Callable[[str], None]) -> dict[str, Any]:
    res: dict[str, Any] = {"seed": seed}
    try:
        b = generate(seed)
        model = b.model()
    except Skip:
        return {**res, "status": "gen_skip"}
    except Exception as e:
        return {**res, "status": "gen_error", "problems": ["gen_error:" + describe(e)]}
    res.update(ops=sorted(b.ops), opset=b.opset, fp16=b.dtype == np.float16, ir3=b.ir3)
    stage("original")
    try:
        fs = seed_feeds(model, seed)
        original = session(model)
        ref = [original.run(None, f) for f in fs]
    except Exception as e:
        return {**res, "status": "orig_fails", "err": str(e)[:300]}
    stage("fold")
    try:
        result = bnfold.fold(model, forward=forward)
        folded = ir.serde.serialize_model(result.model)
    except Exception as e:
        return {**res, "status": "fold_crash", "problems": ["fold_crash:" + describe(e)],
                "traceback": traceback.format_exc()[-1500:]}  # fmt: skip
    stage("folded")
    res["folded"] = [(f.fold, f.direction) for f in result.report.folded]
    res["nodes"] = (count_nodes(model), count_nodes(folded))
    problems = []
    if res["nodes"][1] > res["nodes"][0]:
        problems.append("node_count_grew")
    if _checks(model):
        try:
            onnx.checker.check_model(folded, full_check=True)
        except Exception as e:
            problems.append("checker:" + str(e)[:200])
    problems += output_problems(model, folded, fs, ref, res["fp16"], res)
    problems += refold_problems(folded, forward)
    return {**res, "problems": problems, "status": "bad" if problems else "ok"}


# ======================================================================== the driver


def _quiet() -> None:
    ort.set_default_logger_severity(4)
    warnings.filterwarnings("ignore")


Crash = tuple[int, str]  # the driver's own test: a native crash at (seed, stage)


def _worker(conn, forward: str, crash_at: Crash | None) -> None:
    """Runs the seeds the driver sends, one at a time, until it sends None; tells the driver
    each stage as it starts."""
    _quiet()
    conn.send("ready")  # imports done: the driver's timeout starts with the first seed
    while (seed := conn.recv()) is not None:

        def stage(name: str, seed: int = seed) -> None:
            conn.send(("stage", name))
            if crash_at == (seed, name):
                os.kill(os.getpid(), signal.SIGSEGV)

        conn.send(run_seed(seed, forward, stage))


class _Slot:
    """One worker process and the seed it is running."""

    def __init__(self, ctx, forward: str, crash_at: Crash | None) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, forward, crash_at), daemon=True)
        self.proc.start()
        child.close()
        self.seed: int | None = None
        self.stage = "original"
        self.started = 0.0

    def ready(self) -> _Slot:
        """Waits for the worker's imports; a worker that cannot start stops the run."""
        try:
            if self.conn.poll(300) and self.conn.recv() == "ready":
                return self
        except (EOFError, OSError):
            pass
        self.stop(kill=True)
        raise RuntimeError(f"a worker process did not start ({_death(self.proc.exitcode)})")

    def give(self, seed: int) -> None:
        self.seed, self.stage, self.started = seed, "generate", time.monotonic()
        self.conn.send(seed)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        self.proc.join(10)
        self.conn.close()


STAGES = ("generate", "original", "fold", "folded")


def _crash_verdict(seed: int, stage: str, exitcode: int | None) -> dict[str, Any]:
    """A worker died (a native crash) in ``stage``: onnxruntime's or onnx's own crash on the
    generated model (``ort_crash``: not bnfold's), or in the fold or on the folded model (the
    original ran: bnfold's, ``fold_crash`` / ``bad``)."""
    status = {"fold": "fold_crash", "folded": "bad"}.get(stage, "ort_crash")
    return {"seed": seed, "status": status, "problems": [f"{_death(exitcode)} ({stage})"]}


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker died: {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"worker died: exit code {exitcode}"


def run_parallel(
    seeds: list[int],
    jobs: int,
    forward: str = "exact",
    timeout: float = 300.0,
    progress: Callable[[int], None] | None = None,
    crash_at: Crash | None = None,
) -> list[dict[str, Any]]:
    """Every seed's verdict, from ``jobs`` worker processes; a worker that dies (a native crash)
    marks its seed ``ort_crash``, one past ``timeout`` seconds is killed (``timeout``), and a
    fresh worker takes over."""
    ctx = get_context("spawn")
    todo = collections.deque(seeds)
    results: list[dict[str, Any]] = []
    slots = [_Slot(ctx, forward, crash_at) for _ in range(max(1, min(jobs, len(seeds))))]
    slots = [slot.ready() for slot in slots]
    for slot in slots:
        if todo:
            slot.give(todo.popleft())
    while any(s.seed is not None for s in slots):
        busy = [s for s in slots if s.seed is not None]
        ready = connection.wait([s.conn for s in busy], timeout=1.0)
        for i, slot in enumerate(slots):
            if slot.seed is None:
                continue
            verdict = None
            if slot.conn in ready:
                try:
                    verdict = slot.conn.recv()
                except (EOFError, OSError):
                    slot.stop(kill=True)
                    verdict = _crash_verdict(slot.seed, slot.stage, slot.proc.exitcode)
                    slot = slots[i] = _Slot(ctx, forward, crash_at).ready()
                if isinstance(verdict, tuple):  # ("stage", name): the seed goes on
                    slot.stage = verdict[1]
                    continue
            elif time.monotonic() - slot.started > timeout:
                slot.stop(kill=True)
                verdict = {"seed": slot.seed, "status": "timeout",
                           "problems": [f"timeout: more than {timeout:g} s"]}  # fmt: skip
                slot = slots[i] = _Slot(ctx, forward, crash_at).ready()
            if verdict is None:
                continue
            results.append(verdict)
            slot.seed = None
            if progress:
                progress(len(results))
            if todo:
                slot.give(todo.popleft())
    for slot in slots:
        slot.stop()
    return sorted(results, key=lambda r: r["seed"])


# ======================================================================== the summary


def problem_kind(problem: str) -> str:
    """A problem without its numbers and quoted names (the dedup key)."""
    kind = re.sub(r"'[^']*'", "'…'", problem.splitlines()[0] if problem else problem)
    kind = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", kind)
    return kind[:160]


def summarize(results: list[dict[str, Any]], elapsed: float, **options: Any) -> dict[str, Any]:
    """What the JSON holds: the seeds, outcome counts, failures, problems and coverage."""
    counts = collections.Counter(r["status"] for r in results)
    failures = [{"seed": r["seed"], "status": r["status"], "problems": r.get("problems", [])}
                for r in results if r["status"] not in LEGITIMATE]  # fmt: skip
    kinds: dict[str, dict[str, Any]] = {}
    for f in failures:
        for p in f["problems"]:
            entry = kinds.setdefault(problem_kind(p), {"kind": problem_kind(p), "seeds": 0,
                                                       "example_seed": f["seed"], "example": p})  # fmt: skip
            entry["seeds"] += 1
    folds = collections.Counter(label for r in results for label, _ in r.get("folded", []))
    directions = collections.Counter(d for r in results for _, d in r.get("folded", []))
    ops = collections.Counter(op for r in results for op in r.get("ops", []))
    seeds = [r["seed"] for r in results]
    return {
        "seeds": {"start": min(seeds, default=0), "count": len(seeds)},
        "options": options,
        "counts": {s: counts.get(s, 0) for s in STATUSES},
        "failures": failures,
        "problems": sorted(kinds.values(), key=lambda k: -k["seeds"]),
        "directions": dict(directions.most_common()),
        "folds": dict(folds.most_common()),
        "ops": dict(sorted(ops.items())),
        "models": {
            "fp16": sum(bool(r.get("fp16")) for r in results),
            "ir3": sum(bool(r.get("ir3")) for r in results),
            "opsets": dict(
                sorted(collections.Counter(r["opset"] for r in results if "opset" in r).items())
            ),
            "folding": sum(bool(r.get("folded")) for r in results),
        },
        "environment": {
            "bnfold": bnfold.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "elapsed_seconds": round(elapsed, 1),
    }


def print_summary(summary: dict[str, Any]) -> None:
    console = Console()
    total = summary["seeds"]["count"]
    first = summary["seeds"]["start"]
    console.print(f"{total} random graphs (seeds {first}..{first + total - 1}, forward "
                  f"{summary['options'].get('forward', 'exact')}) in {summary['elapsed_seconds']:.0f} s")  # fmt: skip
    t = Table()
    t.add_column("outcome")
    t.add_column("seeds", justify="right")
    t.add_column("share", justify="right")
    for status, n in summary["counts"].items():
        if n or status in LEGITIMATE + FAILURES:
            t.add_row(status, str(n), f"{100 * n / max(total, 1):.1f}%")
    console.print(t)
    d = summary["directions"]
    console.print(f"folds: {sum(summary['folds'].values())} in {summary['models']['folding']} "
                  "models; " + ", ".join(f"{k} {v}" for k, v in d.items()))  # fmt: skip
    if summary["problems"]:
        p = Table(title="distinct problems")
        p.add_column("seeds", justify="right")
        p.add_column("example seed", justify="right")
        p.add_column("problem", overflow="fold")
        for k in summary["problems"]:
            p.add_row(str(k["seeds"]), str(k["example_seed"]), k["example"])
        console.print(p)
    else:
        console.print("no problems")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs=2, metavar=("START", "COUNT"), required=True)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=RESULTS / "random_graphs.json")
    parser.add_argument("--forward", choices=("exact", "int8-safe", "off"), default="exact")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per seed")
    parser.add_argument("--crash-at", default=None, help=argparse.SUPPRESS)  # SEED:STAGE
    args = parser.parse_args(argv)
    start, count = args.seeds
    if count < 1 or args.jobs < 1:
        parser.error("COUNT and --jobs must be at least 1")
    seeds = list(range(start, start + count))
    started = time.perf_counter()
    step = max(100, count // 10)

    def progress(done: int) -> None:
        if done % step == 0 or done == count:
            print(f"{done}/{count} seeds, {time.perf_counter() - started:.0f} s", file=sys.stderr)

    crash = None
    if args.crash_at:
        seed_text, _, stage_name = args.crash_at.partition(":")
        crash = (int(seed_text), stage_name or "original")
    results = run_parallel(seeds, args.jobs, args.forward, args.timeout, progress, crash)
    summary = summarize(results, time.perf_counter() - started, forward=args.forward,
                        jobs=args.jobs, timeout=args.timeout)  # fmt: skip
    print_summary(summary)
    atomic.write_json(args.json, summary)
    print(f"wrote {args.json}", file=sys.stderr)
    return 1 if any(summary["counts"][s] for s in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())

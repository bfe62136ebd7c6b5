"""Property-based: random models of every fold kind, each folded and checked against what its
drawn parameters say must happen.

Stratified: every (fold, layer, dtype, rank) combination in ``STRATA`` is its own test case, so
each is drawn on every run; hypothesis draws the rest (groups, kernels, strides, dilations,
asymmetric pads, auto_pad, output_padding, transA/transB, alpha/beta, C shapes, bias Adds,
activations, pooling paths, shift-free statistics). BN statistics are drawn by hypothesis
value by value (so a failure shrinks to simple statistics); weights come from a seeded numpy
generator. For each example the expected outcome is computed from the drawn values alone:
which fold (label and direction) or which refusal reason, and that the model computes the
same (onnxruntime, optimisations off; onnx's reference evaluator for float64 (de)convolution).

Profiles (tests/conftest.py): ``ci`` (the default: 20 examples per stratum, about 7 s in all)
and ``long`` (``HYPOTHESIS_PROFILE=long``: 400 per stratum, about 26000 in all).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from onnx_helpers import assert_close, fold_bytes, make_model, node_count, reasons, run, tolerance

TYPES = {np.float32: "float", np.float64: "double", np.float16: "float16"}
DTYPES = [np.float32, np.float64, np.float16]
EPS = float(np.float32(1e-5))  # the epsilon attribute, as a float32


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class BNStats:
    gamma: tuple[float, ...]
    beta: tuple[float, ...]
    mean: tuple[float, ...]
    var: tuple[float, ...]

    def arrays(self, dtype: type) -> dict[str, np.ndarray]:
        return {k: np.array(getattr(self, k), dtype) for k in ("gamma", "beta", "mean", "var")}

    def scale_shift(self, dtype: type) -> tuple[np.ndarray, np.ndarray]:
        """s and t in float64 from the stored (dtype-rounded) parameters."""
        g, b, m, v = (a.astype(np.float64) for a in self.arrays(dtype).values())
        s = g / np.sqrt(v + EPS)
        return s, b - s * m


@st.composite
def bn_stats(draw, c: int, dtype: type, *, sign: str = "any", shift_free: bool | None = None):
    """Per-channel statistics, each value drawn by hypothesis: gamma = +-10^e, var = 10^e
    (extreme: e in [-6, 6] for var, [-3, 3] for gamma; not for fp16), mean and beta in [-2, 2];
    ``shift_free`` (None: drawn) makes mean = beta = 0, so the BN has no shift."""
    extreme = dtype != np.float16 and draw(st.booleans())
    g_exp, v_exp = (3.0, 6.0) if extreme else (1.0, 2.0)
    signs = {"any": st.sampled_from([1.0, -1.0]), "positive": st.just(1.0)}[sign]
    gamma = tuple(
        draw(signs) * 10.0 ** draw(st.floats(-g_exp, g_exp)) for _ in range(c)
    )  # fmt: skip
    var = tuple(10.0 ** draw(st.floats(-v_exp, v_exp)) for _ in range(c))
    if shift_free is None:
        shift_free = draw(st.booleans())
    if shift_free:
        beta = mean = (0.0,) * c
    else:
        beta = tuple(draw(st.floats(-2, 2)) for _ in range(c))
        mean = tuple(draw(st.floats(-2, 2)) for _ in range(c))
    return BNStats(gamma, beta, mean, var)


# ------------------------------------------------------------------------ model building


@dataclass
class Built:
    """A model to fold, its inputs and what must happen."""

    lines: list[str]
    inputs: dict[str, tuple[int, ...]]
    outputs: list[str]
    inits: dict[str, np.ndarray]
    dtype: type
    folds: list[tuple[str, str]] | None  # (fold label, direction) per report entry; None: refused
    reason: str | None = None  # a refusal's text (part of it)
    bn_left: int = 0
    runner: str = "ort"
    seed: int = 0
    feeds: dict[str, np.ndarray] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        """Expect the BN to stay, refused with ``reason`` (part of its text)."""
        self.folds, self.bn_left, self.reason = None, 1, reason

    def model(self) -> onnx.ModelProto:
        ty = TYPES[self.dtype]
        ins = ", ".join(f"{ty}[{','.join(map(str, s))}] {n}" for n, s in self.inputs.items())
        outs = ", ".join(f"{ty} {n}" for n in self.outputs)
        body = "\n          ".join(self.lines)
        return make_model(
            f"""<ir_version: 8, opset_import: ["" : 17]>
            g ({ins}) => ({outs}) {{
              {body}
            }}""",
            self.inits,
        )


def _weights(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return rng.normal(0, 0.5, shape).astype(dtype)


def _attrs(attrs: dict[str, object]) -> str:
    parts = []
    for key, value in attrs.items():
        if isinstance(value, str):
            parts.append(f'{key}="{value}"')
        elif isinstance(value, list | tuple):
            parts.append(f"{key}=[{', '.join(map(str, value))}]")
        else:
            parts.append(f"{key}={value}")
    return f" <{', '.join(parts)}>" if parts else ""


@dataclass(frozen=True)
class ConvSpec:
    """A (de)convolution: everything but its weights (seeded) and the BN after/before it."""

    op: str
    rank: int
    groups: int
    cin_g: int
    cout_g: int
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # begins then ends (asymmetric); ignored unless auto_pad is NOTSET
    auto_pad: str
    output_padding: tuple[int, ...]
    bias: bool
    extra: int  # input size beyond the dilated kernel

    @property
    def cin(self) -> int:
        return self.groups * self.cin_g

    @property
    def cout(self) -> int:
        return self.groups * self.cout_g

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.op == "Conv":
            return (self.cout, self.cin_g, *self.kernel)
        return (self.cin, self.cout_g, *self.kernel)

    @property
    def size(self) -> int:
        return max((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=True)) + (
            self.extra
        )

    @property
    def padded(self) -> bool:
        """Whether zero padding reaches the input (a shifted input would be seen there)."""
        if self.auto_pad == "VALID":
            return False
        if self.auto_pad.startswith("SAME"):
            return any(k > 1 for k in self.kernel)
        return any(self.pads)

    def attributes(self) -> str:
        attrs: dict[str, object] = {"strides": self.strides, "dilations": self.dilations}
        if self.groups > 1:
            attrs["group"] = self.groups
        if self.auto_pad == "NOTSET":
            attrs["pads"] = self.pads
        else:
            attrs["auto_pad"] = self.auto_pad
        if self.op == "ConvTranspose" and any(self.output_padding):
            attrs["output_padding"] = self.output_padding
        return _attrs(attrs)

    def runner(self, dtype: type) -> str:
        return "reference" if dtype == np.float64 else "ort"


@st.composite
def conv_specs(draw, op: str, rank: int, dtype: type, *, groups: int | None = None):
    if groups is None:
        # onnx's reference ConvTranspose (run for float64) ignores group
        groups = (
            1 if op == "ConvTranspose" and dtype == np.float64 else draw(st.sampled_from([1, 2, 3]))
        )
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    begins = [draw(st.integers(0, k - 1)) for k in kernel]
    ends = [draw(st.integers(0, k - 1)) for k in kernel]
    pad_kinds = ["NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]
    if dtype == np.float64 and op == "ConvTranspose":
        pad_kinds = ["NOTSET", "VALID"]
    auto_pad = draw(st.sampled_from(pad_kinds))
    if auto_pad.startswith("SAME"):
        dilations = (1,) * rank  # onnxruntime: "Dilation not supported for SAME_UPPER/LOWER"
    outpad = tuple(draw(st.integers(0, s - 1)) for s in strides)
    return ConvSpec(
        op, rank, groups, draw(st.integers(1, 2)), draw(st.integers(1, 3)), kernel, strides,
        dilations, tuple(begins + ends), auto_pad, outpad, draw(st.booleans()),
        draw(st.integers(0, 2)),
    )  # fmt: skip


def _conv_line(out: str, data: str, spec: ConvSpec, w: str, b: str | None) -> str:
    args = f"{data}, {w}" + (f", {b}" if b else "")
    return f"{out} = {spec.op}{spec.attributes()} ({args})"


# ----------------------------------------------------------------------------- backward


def _conv_parts(
    data, spec: ConvSpec, channels: int, dtype: type
) -> tuple[np.random.Generator, BNStats, dict[str, np.ndarray], str]:
    """The weights' generator, BN statistics over ``channels``, initializers and fold kind."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="weights seed"))
    stats = data.draw(bn_stats(channels, dtype), label="bn")
    inits = {"W": _weights(rng, spec.weight_shape, dtype), **stats.arrays(dtype)}
    if spec.bias:
        inits["B"] = _weights(rng, (spec.cout,), dtype)
    return rng, stats, inits, "conv" if spec.op == "Conv" else "conv_transpose"


def backward_conv(data, op: str, rank: int, dtype: type, spec: ConvSpec | None = None) -> Built:
    spec = spec or data.draw(conv_specs(op, rank, dtype), label="conv")
    rng, _, inits, kind = _conv_parts(data, spec, spec.cout, dtype)
    return Built(
        [_conv_line("z", "x", spec, "W", "B" if spec.bias else None),
         "y = BatchNormalization <epsilon=0.00001> (z, gamma, beta, mean, var)"],
        {"x": (2, spec.cin, *(spec.size,) * rank)}, ["y"], inits, dtype,
        [(f"{kind}+bn", "backward")], runner=spec.runner(dtype), seed=int(rng.integers(2**31)),
    )  # fmt: skip


def backward_gemm(data, dtype: type) -> Built:
    n, k, m = (data.draw(st.integers(1, 6)) for _ in range(3))
    trans_a, trans_b = (
        data.draw(st.integers(0, 1), "transA"),
        data.draw(st.integers(0, 1), "transB"),
    )
    alpha = data.draw(st.sampled_from([1.0, 0.5, -2.0]), label="alpha")
    beta = data.draw(st.sampled_from([1.0, 3.0]), label="beta")
    c_shape = data.draw(st.sampled_from([None, (), (1,), (m,), (1, m), (1, 1)]), label="C")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="weights seed"))
    inits = {"B": _weights(rng, (m, k) if trans_b else (k, m), dtype),
             **data.draw(bn_stats(m, dtype), label="bn").arrays(dtype)}  # fmt: skip
    args = "a, B"
    if c_shape is not None:
        inits["C"] = rng.normal(0, 1, c_shape).astype(dtype)
        args += ", C"
    attrs = _attrs({"transA": trans_a, "transB": trans_b, "alpha": alpha, "beta": beta})
    return Built(
        [f"z = Gemm{attrs} ({args})",
         "y = BatchNormalization <epsilon=0.00001> (z, gamma, beta, mean, var)"],
        {"a": (k, n) if trans_a else (n, k)}, ["y"], inits, dtype, [("gemm+bn", "backward")],
        seed=int(rng.integers(2**31)),
    )  # fmt: skip


def backward_matmul(data, rank: int, dtype: type, bias_add: bool | None = None) -> Built:
    """MatMul [+ bias Add] -> BN. Rank 3: (B, T, K) @ (K, M) transposed to (B, M, T), so the
    BN's channels are the MatMul's features; without a bias Add a shift has nowhere to go."""
    k, m = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    if bias_add is None:
        bias_add = data.draw(st.booleans(), label="bias Add")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="weights seed"))
    stats = data.draw(bn_stats(m, dtype), label="bn")
    inits = {"W": _weights(rng, (k, m), dtype), **stats.arrays(dtype)}
    lines = ["z = MatMul (a, W)"]
    if bias_add:
        inits["c"] = rng.normal(0, 1, (m,)).astype(dtype)
        lines.append("zb = Add (z, c)" if data.draw(st.booleans(), "z+c") else "zb = Add (c, z)")
    top = "zb" if bias_add else "z"
    if rank == 3:
        lines.append(f"t = Transpose <perm=[0,2,1]> ({top})")
        top = "t"
    lines.append(f"y = BatchNormalization <epsilon=0.00001> ({top}, gamma, beta, mean, var)")
    shape = (3, 2, k) if rank == 3 else (data.draw(st.integers(1, 5)), k)
    built = Built(lines, {"a": shape}, ["y"], inits, dtype, [("matmul+bn", "backward")],
                  seed=int(rng.integers(2**31)))  # fmt: skip
    _, shift = stats.scale_shift(dtype)
    if rank == 3 and not bias_add and np.any(shift != 0):
        built.refuse("the MatMul has no bias to take the shift (its output is not rank 2)")
    return built


# ------------------------------------------------------------------------------ forward


def forward_conv(data, op: str, rank: int, dtype: type) -> Built:
    """BN on a graph input -> Conv / ConvTranspose: folds unless the BN has a shift and the
    reader pads (Conv) or is a ConvTranspose."""
    spec = data.draw(conv_specs(op, rank, dtype), label="conv")
    rng, stats, inits, kind = _conv_parts(data, spec, spec.cin, dtype)
    built = Built(
        ["b = BatchNormalization <epsilon=0.00001> (x, gamma, beta, mean, var)",
         _conv_line("y", "b", spec, "W", "B" if spec.bias else None)],
        {"x": (2, spec.cin, *(spec.size,) * rank)}, ["y"], inits, dtype,
        [(f"bn+{kind}", "forward")], runner=spec.runner(dtype), seed=int(rng.integers(2**31)),
    )  # fmt: skip
    _, shift = stats.scale_shift(dtype)
    if np.any(shift != 0) and (op == "ConvTranspose" or spec.padded):
        built.refuse("spreads a constant input" if op == "ConvTranspose" else "pads its input")
    return built


POOLS = {
    "none": None,
    "MaxPool": "MaxPool <kernel_shape=[2,2], strides=[2,2]>",
    "AveragePool": "AveragePool <kernel_shape=[2,2], strides=[1,1]>",
    "GlobalAveragePool": "GlobalAveragePool",
    "GlobalMaxPool": "GlobalMaxPool",
}


def forward_gemm(data, rank: int, dtype: type) -> Built:
    """BN -> [pooling ->] [Flatten ->] Gemm (rank 4: through the pooling and a Flatten)."""
    c, m = data.draw(st.integers(1, 4), label="channels"), data.draw(st.integers(1, 4), "M")
    trans_a = data.draw(st.sampled_from([0, 0, 0, 1]), label="transA") if rank == 2 else 0
    trans_b = data.draw(st.integers(0, 1), label="transB")
    alpha = data.draw(st.sampled_from([1.0, 0.5, -2.0]), label="alpha")
    beta = data.draw(st.sampled_from([1.0, 3.0]), label="beta")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="weights seed"))
    stats = data.draw(bn_stats(c, dtype), label="bn")
    n = data.draw(st.integers(1, 4), label="N")
    lines = ["b = BatchNormalization <epsilon=0.00001> (x, gamma, beta, mean, var)"]
    pool = "none"
    if rank == 4:
        pool = data.draw(st.sampled_from(sorted(POOLS)), label="pool")
        features = {"none": 16, "MaxPool": 4, "AveragePool": 9}.get(pool, 1) * c
        top = "b"
        if POOLS[pool]:
            lines.append(f"p = {POOLS[pool]} (b)")
            top = "p"
        lines.append(f"f = Flatten ({top})")
        top, shape = "f", (n, c, 4, 4)
    else:
        features, top, shape = c, "b", (n, c)
    k = n if trans_a else features  # transA=1: A' = b^T, (C, N) @ B (N, M)
    inits = {"B": _weights(rng, (m, k) if trans_b else (k, m), dtype), **stats.arrays(dtype)}
    c_arg = ""
    if data.draw(st.booleans(), label="C"):
        inits["C"] = rng.normal(0, 1, (m,)).astype(dtype)
        c_arg = ", C"
    attrs = _attrs({"transA": trans_a, "transB": trans_b, "alpha": alpha, "beta": beta})
    lines.append(f"y = Gemm{attrs} ({top}, B{c_arg})")
    runner = "reference" if dtype == np.float64 and rank == 4 else "ort"  # no double pooling
    built = Built(lines, {"x": shape}, ["y"], inits, dtype, [("bn+gemm", "forward")],
                  runner=runner, seed=int(rng.integers(2**31)))  # fmt: skip
    scale, _ = stats.scale_shift(dtype)
    if trans_a:
        built.refuse("has transA=1: the BN channels become its output rows")
    elif pool in ("MaxPool", "GlobalMaxPool") and np.any(scale < 0):
        built.refuse(f"negative scale, which the {pool} before 'Gemm(y)' does not commute with")
    return built


def forward_matmul(data, rank: int, dtype: type) -> Built:
    """BN -> MatMul [+ bias Add]. Rank 3: BN on (B, C, L) transposed to (B, L, C); a shift then
    needs the bias Add (a rank-2 MatMul becomes a Gemm instead)."""
    c, m = data.draw(st.integers(1, 4), label="channels"), data.draw(st.integers(1, 4), "M")
    bias_add = data.draw(st.booleans(), label="bias Add")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="weights seed"))
    stats = data.draw(bn_stats(c, dtype), label="bn")
    inits = {"W": _weights(rng, (c, m), dtype), **stats.arrays(dtype)}
    lines = ["b = BatchNormalization <epsilon=0.00001> (x, gamma, beta, mean, var)"]
    top = "b"
    if rank == 3:
        lines.append("t = Transpose <perm=[0,2,1]> (b)")
        top, shape = "t", (2, c, 3)
    else:
        shape = (data.draw(st.integers(1, 4), label="N"), c)
    if bias_add:
        inits["c"] = rng.normal(0, 1, (m,)).astype(dtype)
        lines += [f"z = MatMul ({top}, W)", "y = Add (z, c)"]
    else:
        lines.append(f"y = MatMul ({top}, W)")
    built = Built(lines, {"x": shape}, ["y"], inits, dtype, [("bn+matmul", "forward")],
                  seed=int(rng.integers(2**31)))  # fmt: skip
    _, shift = stats.scale_shift(dtype)
    if rank == 3 and not bias_add and np.any(shift != 0):
        built.refuse("has no bias to take the shift (its input is not rank 2)")
    return built


# -------------------------------------------------------------------- through activations

ACTS = {
    "none": None,
    "Relu": "Relu (z)",
    "LeakyRelu": "LeakyRelu <alpha=0.2> (z)",
    "PRelu": "PRelu (z, slope)",
    "Sigmoid": "Sigmoid (z)",
}
HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")


def through_activation(data, layer: str, dtype: type) -> Built:
    """Layer -> activation -> BN -> one or two readers of the same kind. The scale goes back
    through a positively homogeneous activation when every s >= 0 (the shift forward), else
    the whole BN forward; either needs a padding-free reader when there is a shift."""
    c = data.draw(st.integers(1, 4), label="channels")
    act = data.draw(st.sampled_from(sorted(ACTS)), label="activation")
    readers = data.draw(st.integers(1, 2), label="readers")
    sign = data.draw(st.sampled_from(["any", "positive"]), label="gamma signs")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="weights seed"))
    stats = data.draw(bn_stats(c, dtype, sign=sign), label="bn")
    inits = stats.arrays(dtype)
    if layer == "Conv":
        inits["W0"] = _weights(rng, (c, 2, 3, 3), dtype)
        lines, shape = ["z = Conv <pads=[1,1,1,1]> (x, W0)"], (2, 2, 5, 5)
    else:
        inits["W0"] = _weights(rng, (c, 3), dtype)
        lines, shape = ["z = Gemm <transB=1> (x, W0)"], (2, 3)
    if act == "PRelu":
        inits["slope"] = rng.uniform(0.05, 0.5, (c, 1, 1) if layer == "Conv" else (c,)).astype(
            dtype
        )
    lines.append(f"a = {ACTS[act]}" if ACTS[act] else "a = Identity (z)")
    lines.append("b = BatchNormalization <epsilon=0.00001> (a, gamma, beta, mean, var)")
    padded = False
    outputs = []
    for i in range(readers):
        if layer == "Conv":
            spec = data.draw(conv_specs("Conv", 2, dtype, groups=1), label=f"reader {i}")
            spec = ConvSpec(**{**spec.__dict__, "cin_g": c})
            padded |= spec.padded
            inits[f"W{i + 1}"] = _weights(rng, spec.weight_shape, dtype)
            lines.append(_conv_line(f"y{i}", "b", spec, f"W{i + 1}", None))
        else:
            inits[f"W{i + 1}"] = _weights(rng, (c, 3), dtype)
            inits[f"C{i + 1}"] = rng.normal(0, 1, 3).astype(dtype)
            lines.append(f"y{i} = Gemm (b, W{i + 1}, C{i + 1})")
        outputs.append(f"y{i}")
    scale, shift = stats.scale_shift(dtype)
    has_shift = bool(np.any(shift != 0))
    kind = layer.lower()
    built = Built(lines, {"x": shape}, outputs, inits, dtype, None,
                  runner="reference" if dtype == np.float64 and layer == "Conv" else "ort",
                  seed=int(rng.integers(2**31)))  # fmt: skip
    if act == "none":
        built.folds = [(f"{kind}+bn", "backward")]
    elif has_shift and padded:
        built.refuse("pads its input")
    elif act in HOMOGENEOUS and not np.any(scale < 0):
        tail = f"+{kind}" if has_shift else ""
        built.folds = [(f"{kind}+{act.lower()}+bn{tail}", "through the activation")]
    else:
        built.folds = [(f"bn+{kind}", "forward")]
    return built


# ------------------------------------------------------------------------ merge and affine


def merge(data, dtype: type) -> Built:
    """Graph input -> BN -> BN / Mul / Add -> graph output: nothing folds the chain into a
    layer, so it becomes one BN."""
    c = data.draw(st.integers(1, 4), label="channels")
    second = data.draw(st.sampled_from(["BatchNormalization", "Mul", "Add"]), label="second")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="weights seed"))
    inits = data.draw(bn_stats(c, dtype), label="bn").arrays(dtype)
    if second == "BatchNormalization":
        inits.update(
            {f"{k}2": v for k, v in data.draw(bn_stats(c, dtype), "bn2").arrays(dtype).items()}
        )
        line = "y = BatchNormalization <epsilon=0.00001> (b, gamma2, beta2, mean2, var2)"
    else:
        values = [data.draw(st.floats(-3, 3)) for _ in range(c)]
        inits["k"] = np.array(values, dtype).reshape(1, c, 1, 1)
        line = f"y = {second} (b, k)"
    suffix = {"BatchNormalization": "bn", "Mul": "mul", "Add": "add"}[second]
    return Built(
        ["b = BatchNormalization <epsilon=0.00001> (x, gamma, beta, mean, var)", line],
        {"x": (2, c, 3, 3)}, ["y"], inits, dtype, [(f"bn+{suffix}", "merge")], bn_left=1,
        seed=int(rng.integers(2**31)),
    )  # fmt: skip


def affine(data, dtype: type) -> Built:
    """Conv -> 1 to 3 Mul/Add/Sub/Div by constants (per channel or scalar, either operand,
    no BN): all fold backward into the Conv, one map."""
    c = data.draw(st.integers(1, 4), label="channels")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="weights seed"))
    inits = {"W": _weights(rng, (c, 2, 3, 3), dtype)}
    lines, top, folds = ["z0 = Conv (x, W)"], "z0", []
    count_ops = data.draw(st.integers(1, 3), label="ops")
    for i in range(count_ops):
        op = data.draw(st.sampled_from(["Mul", "Add", "Sub", "Div"]), label=f"op {i}")
        per_channel = data.draw(st.booleans(), label=f"per channel {i}")
        values = [
            data.draw(st.floats(0.25, 4) | st.floats(-4, -0.25))
            for _ in range(c if per_channel else 1)
        ]
        inits[f"k{i}"] = np.array(values, dtype).reshape((1, c, 1, 1) if per_channel else ())
        swap = op != "Div" and data.draw(st.booleans(), label=f"constant first {i}")
        args = f"k{i}, {top}" if swap else f"{top}, k{i}"
        top = "y" if i == count_ops - 1 else f"z{i + 1}"
        lines.append(f"{top} = {op} ({args})")
        folds.append((f"conv+{op.lower()}", "backward"))
    runner = "reference" if dtype == np.float64 else "ort"  # no double Conv in onnxruntime
    return Built(lines, {"x": (2, 2, 5, 5)}, ["y"], inits, dtype, folds, runner=runner,
                 seed=int(rng.integers(2**31)))  # fmt: skip


# ----------------------------------------------------------------------------- checking


def check(built: Built) -> None:
    """Fold ``built``'s model; the outcome is the expected one and the outputs are the same."""
    model = built.model()
    rng = np.random.default_rng(built.seed)
    feeds = {n: rng.normal(0, 1, s).astype(built.dtype) for n, s in built.inputs.items()}
    data = model.SerializeToString()
    folded, result = fold_bytes(data)
    report, why = result.report, reasons(result)
    for ref, got in zip(
        run(model, feeds, built.runner), run(folded, feeds, built.runner), strict=True
    ):
        assert got.dtype == ref.dtype
        assert_close(ref, got, *tolerance(built.dtype))
    if built.dtype == np.float16 and "would not be exact" in why:
        return  # an fp16 range refusal: allowed (and the outputs were compared above)
    if built.folds is None:
        assert not report.folded, report.summary()
        assert built.reason is not None and built.reason in why, why
        assert report.bn_after == report.bn_before
        return
    assert [(f.fold, f.direction) for f in report.folded] == built.folds, why
    assert report.bn_after == built.bn_left, why
    assert node_count(onnx.load_from_string(folded)) < node_count(model)
    again, again_result = fold_bytes(folded)
    assert again == folded and not again_result.report.folded
    twice, _ = fold_bytes(data)
    assert twice == folded


# ------------------------------------------------------------------------------- strata


def _name(dtype: type) -> str:
    return np.dtype(dtype).name


STRATA = [
    *(
        ("backward", op, d, r)
        for op in ("Conv", "ConvTranspose")
        for d in DTYPES
        for r in (1, 2, 3)
    ),
    *(("backward", "Gemm", d, 2) for d in DTYPES),
    *(("backward", "MatMul", d, r) for d in DTYPES for r in (2, 3)),
    *(("forward", "Conv", d, r) for d in DTYPES for r in (1, 2, 3)),
    *(("forward", "ConvTranspose", d, 2) for d in DTYPES),
    *(("forward", "Gemm", d, r) for d in DTYPES for r in (2, 4)),
    *(("forward", "MatMul", d, r) for d in DTYPES for r in (2, 3)),
    *(("activation", layer, d, r) for layer, r in (("Conv", 4), ("Gemm", 2)) for d in DTYPES),
    *(("merge", "BatchNormalization", d, 4) for d in DTYPES),
    *(("affine", "Conv", d, 4) for d in DTYPES),
]


def build(data, fold: str, layer: str, dtype: type, rank: int) -> Built:
    if fold == "backward":
        if layer in ("Conv", "ConvTranspose"):
            return backward_conv(data, layer, rank, dtype)
        return backward_gemm(data, dtype) if layer == "Gemm" else backward_matmul(data, rank, dtype)
    if fold == "forward":
        if layer in ("Conv", "ConvTranspose"):
            return forward_conv(data, layer, rank, dtype)
        return (
            forward_gemm(data, rank, dtype)
            if layer == "Gemm"
            else forward_matmul(data, rank, dtype)
        )
    if fold == "activation":
        return through_activation(data, layer, dtype)
    return merge(data, dtype) if fold == "merge" else affine(data, dtype)


@pytest.mark.parametrize(
    ("fold", "layer", "dtype", "rank"),
    STRATA,
    ids=[f"{f}-{lay}-{_name(d)}-r{r}" for f, lay, d, r in STRATA],
)
@given(data=st.data())
def test_folds(fold, layer, dtype, rank, data):
    check(build(data, fold, layer, dtype, rank))


COMMON_CONV = ConvSpec(
    "Conv", 2, 1, 3, 2, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "NOTSET", (0, 0), True, 4
)  # the case real models have most: fp32 Conv2d, group 1, 3x3, pads 1, stride 1, a bias


@given(spec=conv_specs("Conv", 2, np.float32, groups=1), data=st.data())
@example(spec=COMMON_CONV, data=None)
def test_fp32_conv2d_group1(spec, data):
    """The most common case gets its own examples, with the pinned one always among them."""
    if data is None:  # the pinned example: typical statistics
        stats = BNStats((1.5, -0.75), (0.1, -0.2), (0.3, 0.05), (0.5, 2.0))
        built = _fixed_backward_conv(spec, stats)
    else:
        built = backward_conv(data, "Conv", 2, np.float32, spec)
    check(built)


def _fixed_backward_conv(spec: ConvSpec, stats: BNStats) -> Built:
    rng = np.random.default_rng(0)
    inits = {"W": _weights(rng, spec.weight_shape, np.float32), **stats.arrays(np.float32),
             "B": _weights(rng, (spec.cout,), np.float32)}  # fmt: skip
    return Built(
        [_conv_line("z", "x", spec, "W", "B"),
         "y = BatchNormalization <epsilon=0.00001> (z, gamma, beta, mean, var)"],
        {"x": (2, spec.cin, spec.size, spec.size)}, ["y"], inits, np.float32,
        [("conv+bn", "backward")], seed=1,
    )  # fmt: skip

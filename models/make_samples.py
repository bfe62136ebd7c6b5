"""Regenerate the sample models in this folder, deterministically (seeded numpy, no downloads).

    python models/make_samples.py [--out models]

Each model has random, non-identity BatchNormalization statistics. See models/README.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261124


class Builder:
    """A tiny graph builder: initializers from seeded numpy, nodes by name."""

    def __init__(self, seed: int, dtype: np.dtype = np.float32) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        w = self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return self.init(name, w.astype(self.dtype))

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> list[str]:
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs

    def bn_params(self, prefix: str, c: int, positive: bool = False) -> list[str]:
        r = self.rng
        gamma = r.uniform(0.5, 2.0, c).astype(self.dtype)
        signs = np.ones(c) if positive else r.choice([-1, 1], c)
        return [
            self.init(f"{prefix}.weight", gamma * signs.astype(self.dtype)),
            self.init(f"{prefix}.bias", r.uniform(-1, 1, c).astype(self.dtype)),
            self.init(f"{prefix}.running_mean", r.uniform(-1, 1, c).astype(self.dtype)),
            self.init(f"{prefix}.running_var", r.uniform(0.2, 3.0, c).astype(self.dtype)),
        ]

    def bn(self, x: str, prefix: str, c: int, positive: bool = False, **attrs) -> str:
        params = self.bn_params(prefix, c, positive)
        return self.node("BatchNormalization", [x, *params], prefix, epsilon=1e-5, **attrs)[0]

    def conv(
        self,
        x: str,
        prefix: str,
        cin: int,
        cout: int,
        k: int,
        group: int = 1,
        bias: bool = True,
        **attrs,
    ) -> str:
        w = self.weight(f"{prefix}.weight", (cout, cin // group, k, k), cin // group * k * k)
        inputs = [x, w]
        if bias:
            inputs.append(
                self.init(f"{prefix}.bias", self.rng.uniform(-0.5, 0.5, cout).astype(self.dtype))
            )
        return self.node("Conv", inputs, prefix, group=group, pads=[k // 2] * 4, **attrs)[0]

    def model(
        self, inputs: list, outputs: list, opset: int = 17, ir_version: int | None = None, **kw
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "sample", inputs, outputs, self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", opset)],
            producer_name="bnfold-samples",
            **kw,
        )
        if ir_version is not None:
            model.ir_version = ir_version
        return model


def vi(name: str, shape: list, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def cnn() -> onnx.ModelProto:
    """Conv->BN->Relu blocks, a depthwise conv, a bias-free conv, Gemm->BN head."""
    b = Builder(SEED)
    x = b.conv("input", "conv1", 3, 16, 3)
    x = b.node("Relu", [b.bn(x, "bn1", 16)], "relu1")[0]
    x = b.conv(x, "dw", 16, 16, 3, group=16, bias=False)
    x = b.node("Relu", [b.bn(x, "bn_dw", 16)], "relu2")[0]
    x = b.conv(x, "pw", 16, 32, 1, bias=False)
    x = b.node("Relu", [b.bn(x, "bn_pw", 32)], "relu3")[0]
    x = b.node("GlobalAveragePool", [x], "gap")[0]
    x = b.node("Flatten", [x], "flatten")[0]
    w = b.weight("fc.weight", (10, 32), 32)
    x = b.node("Gemm", [x, w, b.init("fc.bias", np.zeros(10, np.float32))], "fc", transB=1)[0]
    y = b.bn(x, "bn_fc", 10)
    return b.model([vi("input", ["batch", 3, 16, 16])], [vi(y, ["batch", 10])])


def decoder() -> onnx.ModelProto:
    """Grouped ConvTranspose -> BN -> Relu, ConvTranspose without bias -> BN."""
    b = Builder(SEED + 1)
    w = b.weight("up1.weight", (16, 4, 3, 3), 16 * 9)  # (Cin, Cout/group, k, k), group 2 -> Cout 8
    x = b.node(
        "ConvTranspose",
        ["input", w, b.init("up1.bias", b.rng.uniform(-1, 1, 8).astype(np.float32))],
        "up1",
        group=2,
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        output_padding=[1, 1],
    )[0]
    x = b.node("Relu", [b.bn(x, "bn_up1", 8)], "relu1")[0]
    w = b.weight("up2.weight", (8, 3, 4, 4), 8 * 16)
    x = b.node("ConvTranspose", [x, w], "up2", strides=[2, 2], pads=[1, 1, 1, 1])[0]
    y = b.bn(x, "bn_up2", 3)
    return b.model([vi("input", ["batch", 16, 4, 4])], [vi(y, ["batch", 3, 16, 16])])


def mlp() -> onnx.ModelProto:
    """MatMul->Add->BN->Relu, MatMul->BN (becomes Gemm), Gemm(alpha, beta, transB=0)->BN."""
    b = Builder(SEED + 2)
    x = b.node("MatMul", ["input", b.weight("fc1.weight", (64, 32), 64)], "fc1")[0]
    x = b.node(
        "Add", [x, b.init("fc1.bias", b.rng.uniform(-1, 1, 32).astype(np.float32))], "fc1_bias"
    )[0]
    x = b.node("Relu", [b.bn(x, "bn1", 32)], "relu1")[0]
    x = b.node("MatMul", [x, b.weight("fc2.weight", (32, 16), 32)], "fc2")[0]
    x = b.node("Relu", [b.bn(x, "bn2", 16)], "relu2")[0]
    x = b.node(
        "Gemm",
        [x, b.weight("fc3.weight", (16, 8), 16), b.init("fc3.bias", np.ones(8, np.float32))],
        "fc3",
        alpha=0.5,
        beta=2.0,
    )[0]
    y = b.bn(x, "bn3", 8)
    return b.model([vi("input", ["batch", 64])], [vi(y, ["batch", 8])])


def paddle_style() -> onnx.ModelProto:
    """Conv (no bias) -> Add(per-channel constant (1,C,1,1)) -> BN, as paddle2onnx writes it."""
    b = Builder(SEED + 3)
    x = b.conv("input", "conv", 3, 8, 3, bias=False)
    x = b.node(
        "Add",
        [x, b.init("conv.bias_add", b.rng.uniform(-1, 1, (1, 8, 1, 1)).astype(np.float32))],
        "add",
    )[0]
    y = b.bn(x, "bn", 8)
    return b.model([vi("input", [1, 3, 8, 8])], [vi(y, [1, 8, 8, 8])], opset=11)


def legacy_constants() -> onnx.ModelProto:
    """BN parameters as Constant nodes and through Identity (the legacy torch exporter)."""
    b = Builder(SEED + 4)
    x = b.conv("input", "conv", 3, 8, 3)
    gamma, beta, mean, var = b.bn_params("bn", 8)
    consts = {}
    for name in (gamma, beta):
        tensor = next(t for t in b.inits if t.name == name)
        b.inits.remove(tensor)
        consts[name] = b.node("Constant", [], f"const_{name}", value=tensor)[0]
    mean_id = b.node("Identity", [mean], "identity_mean")[0]
    var_id = b.node("Identity", [var], "identity_var")[0]
    y = b.node("BatchNormalization", [x, consts[gamma], consts[beta], mean_id, var_id], "bn")[0]
    return b.model([vi("input", [1, 3, 8, 8])], [vi(y, [1, 8, 8, 8])], opset=9)


def ir3_initializer_inputs() -> onnx.ModelProto:
    """IR 3, opset 7: every initializer is also a graph input (old exporters)."""
    b = Builder(SEED + 5)
    x = b.conv("input", "conv", 3, 8, 3)
    y = b.bn(x, "bn", 8)
    inputs = [vi("input", [1, 3, 8, 8])] + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in b.inits
    ]
    return b.model(inputs, [vi(y, [1, 8, 8, 8])], opset=7, ir_version=3)


def fp16() -> onnx.ModelProto:
    """A float16 Conv -> BN -> Relu -> Conv -> BN model."""
    b = Builder(SEED + 6, np.float16)
    x = b.conv("input", "conv1", 3, 8, 3)
    x = b.node("Relu", [b.bn(x, "bn1", 8)], "relu")[0]
    x = b.conv(x, "conv2", 8, 8, 3, bias=False)
    y = b.bn(x, "bn2", 8)
    return b.model(
        [vi("input", [1, 3, 8, 8], TensorProto.FLOAT16)], [vi(y, [1, 8, 8, 8], TensorProto.FLOAT16)]
    )


def subgraph_if() -> onnx.ModelProto:
    """An If whose branches each hold Conv -> BN (weights from the outer scope)."""
    b = Builder(SEED + 7)
    branches = []
    for tag in ("then", "else"):
        inner = Builder(SEED + 8 + len(branches))
        w = inner.weight(f"{tag}.conv.weight", (4, 3, 3, 3), 27)
        x = inner.node("Conv", ["input", w], f"{tag}_conv", pads=[1, 1, 1, 1])[0]
        y = inner.bn(x, f"{tag}_bn", 4)
        branches.append(
            helper.make_graph(inner.nodes, f"{tag}_branch", [], [vi(y, [1, 4, 8, 8])], inner.inits)
        )
    y = b.node("If", ["cond"], "if", then_branch=branches[0], else_branch=branches[1])[0]
    return b.model(
        [vi("input", [1, 3, 8, 8]), vi("cond", [], TensorProto.BOOL)], [vi(y, [1, 4, 8, 8])]
    )


def refused() -> onnx.ModelProto:
    """BNs that must not be folded: training mode, a shared producer output, a graph-input input."""
    b = Builder(SEED + 9)
    x = b.conv("input", "conv1", 3, 8, 3)
    y1 = b.node(
        "BatchNormalization", [x, *b.bn_params("bn_train", 8)], "bn_train", n_out=3, training_mode=1
    )[0]
    x2 = b.conv("input", "conv2", 3, 8, 3)
    y2 = b.bn(x2, "bn_shared", 8)
    y3 = b.node("Relu", [x2], "relu_side")[0]  # conv2's output has a second consumer
    y4 = b.bn("input", "bn_on_input", 3)
    return b.model(
        [vi("input", [1, 3, 8, 8])],
        [vi(y1, [1, 8, 8, 8]), vi(y2, [1, 8, 8, 8]), vi(y3, [1, 8, 8, 8]), vi(y4, [1, 3, 8, 8])],
    )


def forward() -> onnx.ModelProto:
    """BNs no backward fold reaches: an input BN before a 1x1 Conv, Conv -> Relu -> BN -> 1x1
    Conv, BN -> MaxPool -> Flatten -> Gemm, and Relu -> BN -> padded 3x3 Conv (which stays)."""
    b = Builder(SEED + 11)
    x = b.bn("input", "bn_input", 3)  # on the graph input: folds forward into conv1
    x = b.conv(x, "conv1", 3, 16, 1)
    x = b.conv(b.node("Relu", [x], "relu1")[0], "conv2", 16, 16, 3)
    x = b.bn(b.node("Relu", [x], "relu2")[0], "bn_after_relu", 16, positive=True)
    x = b.conv(x, "conv3", 16, 16, 1)  # scale back into conv2, shift into conv3's bias
    x = b.bn(b.node("Relu", [x], "relu3")[0], "bn_before_padded", 16)
    x = b.conv(x, "conv4", 16, 8, 3)  # pads 1: the shift cannot fold into it
    x = b.bn(b.node("Relu", [x], "relu4")[0], "bn_head", 8, positive=True)
    x = b.node("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])[0]
    x = b.node("Flatten", [x], "flatten")[0]
    w = b.weight("fc.weight", (10, 8 * 4 * 4), 8 * 16)
    y = b.node("Gemm", [x, w, b.init("fc.bias", np.zeros(10, np.float32))], "fc", transB=1)[0]
    return b.model([vi("input", ["batch", 3, 8, 8])], [vi(y, ["batch", 10])])


def local_function() -> onnx.ModelProto:
    """A model-local function ConvBn (parameters as Constant nodes inside it), called twice."""
    rng = np.random.default_rng(SEED + 10)

    def const(name: str, array: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(array.astype(np.float32), name)
        )

    c = 4
    body = [
        const("w", rng.standard_normal((c, c, 3, 3)) * 0.3),
        const("gamma", rng.uniform(0.5, 2, c)),
        const("beta", rng.uniform(-1, 1, c)),
        const("mean", rng.uniform(-1, 1, c)),
        const("var", rng.uniform(0.2, 3, c)),
        helper.make_node("Conv", ["X", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["Y"]),
    ]
    function = helper.make_function(
        "bnfold.samples", "ConvBn", ["X"], ["Y"], body, [helper.make_opsetid("", 17)]
    )
    nodes = [
        helper.make_node("ConvBn", ["input"], ["h"], domain="bnfold.samples", name="block1"),
        helper.make_node("ConvBn", ["h"], ["output"], domain="bnfold.samples", name="block2"),
    ]
    graph = helper.make_graph(
        nodes, "sample", [vi("input", [1, c, 8, 8])], [vi("output", [1, c, 8, 8])]
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("bnfold.samples", 1)],
        functions=[function],
        producer_name="bnfold-samples",
    )


SAMPLES: dict[str, Callable[[], onnx.ModelProto]] = {
    "cnn": cnn,
    "decoder": decoder,
    "mlp": mlp,
    "paddle_style": paddle_style,
    "legacy_constants": legacy_constants,
    "ir3_initializer_inputs": ir3_initializer_inputs,
    "fp16": fp16,
    "subgraph_if": subgraph_if,
    "local_function": local_function,
    "refused": refused,
    "forward": forward,
}


def write_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in SAMPLES.items():
        model = make()
        path = out / f"{name}.onnx"
        path.write_bytes(model.SerializeToString(deterministic=True))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    for path in write_all(parser.parse_args().out):
        print(f"{path}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()

"""Deterministic Conv+BatchNormalization models for the fold benchmarks (numpy + onnx-ir, no downloads).

Three models, every BatchNormalization foldable into the Conv before it (Conv only, so every
peer tool can fold all of them and the comparison is like for like):

* ``resnet50``: the ResNet-50 v1 layout (stem, bottlenecks 3-4-6-3, projection shortcuts,
  53 Conv+BN, fc as Gemm), ~102 MB of float32, one .onnx file.
* ``wide``: a stem Conv then 16 wide 3x3 Conv+BN+Relu (1024 channels, 38 MB of weight each) at 7x7, global
  pooling and a Gemm head; ~600 MB of float32, one .onnx file.
* ``huge``: a chain of 2048-channel 3x3 Conv+BN+Relu at 4x4; ~2.2 GB of float32 saved with
  external data (``huge.onnx`` + ``huge.onnx.data``). Its weights are ``ir.LazyTensor`` s that
  are generated when written, so the model is never held in memory whole.

Weights come from ``numpy.random.default_rng(seed)`` per tensor, so the files are identical
from run to run.

    python benchmarks/make_models.py [--models resnet50,wide,huge] [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir

MODELS = ("resnet50", "wide", "huge")
OPSET = 17
FLOAT = ir.DataType.FLOAT


class GraphBuilder:
    """Nodes and seeded initializers of one graph, built with onnx-ir."""

    def __init__(self, seed: int, *, lazy_bytes: int | None = None) -> None:
        self.seed = seed
        self.lazy_bytes = lazy_bytes  # weights above this are generated at write time
        self.nodes: list[ir.Node] = []
        self.initializers: list[ir.Value] = []
        self.n = 0
        self.bn_count = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def init(
        self, prefix: str, shape: tuple[int, ...], make: Callable[[np.random.Generator], np.ndarray]
    ) -> ir.Value:
        name = self.name(prefix)
        rng_seed = [self.seed, self.n]  # one generator per tensor: order does not matter
        nbytes = int(np.prod(shape)) * 4
        if self.lazy_bytes is not None and nbytes > self.lazy_bytes:

            def compute(rng_seed=rng_seed, make=make) -> ir.Tensor:
                return ir.tensor(
                    make(np.random.default_rng(rng_seed)).astype(np.float32, copy=False)
                )

            tensor: ir.TensorProtocol = ir.LazyTensor(
                compute, dtype=FLOAT, shape=ir.Shape(shape), name=name
            )
        else:
            array = make(np.random.default_rng(rng_seed)).astype(np.float32, copy=False)
            assert array.shape == shape, (array.shape, shape)
            tensor = ir.tensor(array, name=name)
        value = ir.Value(
            name=name, shape=ir.Shape(shape), type=ir.TensorType(FLOAT), const_value=tensor
        )
        self.initializers.append(value)
        return value

    def node(self, op: str, inputs: list[ir.Value | None], **attrs) -> ir.Value:
        out = self.name(op.lower())
        node = ir.Node(
            "",
            op,
            inputs,
            attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()],
            name=f"{out}_node",
        )
        node.outputs[0].name = out
        self.nodes.append(node)
        return node.outputs[0]

    def conv(
        self, x: ir.Value, cin: int, cout: int, k: int, stride: int = 1, bias: bool = False
    ) -> ir.Value:
        std = float(np.sqrt(2.0 / (cin * k * k)))
        shape = (cout, cin, k, k)
        w = self.init(
            "w",
            shape,
            lambda r, s=shape, std=std: r.standard_normal(s, dtype=np.float32) * np.float32(std),
        )
        b = self.init("b", (cout,), lambda r, c=cout: r.normal(0, 0.05, c)) if bias else None
        pad = k // 2
        return self.node(
            "Conv",
            [x, w] + ([b] if b is not None else []),
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
        )

    def bn(self, x: ir.Value, c: int) -> ir.Value:
        self.bn_count += 1
        gamma = self.init("gamma", (c,), lambda r: r.uniform(0.5, 1.5, c))
        beta = self.init("beta", (c,), lambda r: r.normal(0, 0.1, c))
        mean = self.init("mean", (c,), lambda r: r.normal(0, 0.1, c))
        var = self.init("var", (c,), lambda r: r.uniform(0.5, 1.5, c))
        return self.node("BatchNormalization", [x, gamma, beta, mean, var], epsilon=1e-5)

    def conv_bn(
        self, x: ir.Value, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True
    ) -> ir.Value:
        y = self.bn(self.conv(x, cin, cout, k, stride), cout)
        return self.node("Relu", [y]) if relu else y

    def model(self, name: str, x: ir.Value, y: ir.Value) -> ir.Model:
        graph = ir.Graph(
            [x],
            [y],
            nodes=self.nodes,
            initializers=self.initializers,
            opset_imports={"": OPSET},
            name=name,
        )
        return ir.Model(graph, ir_version=8, producer_name="bnfold-benchmarks")


def _input(shape: tuple[int, ...]) -> ir.Value:
    return ir.Value(name="input", shape=ir.Shape(shape), type=ir.TensorType(FLOAT))


def _head(b: GraphBuilder, x: ir.Value, c: int, classes: int) -> ir.Value:
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    w = b.init(
        "fc_w",
        (classes, c),
        lambda r: r.standard_normal((classes, c), dtype=np.float32) * np.float32(1 / np.sqrt(c)),
    )
    bias = b.init("fc_b", (classes,), lambda r: r.normal(0, 0.01, classes))
    y = b.node("Gemm", [x, w, bias], transB=1)
    y.name = "output"
    y.type, y.shape = ir.TensorType(FLOAT), ir.Shape((1, classes))
    return y


def build_resnet50() -> tuple[ir.Model, int]:
    """ResNet-50 v1: 53 Conv+BN, ~25.5 M parameters."""
    b = GraphBuilder(seed=50)
    x = _input((1, 3, 224, 224))
    y = b.conv_bn(x, 3, 64, 7, stride=2)
    y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            out = width * 4
            h = b.conv_bn(y, cin, width, 1)
            h = b.conv_bn(h, width, width, 3, stride=stride)
            h = b.conv_bn(h, width, out, 1, relu=False)
            short = b.conv_bn(y, cin, out, 1, stride=stride, relu=False) if block == 0 else y
            y = b.node("Relu", [b.node("Add", [h, short])])
            cin = out
    return b.model("resnet50_like", x, _head(b, y, cin, 1000)), b.bn_count


def build_wide() -> tuple[ir.Model, int]:
    """16 wide 3x3 Conv+BN+Relu at 7x7 (~600 MB)."""
    b = GraphBuilder(seed=600)
    x = _input((1, 64, 7, 7))
    y = b.conv_bn(x, 64, 1024, 3)
    for _ in range(16):
        y = b.conv_bn(y, 1024, 1024, 3)
    return b.model("wide", x, _head(b, y, 1024, 1000)), b.bn_count


def build_huge(layers: int = 15) -> tuple[ir.Model, int]:
    """A chain of 2048-channel 3x3 Conv+BN+Relu (151 MB of weight each), weights generated lazily."""
    b = GraphBuilder(seed=2048, lazy_bytes=1 << 20)
    c = 2048
    x = _input((1, c, 4, 4))
    y = x
    for _ in range(layers):
        y = b.conv_bn(y, c, c, 3)
    return b.model("huge", x, _head(b, y, c, 1000)), b.bn_count


BUILDERS = {"resnet50": build_resnet50, "wide": build_wide, "huge": build_huge}
EXTERNAL = {"huge"}


def model_path(out: Path, name: str) -> Path:
    return out / f"{name}.onnx"


def make_model(name: str, out: Path, *, force: bool = False) -> dict:
    """Write model ``name`` under ``out`` (unless a complete copy is there); return its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    path = model_path(out, name)
    manifest = out / f"{name}.json"
    if not force and path.exists() and manifest.exists():
        info = json.loads(manifest.read_text())
        files = [path] + ([Path(str(path) + ".data")] if name in EXTERNAL else [])
        if all(f.exists() for f in files) and sum(f.stat().st_size for f in files) == info["bytes"]:
            return info
    start = time.perf_counter()
    model, bns = BUILDERS[name]()
    params = sum(v.const_value.size for v in model.graph.initializers.values())
    if name in EXTERNAL:
        data = path.name + ".data"
        ir.save(model, path, external_data=data, size_threshold_bytes=1024)
        files = [path, out / data]
    else:
        ir.save(model, path)
        files = [path]
    info = {
        "name": name,
        "path": str(path),
        "external_data": name in EXTERNAL,
        "bytes": sum(f.stat().st_size for f in files),
        "parameters": int(params),
        "bn": bns,
        "input_shape": [int(d) for d in model.graph.inputs[0].shape],
        "seconds": round(time.perf_counter() - start, 2),
    }
    manifest.write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/bnfold-peers/models"))
    parser.add_argument("--force", action="store_true", help="rewrite models that exist")
    args = parser.parse_args(argv)
    for name in args.models.split(","):
        if name not in BUILDERS:
            parser.error(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
        info = make_model(name, args.out, force=args.force)
        print(f"{name}: {info['bytes'] / 1e6:.0f} MB, {info['bn']} BN, {info['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure what an offline BN fold buys in onnxruntime on four model families.

Builds each model on the fly (numpy + onnx.helper, seeded, no downloads), folds it with
``bnfold.fold``, proves the fold with ``bnfold.verify.check_models``, then times both with
``bnfold.bench.bench_models`` at opt-levels disable and all. Writes
benchmarks/results/bench_ort.json (and <name>.png charts with --plot) and prints a table.

    python benchmarks/bench_ort.py [--rounds 15] [--iters 5] [--threads 1] [--plot]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

import bnfold
from bnfold.bench import BenchOptions, bench_models, write_plot
from bnfold.verify import CheckOptions, check_models

RESULTS = Path(__file__).parent / "results"


class Builder:
    """Accumulates nodes and seeded initializers of one graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def _name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def init(self, prefix: str, arr: np.ndarray) -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self._name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [
            self.init("gamma", r.uniform(0.5, 1.5, c)),
            self.init("beta", r.normal(0, 0.1, c)),
            self.init("mean", r.normal(0, 0.1, c)),
            self.init("var", r.uniform(0.5, 1.5, c)),
        ]
        return self.node("BatchNormalization", [x, *params], epsilon=1e-5)

    def conv_bn(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        group: int = 1,
        relu: bool = True,
    ) -> str:
        fan_in = cin // group * k * k
        w = self.init("w", self.rng.normal(0, np.sqrt(1.0 / fan_in), (cout, cin // group, k, k)))
        y = self.node(
            "Conv",
            [x, w],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[k // 2] * 4,
            group=group,
        )
        y = self.bn(y, cout)
        return self.node("Relu", [y]) if relu else y

    def model(self, inputs, output: str, out_shape) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            inputs,
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m


def resnet50_like(hw: int) -> onnx.ModelProto:
    """ResNet-50 topology (3-4-6-3 bottlenecks, bias-free Conv + BN, ~25.5M params)."""
    b = Builder(50)
    x = b.conv_bn("x", 3, 64, 7, stride=2)
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
        for i in range(blocks):
            stride = 2 if i == 0 and stage > 0 else 1
            y = b.conv_bn(x, cin, width, 1)
            y = b.conv_bn(y, width, width, 3, stride=stride)
            y = b.conv_bn(y, width, width * 4, 1, relu=False)
            short = b.conv_bn(x, cin, width * 4, 1, stride=stride, relu=False) if i == 0 else x
            x = b.node("Relu", [b.node("Add", [y, short])])
            cin = width * 4
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    w = b.init("fc_w", b.rng.normal(0, 0.02, (1000, 2048)))
    out = b.node("Gemm", [x, w, b.init("fc_b", np.zeros(1000))], transB=1)
    return b.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, hw, hw])], out, ["N", 1000]
    )


def mobilenetv2_like(hw: int) -> onnx.ModelProto:
    """MobileNetV2 topology (inverted residuals: 1x1 expand, 3x3 depthwise, 1x1 project, each + BN)."""
    b = Builder(2)
    x = b.conv_bn("x", 3, 32, 3, stride=2)
    cin = 32
    for t, c, n, s in (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = b.conv_bn(x, cin, hidden, 1) if t != 1 else x
            y = b.conv_bn(y, hidden, hidden, 3, stride=stride, group=hidden)
            y = b.conv_bn(y, hidden, c, 1, relu=False)
            x = b.node("Add", [x, y]) if stride == 1 and cin == c else y
            cin = c
    x = b.conv_bn(x, cin, 1280, 1)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    out = b.node(
        "Gemm",
        [x, b.init("fc_w", b.rng.normal(0, 0.03, (1000, 1280))), b.init("fc_b", np.zeros(1000))],
        transB=1,
    )
    return b.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, hw, hw])], out, ["N", 1000]
    )


def mlp_gemm_bn(width: int = 1024, depth: int = 4, n_in: int = 256) -> onnx.ModelProto:
    """An MLP of Linear -> BatchNorm1d -> ReLU blocks (Gemm + BN, which onnxruntime does not fuse)."""
    b = Builder(7)
    x, cin = "x", n_in
    for _ in range(depth):
        w = b.init("w", b.rng.normal(0, np.sqrt(1.0 / cin), (width, cin)))
        x = b.node("Gemm", [x, w, b.init("b", b.rng.normal(0, 0.1, width))], transB=1)
        x = b.node("Relu", [b.bn(x, width)])
        cin = width
    out = b.node(
        "Gemm",
        [x, b.init("w", b.rng.normal(0, 0.03, (10, cin))), b.init("b", np.zeros(10))],
        transB=1,
    )
    return b.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])], out, ["N", 10]
    )


def convtranspose_decoder() -> onnx.ModelProto:
    """A DCGAN-style decoder: ConvTranspose(k4, s2) + BN + ReLU x4 from 256x4x4 to 3x64x64."""
    b = Builder(3)
    x, cin = "z", 256
    for cout in (256, 128, 64, 32):
        w = b.init("w", b.rng.normal(0, np.sqrt(1.0 / (cin * 4)), (cin, cout, 4, 4)))
        x = b.node("ConvTranspose", [x, w], kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1])
        x = b.node("Relu", [b.bn(x, cout)])
        cin = cout
    w = b.init("w", b.rng.normal(0, np.sqrt(1.0 / (cin * 9)), (3, cin, 3, 3)))
    out = b.node("Tanh", [b.node("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    return b.model(
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 256, 4, 4])],
        out,
        ["N", 3, 64, 64],
    )


MODELS = {
    "resnet50_like": (lambda: resnet50_like(112), 1, "ResNet-50-like, 1x3x112x112"),
    "mobilenetv2_like": (lambda: mobilenetv2_like(224), 1, "MobileNetV2-like, 1x3x224x224"),
    "mlp_gemm_bn": (mlp_gemm_bn, 64, "MLP Gemm->BN x4 (1024 wide), batch 64"),
    "convtranspose_decoder": (
        convtranspose_decoder,
        1,
        "ConvTranspose decoder, 1x256x4x4 -> 3x64x64",
    ),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", choices=list(MODELS), help="models to run (default: all)")
    p.add_argument("--plot", action="store_true", help="also write results/<name>.png")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    records = {}
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-ort-") as tmp:
        for name in args.only or list(MODELS):
            build, batch, desc = MODELS[name]
            ref_path, cand_path = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.folded.onnx"
            onnx.save(build(), ref_path)
            t0 = time.perf_counter()
            folded = bnfold.fold(ref_path)
            fold_s = time.perf_counter() - t0
            folded.save(cand_path)
            check = check_models(
                ref_path, cand_path, CheckOptions(batch=batch, samples=2, calibrate=True)
            )
            opts = BenchOptions(
                levels=("disable", "all"),
                threads=args.threads,
                rounds=args.rounds,
                iters=args.iters,
                warmup=args.warmup,
                batch=batch,
            )
            result = bench_models(ref_path, cand_path, opts)
            if args.plot:
                write_plot(result, RESULTS / f"{name}.png")
            records[name] = {
                "description": desc,
                "fold_seconds": fold_s,
                "check": {"passed": check.passed, "outputs": [o.to_dict() for o in check.outputs]},
                "bench": result.to_dict(),
            }
            print(f"{name}: done (check {'passed' if check.passed else 'FAILED'})", file=sys.stderr)
    out = RESULTS / "bench_ort.json"
    out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/bench_ort.py " + " ".join(argv or sys.argv[1:]),
                "models": records,
            },
            indent=2,
        )
        + "\n"
    )
    Console(width=200).print(table(records))
    print(f"wrote {out}")
    return 0


def table(records: dict) -> Table:
    """One row per model and level."""
    t = Table(title="bnfold bench: folded vs unfolded (speed-up = unfolded / folded latency)")
    for col in (
        "model",
        "BN",
        "level",
        "unfolded ms",
        "folded ms",
        "speed-up [95% CI]",
        "verdict",
        "create ms (unf/fold)",
        "session MiB (unf/fold)",
        "check max/range",
    ):
        t.add_column(col, justify="left" if col in ("model", "level", "verdict") else "right")
    for name, rec in records.items():
        bench = rec["bench"]
        bns = f"{bench['models']['reference']['batchnorm_nodes']}->{bench['models']['candidate']['batchnorm_nodes']}"
        err = max(o["max_rel_range"] for o in rec["check"]["outputs"])
        for lv in bench["levels"]:
            r, c, s = lv["reference"], lv["candidate"], lv["speedup"]
            mem = (
                f"{r['memory']['session_mib']:.0f}/{c['memory']['session_mib']:.0f}"
                if r["memory"]
                else "-"
            )
            t.add_row(
                name,
                bns,
                lv["level"],
                f"{r['median_ms']:.2f}",
                f"{c['median_ms']:.2f}",
                f"{s['ratio']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]",
                s["verdict"],
                f"{r['creation_s'] * 1e3:.0f}/{c['creation_s'] * 1e3:.0f}",
                mem,
                f"{err:.1e}",
            )
    return t


if __name__ == "__main__":
    raise SystemExit(main())

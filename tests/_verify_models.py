"""Small seeded ONNX models for the verify and bench tests: Conv+BN / Gemm+BN and hand folds."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _bn_params(rng: np.random.Generator, c: int) -> dict[str, np.ndarray]:
    return {
        "gamma": rng.uniform(0.5, 2.0, c).astype(np.float32),
        "beta": rng.normal(0, 1, c).astype(np.float32),
        "mean": rng.normal(0, 1, c).astype(np.float32),
        "var": rng.uniform(0.2, 3.0, c).astype(np.float32),
    }


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def conv_bn_pair(
    seed: int = 0,
    c_in: int = 3,
    c_out: int = 8,
    batch: int | str = 1,
    hw: int = 8,
    break_fold: str | None = None,
    mark: bool = True,
):
    """(reference Conv->BN->Relu, hand-folded candidate Conv->Relu).

    ``break_fold``: None for a correct fold, "channel" (one channel's weight scaled),
    "axis" (scale applied along the input-channel axis), "bias" (bias dropped).
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (c_out, c_in, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.5, c_out).astype(np.float32)
    bn = _bn_params(rng, c_out)
    eps = 1e-5
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c_in, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, c_out, hw, hw])
    ref = _model(
        [
            helper.make_node(
                "Conv", ["x", "W", "B"], ["conv_out"], name="conv1", pads=[1, 1, 1, 1]
            ),
            helper.make_node(
                "BatchNormalization",
                ["conv_out", "gamma", "beta", "mean", "var"],
                ["bn_out"],
                name="bn1",
                epsilon=eps,
            ),
            helper.make_node("Relu", ["bn_out"], ["y"], name="relu1"),
        ],
        {"W": w, "B": b, **bn},
        [x],
        [y],
    )
    s = bn["gamma"] / np.sqrt(bn["var"] + eps)
    wf = w * s[:, None, None, None]
    bf = s * (b - bn["mean"]) + bn["beta"]
    if break_fold == "channel":
        wf[2] *= 1.5
    elif break_fold == "axis":
        assert c_in == c_out, "a wrong-axis fold needs as many input as output channels"
        wf = w * s[None, :, None, None]
    elif break_fold == "bias":
        bf = np.zeros_like(bf)
    conv = helper.make_node("Conv", ["x", "Wf", "Bf"], ["bn_out"], name="conv1", pads=[1, 1, 1, 1])
    if mark:
        helper.set_metadata_props(conv, {"bnfold.fold": "conv+bn", "bnfold.source": "bn1"})
    cand = _model(
        [conv, helper.make_node("Relu", ["bn_out"], ["y"], name="relu1")],
        {"Wf": wf.astype(np.float32), "Bf": bf.astype(np.float32)},
        [x],
        [y],
    )
    return ref, cand


def gemm_bn_pair(
    seed: int = 0, n_in: int = 16, n_out: int = 8, batch: int | str = "N", scale: float = 1.0
):
    """(reference Gemm->BN with two outputs, hand-folded Gemm): outputs ``y`` and ``h``."""
    rng = np.random.default_rng(seed)
    w = (rng.normal(0, 1, (n_out, n_in)) * scale).astype(np.float32)
    b = rng.normal(0, 1, n_out).astype(np.float32)
    bn = _bn_params(rng, n_out)
    eps = 1e-5
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n_in])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, n_out]) for n in ("y", "h")]
    ref = _model(
        [
            helper.make_node("Gemm", ["x", "W", "B"], ["g"], name="fc", transB=1),
            helper.make_node(
                "BatchNormalization",
                ["g", "gamma", "beta", "mean", "var"],
                ["y"],
                name="bn",
                epsilon=eps,
            ),
            helper.make_node("Tanh", ["y"], ["h"], name="tanh"),
        ],
        {"W": w, "B": b, **bn},
        [x],
        outs,
    )
    s = bn["gamma"] / np.sqrt(bn["var"] + eps)
    cand = _model(
        [
            helper.make_node("Gemm", ["x", "Wf", "Bf"], ["y"], name="fc", transB=1),
            helper.make_node("Tanh", ["y"], ["h"], name="tanh"),
        ],
        {
            "Wf": (w * s[:, None]).astype(np.float32),
            "Bf": (s * (b - bn["mean"]) + bn["beta"]).astype(np.float32),
        },
        [x],
        outs,
    )
    return ref, cand


def int_bool_pair(seed: int = 0, n_in: int = 6, n_out: int = 4):
    """Gemm->BN over float ``x``, rows picked by int64 ``idx``, masked by bool ``mask``; and its fold."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (n_out, n_in)).astype(np.float32)
    b = rng.normal(0, 1, n_out).astype(np.float32)
    bn = _bn_params(rng, n_out)
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [11, n_in]),
        helper.make_tensor_value_info("idx", TensorProto.INT64, ["K"]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["K", n_out]),
    ]
    outs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["K", n_out]),
        helper.make_tensor_value_info("count", TensorProto.INT64, []),
    ]
    tail = [
        helper.make_node("Gather", ["bn_out", "idx"], ["rows"], axis=0),
        helper.make_node("Where", ["mask", "rows", "zero"], ["y"]),
        helper.make_node("Cast", ["mask"], ["mask_i"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["mask_i"], ["count"], keepdims=0),
    ]
    zero = {"zero": np.zeros((), np.float32)}
    ref = _model(
        [
            helper.make_node("Gemm", ["x", "W", "B"], ["g"], name="fc", transB=1),
            helper.make_node(
                "BatchNormalization", ["g", "gamma", "beta", "mean", "var"], ["bn_out"], name="bn"
            ),
            *tail,
        ],
        {"W": w, "B": b, **bn, **zero},
        inputs,
        outs,
    )
    s = bn["gamma"] / np.sqrt(bn["var"] + 1e-5)
    cand = _model(
        [helper.make_node("Gemm", ["x", "Wf", "Bf"], ["bn_out"], name="fc", transB=1), *tail],
        {
            "Wf": (w * s[:, None]).astype(np.float32),
            "Bf": (s * (b - bn["mean"]) + bn["beta"]).astype(np.float32),
            **zero,
        },
        inputs,
        outs,
    )
    return ref, cand


def if_pair(seed: int = 0, n: int = 8, broken: bool = False):
    """If(cond): then Gemm->BN, else Relu; the candidate folds the BN inside the then-branch."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (n, n)).astype(np.float32)
    bn = _bn_params(rng, n)
    s = bn["gamma"] / np.sqrt(bn["var"] + 1e-5)
    bf = bn["beta"] - s * bn["mean"]
    if broken:
        bf = bf + 1.0
    inits = {"W": w, **bn, "Wf": (w * s[:, None]).astype(np.float32), "Bf": bf.astype(np.float32)}
    out_vi = [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, ["N", n])]

    def model(then_nodes):
        then_g = helper.make_graph(then_nodes, "then", [], out_vi)
        else_g = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["branch_out"])], "else", [], out_vi
        )
        return _model(
            [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
            inits,
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n]),
                helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
        )

    ref = model(
        [
            helper.make_node("Gemm", ["x", "W"], ["g"], transB=1),
            helper.make_node(
                "BatchNormalization", ["g", "gamma", "beta", "mean", "var"], ["branch_out"]
            ),
        ]
    )
    cand = model([helper.make_node("Gemm", ["x", "Wf", "Bf"], ["branch_out"], transB=1)])
    return ref, cand

"""Every reason the fold core can give for not folding, each on a model that makes it give it.

Each case builds a small model in which a BatchNormalization cannot fold, runs the fold and
asserts the reason text (``tools/refusal_sites.py`` checks that every ``Refusal(...)`` in
bnfold/engine.py and bnfold/folds/ is reached by a test asserting its text).

``via="fold"`` cases are valid models, folded through ``bnfold.fold`` (validation included).
``via="pass"`` cases are models bnfold's loader refuses as bad input (onnxruntime refuses them
too): the fold pass itself must still refuse them with a reason, not crash or fold wrongly,
when a pipeline hands it an unvalidated ``ir.Model``; they run ``FoldPass`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx_helpers import bn_stats, make_model, reasons, serialize

import bnfold
from bnfold.engine import FoldPass
from bnfold.errors import BadInputError
from bnfold.folds import elementwise, trace
from bnfold.folds.plan import Refusal
from bnfold.folds.trace import ChannelMap

H17 = '<ir_version: 8, opset_import: ["" : 17]>'


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(0, 0.5, shape).astype(np.float32)


@dataclass(frozen=True)
class Case:
    """A model (ONNX text + initializers made from a seeded generator) and its reason."""

    text: str
    reason: str
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)  # name -> shape (random)
    bn: int | None = 4  # channels of the BN parameters gamma/beta/mean/var (None: none)
    via: str = "fold"
    negative: bool = False  # every gamma negative (else random signs)
    unranked: bool = False  # the graph input's shape removed (its rank unknown)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # float value_info
    positive: bool = False  # every gamma positive
    ints: dict[str, tuple[int, ...]] = field(default_factory=dict)  # int64 initializers


CASES: dict[str, Case] = {
    # ------------------------------------------------------------ where the BN's output goes
    "bn output is a Conv weight": Case(
        f"""{H17} g (float[2,4,5,5] x, float[6,4,3,3] w) => (float[2,6,3,3] y) {{
          wb = BatchNormalization (w, gamma, beta, mean, var)
          y = Conv (x, wb) }}""",
        "its output is the Conv 'Conv(y)' weight or bias, not its data",
    ),
    "bn output is a ConvTranspose weight": Case(
        f"""{H17} g (float[2,4,5,5] x, float[4,4,3,3] w) => (float[2,4,7,7] y) {{
          wb = BatchNormalization (w, gamma, beta, mean, var)
          y = ConvTranspose (x, wb) }}""",
        "its output is the ConvTranspose 'ConvTranspose(y)' weight or bias, not its data",
    ),
    "bn output is a Gemm B": Case(
        f"""{H17} g (float[3,6] x, float[6,4] w) => (float[3,4] y) {{
          wb = BatchNormalization (w, gamma, beta, mean, var)
          y = Gemm (x, wb) }}""",
        "its output is the Gemm 'Gemm(y)' B or C, not its A",
    ),
    "bn output is a MatMul weight": Case(
        f"""{H17} g (float[3,6] x, float[6,4] w) => (float[3,4] y) {{
          wb = BatchNormalization (w, gamma, beta, mean, var)
          y = MatMul (x, wb) }}""",
        "its output is the MatMul 'MatMul(y)' weight, not its data",
    ),
    "channels on Conv axis 2": Case(
        f"""{H17} g (float[2,4,3,5] x) => (float[2,6,4,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          t = Transpose <perm=[0,2,1,3]> (b)
          y = Conv (t, W) }}""",
        "the BN channels reach the Conv on axis 2, not its channel axis",
        {"W": (6, 3, 1, 1)},
    ),
    "channels on ConvTranspose axis 2": Case(
        f"""{H17} g (float[2,4,3,5] x) => (float[2,6,4,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          t = Transpose <perm=[0,2,1,3]> (b)
          y = ConvTranspose (t, W) }}""",
        "the BN channels reach the ConvTranspose on axis 2, not its channel axis",
        {"W": (3, 6, 1, 1)},
    ),
    "channels on Gemm axis 0": Case(
        f"""{H17} g (float[3,4] x) => (float[4,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          t = Transpose (b)
          y = Gemm (t, B) }}""",
        "the BN channels reach the Gemm on axis 0, not its features",
        {"B": (3, 5)},
    ),
    "negative scale before a MaxPool": Case(
        f"""{H17} g (float[2,4,4,4] x) => (float[2,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          m = MaxPool <kernel_shape=[2,2], strides=[2,2]> (b)
          f = Flatten (m)
          y = Gemm (f, B) }}""",
        "4 channel(s) have a negative scale, which the MaxPool before 'Gemm(y)' does not "
        "commute with",
        {"B": (16, 5)},
        negative=True,
    ),
    "negative scale through a Relu": Case(
        f"""{H17} g (float[2,3,6,6] x) => (float[2,5,6,6] y) {{
          c = Conv (x, W, B0)
          r = Relu (c)
          b = BatchNormalization (r, gamma, beta, mean, var)
          y = Conv <pads=[1,1,1,1]> (b, W2) }}""",
        "through the activation: 4 channel(s) have a negative scale (gamma < 0): "
        "s * Relu(z) = Relu(s * z) only for s >= 0; forward: the Conv 'Conv(y)' pads its input",
        {"W": (4, 3, 1, 1), "B0": (4,), "W2": (5, 4, 3, 3)},
        negative=True,
    ),
    "activation output read elsewhere": Case(
        f"""{H17} g (float[2,3,6,6] x) => (float[2,4,6,6] y, float[2,4,6,6] s) {{
          c = Conv (x, W)
          r = Relu (c)
          s = Sigmoid (r)
          y = BatchNormalization (r, gamma, beta, mean, var) }}""",
        "through the activation: the Relu output 'r' also feeds 1 other node(s); forward: its "
        "output 'y' is a graph output",
        {"W": (4, 3, 1, 1)},
    ),
    "nothing reads the BN": Case(
        f"""{H17} g (float[2,4,3,3] x) => (float[2,4,3,3] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Relu (x) }}""",
        "forward: nothing reads its output 'b'",
    ),
    "MaxPool pools the channel axis": Case(
        f"""{H17} g (float[2,4,4,4] x) => (float[2,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          t = Transpose <perm=[0,2,1,3]> (b)
          m = MaxPool <kernel_shape=[2,2], strides=[2,2]> (t)
          f = Flatten (m)
          y = Gemm (f, B) }}""",
        "forward: the MaxPool pools the channel axis",
        {"B": (16, 5)},
    ),
    "MaxPool indices used": Case(
        f"""{H17} g (float[2,4,4,4] x) => (float[2,5,2,2] y, int64[2,4,2,2] i) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          m, i = MaxPool <kernel_shape=[2,2], strides=[2,2]> (b)
          y = Conv (m, W) }}""",
        "the MaxPool indices output is used",
        {"W": (5, 4, 1, 1)},
    ),
    # ------------------------------------------------------ what the channels pass through
    "Reshape mixes the batch into the channels": Case(
        f"""{H17} g (float[N,4,3,3] x) => (float[M,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          s = Constant <value = int64[2] {{-1, 9}}> ()
          r = Reshape (b, s)
          y = Gemm (r, B) }}""",
        "mixes the channel axis with a batch or symbolic axis",
        {"B": (9, 5)},
    ),
    "Flatten of symbolic dims": Case(
        f"""{H17} g (float[N,4,H,W] x, float[K,5] B) => (float[N,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          f = Flatten (b)
          y = Gemm (f, B) }}""",
        "through Flatten: the Flatten of (N, 4, H, W) to ... the shapes are not static",
    ),
    "Flatten too large to map": Case(
        f"""{H17} g (float[1,4,2048,2049] x, float[16785408,2] B) => (float[1,2] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          f = Flatten (b)
          y = Gemm (f, B) }}""",
        "the Flatten of (1, 4, 2048, 2049) to (1, 16785408) does not keep the BN channel axis whole",
    ),
    "Reshape to a run-time shape": Case(
        f"""{H17} g (float[2,4,3,3] x, int64[K] s) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          r = Reshape (b, s)
          y = MatMul (r, W) }}""",
        "through Reshape: the Reshape shapes are unknown",
        {"W": (36, 5)},
    ),
    "Squeeze without axes of a symbolic shape": Case(
        f"""{H17} g (float[N,4,1,1] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          s = Squeeze (b)
          y = MatMul (s, W) }}""",
        "through Squeeze: the Squeeze input shape is not static",
        {"W": (4, 5)},
    ),
    "Unsqueeze with run-time axes": Case(
        f"""{H17} g (float[2,4,3] x, int64[1] axes) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          u = Unsqueeze (b, axes)
          y = Relu (u) }}""",
        "through Unsqueeze: the Unsqueeze axes or input rank are unknown",
    ),
    "Squeeze of the channel axis": Case(
        f"""{H17} g (float[2,1,3] x) => (float[2,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          a = Constant <value = int64[1] {{1}}> ()
          s = Squeeze (b, a)
          y = MatMul (s, W) }}""",
        "through Squeeze: the Squeeze removes the channel axis",
        {"W": (3, 5)},
        bn=1,
    ),
    "Transpose without perm of unknown rank": Case(
        f"""{H17} g (float[2,4,3,3] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          t = Transpose (b)
          y = Relu (t) }}""",
        "through Transpose: the Transpose input rank is unknown",
        unranked=True,
    ),
    "Reshape output read twice on the way back": Case(
        f"""{H17} g (float[2,3,4,4] x) => (float[2,4,4,4] y, float[2,4,4,4] q) {{
          c = Conv (x, W)
          s = Constant <value = int64[4] {{2, 4, 4, 4}}> ()
          r = Reshape (c, s)
          q = Relu (r)
          y = BatchNormalization (r, gamma, beta, mean, var) }}""",
        "backward: the Reshape output 'r' also feeds other nodes or is a graph output",
        {"W": (4, 3, 1, 1)},
    ),
    # ------------------------------------------------------------ what the layer before is
    "producer in another domain": Case(
        '<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>'
        """ g (float[2,3,4,4] x) => (float[2,4,4,4] y) {
          c = Conv (x, W)
          a = custom.Swish (c)
          y = BatchNormalization (a, gamma, beta, mean, var) }""",
        "its input comes from custom::Swish",
        {"W": (4, 3, 1, 1)},
    ),
    "batched MatMul weight": Case(
        f"""{H17} g (float[2,3,4] x) => (float[2,3,5] y) {{
          m = MatMul (x, W)
          y = BatchNormalization (m, gamma, beta, mean, var) }}""",
        "weight of shape (2, 4, 5) is not 2-D (K, M)",
        {"W": (2, 4, 5)},
        bn=3,
    ),
    # ---------------------------------------------- layers whose parameters are not constant
    "Gemm B at run time": Case(
        f"""{H17} g (float[3,4] x, float[4,4] B) => (float[3,4] y) {{
          m = Gemm (x, B)
          y = BatchNormalization (m, gamma, beta, mean, var) }}""",
        "backward: Gemm B 'B' is not a constant",
    ),
    "Gemm C at run time": Case(
        f"""{H17} g (float[3,4] x, float[4] C) => (float[3,4] y) {{
          m = Gemm (x, B, C)
          y = BatchNormalization (m, gamma, beta, mean, var) }}""",
        "backward: Gemm C 'C' is not a constant",
        {"B": (4, 4)},
    ),
    "Gemm reader's B at run time": Case(
        f"""{H17} g (float[3,4] x, float[4,5] B) => (float[3,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Gemm (b, B) }}""",
        "forward: Gemm B 'B' is not a constant",
    ),
    "Gemm reader's C varies along the batch": Case(
        f"""{H17} g (float[3,4] x) => (float[3,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Gemm (b, B, C) }}""",
        "forward: Gemm C of shape (3, 5) varies along the batch axis",
        {"B": (4, 5), "C": (3, 5)},
    ),
    "MatMul weight at run time": Case(
        f"""{H17} g (float[3,4] x, float[4,4] W) => (float[3,4] y) {{
          m = MatMul (x, W)
          y = BatchNormalization (m, gamma, beta, mean, var) }}""",
        "backward: MatMul weight 'W' is not a constant",
    ),
    "MatMul bias at run time": Case(
        f"""{H17} g (float[3,4] x, float[4] k) => (float[3,4] y) {{
          m = MatMul (x, W)
          a = Add (m, k)
          y = BatchNormalization (a, gamma, beta, mean, var) }}""",
        "backward: its input comes from Add, not a linear layer",
        {"W": (4, 4)},
    ),
    "MatMul plus a column is no bias": Case(
        f"""{H17} g (float[4,4] x) => (float[4,4] y) {{
          m = MatMul (x, W)
          a = Add (m, c)
          y = BatchNormalization (a, gamma, beta, mean, var) }}""",
        "backward: its input comes from Add, not a linear layer",
        {"W": (4, 4), "c": (4, 1)},
    ),
    "MatMul reader's weight at run time": Case(
        f"""{H17} g (float[3,4] x, float[4,5] W) => (float[3,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = MatMul (b, W) }}""",
        "forward: MatMul weight 'W' is not a constant",
    ),
    "MatMul K not the Flatten's features": Case(
        f"""{H17} g (float[2,4,3,3] x) => (float[2,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          f = Flatten (b)
          y = MatMul (f, W) }}""",
        "36 mapped features meet 30",
        {"W": (30, 5)},
        shapes={"b": (2, 4, 3, 3)},  # (onnx's shape inference rejects the model)
    ),
    "ConvTranspose Cin not the Reshape's features": Case(
        f"""{H17} g (float[2,4,3,3] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          r = Reshape (b, s)
          y = ConvTranspose (r, W) }}""",
        "forward: 12 mapped features meet 6",
        {"W": (6, 2, 1)},
        shapes={"b": (2, 4, 3, 3)},  # (onnx's shape inference rejects the model)
        ints={"s": (2, 12, 3)},
    ),
    "ConvTranspose reader's weight at run time": Case(
        f"""{H17} g (float[2,4,3,3] x, float[4,2,1,1] W) => (float[2,2,3,3] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = ConvTranspose (b, W) }}""",
        "forward: ConvTranspose weight 'W' is not a constant",
    ),
    # --------------------------------------------------- through an activation, backward
    "MatMul features on the last axis, through a Relu": Case(
        f"""{H17} g (float[2,3,4] x) => (float[2,3,3] y) {{
          m = MatMul (x, W)
          r = Relu (m)
          y = BatchNormalization (r, gamma, beta, mean, var) }}""",
        "through the activation: BN normalises axis 1 but the MatMul features are on the last "
        "axis (output rank 3)",
        {"W": (4, 3)},
        bn=3,
    ),
    "rank-3 MatMul without a bias Add, through a Transpose": Case(
        f"""{H17} g (float[2,3,4] x) => (float[2,5,3] y) {{
          m = MatMul (x, W)
          t = Transpose <perm=[0,2,1]> (m)
          y = BatchNormalization (t, gamma, beta, mean, var) }}""",
        "backward: the MatMul has no bias to take the shift (its output is not rank 2)",
        {"W": (4, 5)},
        bn=5,
    ),
    "a Mul of unknown rank before the BN": Case(
        f"""{H17} g (float[2,4,3,3] x) => (float y) {{
          m = Mul (x, c)
          y = BatchNormalization (m, gamma, beta, mean, var) }}""",
        "backward: its input comes from Mul, not a linear layer",
        {"c": (4,)},
        unranked=True,
    ),
    # --------------------------------------- models the loader refuses; the pass still must
    "BatchNormalization-5": Case(
        """<ir_version: 3, opset_import: ["" : 5]>
        g (float[2,4,3,3] x) => (float[2,4,3,3] y) {
          y = BatchNormalization (x, gamma, beta, mean, var) }""",
        "BatchNormalization-5 (consumed_inputs era) is not supported",
        via="pass",
    ),
    "BN with four inputs": Case(
        f"""{H17} g (float[2,3,4,4] x) => (float[2,4,4,4] y) {{
          c = Conv (x, W)
          y = BatchNormalization (c, gamma, beta, mean) }}""",
        "has 4 inputs, expected 5",
        {"W": (4, 3, 1, 1)},
        via="pass",
    ),
    "BN mean of the wrong size": Case(
        f"""{H17} g (float[2,3,4,4] x) => (float[2,4,4,4] y) {{
          c = Conv (x, W)
          y = BatchNormalization (c, gamma, beta, m3, var) }}""",
        "BN mean has 3 values, BN scale 4",
        {"W": (4, 3, 1, 1), "m3": (3,)},
        via="pass",
    ),
    "integer Conv weight": Case(
        f"""{H17} g (float[2,3,4,4] x) => (float[2,4,4,4] y) {{
          c = Conv (x, Wi)
          y = BatchNormalization (c, gamma, beta, mean, var) }}""",
        "the Conv weight is int32, not floating point",
        {"Wi": (4, 3, 1, 1)},
    ),
    "2-D Conv weight": Case(
        f"""{H17} g (float[2,3,4,4] x) => (float[2,4,4,4] y) {{
          c = Conv (x, W)
          y = BatchNormalization (c, gamma, beta, mean, var) }}""",
        "weight of shape (4, 3) is not (Cout, Cin/group, k...)",
        {"W": (4, 3)},
    ),
    "2-D Conv bias": Case(
        f"""{H17} g (float[2,3,4,4] x) => (float[2,4,4,4] y) {{
          c = Conv (x, W, B0)
          y = BatchNormalization (c, gamma, beta, mean, var) }}""",
        "the Conv bias has shape (4, 1), not (C,)",
        {"W": (4, 3, 1, 1), "B0": (4, 1)},
        via="pass",
    ),
    "Conv bias of the wrong size": Case(
        f"""{H17} g (float[2,3,4,4] x) => (float[2,4,4,4] y) {{
          c = Conv (x, W, B0)
          y = BatchNormalization (c, gamma, beta, mean, var) }}""",
        "the Conv bias has 3 values for 4 channels",
        {"W": (4, 3, 1, 1), "B0": (3,)},
        via="pass",
    ),
    "Conv without a weight": Case(
        f"""{H17} g (float[2,4,4,4] x) => (float[2,4,4,4] y) {{
          c = Conv (x)
          y = BatchNormalization (c, gamma, beta, mean, var) }}""",
        "Conv weight is missing",
        via="pass",
    ),
    "ConvTranspose group not dividing Cin": Case(
        f"""{H17} g (float[2,4,4,4] x) => (float[2,6,4,4] y) {{
          c = ConvTranspose <group=3> (x, W)
          y = BatchNormalization (c, gamma, beta, mean, var) }}""",
        "weight dim 0 (4) is not divisible by group=3",
        {"W": (4, 2, 1, 1)},
        bn=6,
    ),
    "Conv reader whose group does not divide Cout": Case(
        f"""{H17} g (float[2,6,4,4] x) => (float[2,4,4,4] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Conv <group=3> (b, W) }}""",
        "forward: weight dim 0 (4) is not divisible by group=3",
        {"W": (4, 2, 1, 1)},
        bn=6,
    ),
    "3-D Gemm B": Case(
        f"""{H17} g (float[3,4] x) => (float[3,5] y) {{
          m = Gemm (x, B)
          y = BatchNormalization (m, gamma, beta, mean, var) }}""",
        "weight of shape (2, 4, 5) is not 2-D",
        {"B": (2, 4, 5)},
        bn=5,
        via="pass",
    ),
    "Gemm C of the wrong size": Case(
        f"""{H17} g (float[3,4] x) => (float[3,5] y) {{
          m = Gemm (x, B, C)
          y = BatchNormalization (m, gamma, beta, mean, var) }}""",
        "the constant has 3 values for 5 channels",
        {"B": (4, 5), "C": (3,)},
        bn=5,
    ),
    "MatMul with one input": Case(
        f"""{H17} g (float[3,4] x) => (float[3,4] y) {{
          m = MatMul (x)
          y = BatchNormalization (m, gamma, beta, mean, var) }}""",
        "MatMul needs two inputs",
        via="pass",
    ),
    "BN channels not the Conv's": Case(
        f"""{H17} g (float[2,3,4,4] x) => (float[2,6,4,4] y) {{
          c = Conv (x, W)
          y = BatchNormalization (c, gamma, beta, mean, var) }}""",
        "the BN has 4 channels, the Conv 6",
        {"W": (6, 3, 1, 1)},
        via="pass",
    ),
    "BN channels not the reader's": Case(
        f"""{H17} g (float[2,4,4,4] x) => (float[2,5,4,4] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Conv (b, W) }}""",
        "the BN has 4 channels, 'Conv(y)' takes 3",
        {"W": (5, 3, 1, 1)},
    ),
    "Gemm K not the Flatten's features": Case(
        f"""{H17} g (float[2,4,3,3] x) => (float[2,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          f = Flatten (b)
          y = Gemm (f, B) }}""",
        "36 mapped features meet 30",
        {"B": (30, 5)},
        shapes={"b": (2, 4, 3, 3)},  # (onnx's shape inference rejects the model)
    ),
    "reader bias of the wrong size": Case(
        f"""{H17} g (float[2,4,4,4] x) => (float[2,5,4,4] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          y = Conv (b, W, B0) }}""",
        "the Conv 'Conv(y)' bias has 3 values for 5 outputs",
        {"W": (5, 4, 1, 1), "B0": (3,)},
        via="pass",
    ),
    "Transpose perm too short": Case(
        f"""{H17} g (float[2,4,3,3] x) => (float y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          t = Transpose <perm=[0]> (b)
          y = Relu (t) }}""",
        "through Transpose: Transpose perm is too short",
    ),
    "reader bias of the wrong size, through a Relu": Case(
        f"""{H17} g (float[2,3,4,4] x) => (float[2,5,4,4] y) {{
          c = Conv (x, W)
          r = Relu (c)
          b = BatchNormalization (r, gamma, beta, mean, var)
          y = Conv (b, W2, B0) }}""",
        "through the activation: the Conv 'Conv(y)' bias has 3 values for 5 outputs",
        {"W": (4, 3, 1, 1), "W2": (5, 4, 1, 1), "B0": (3,)},
        via="pass",
        positive=True,
    ),
    "BN parameters for more channels than its input has": Case(
        f"""{H17} g (float[2,1,3,3] x) => (float[2,5] y) {{
          b = BatchNormalization (x, gamma, beta, mean, var)
          f = Flatten (b)
          y = Gemm (f, B) }}""",
        "forward: the BN has 4 channels, but a single one reaches 'Gemm(y)'",
        {"B": (9, 5)},
        via="pass",
        shapes={"b": (2, 1, 3, 3)},  # (onnx's shape inference rejects the model)
    ),
    "Mul first on an input of unknown channels": Case(
        f"""{H17} g (float[2,C,5,5] x) => (float[2,6,5,5] y) {{
          m = Mul (x, c)
          b = BatchNormalization (m, gamma, beta, mean, var)
          y = Conv (b, w) }}""",
        "forward: the Mul input 'x' has an unknown number of channels, not 4",
        params={"c": (1, 4, 1, 1), "w": (6, 4, 1, 1)},
    ),
    "Identity without an input": Case(
        f"""{H17} g (float[2,4,3,3] x) => (float[2,4,3,3] y) {{
          i = Identity ()
          y = BatchNormalization (i, gamma, beta, mean, var) }}""",
        "the Identity has no data input",
        via="pass",
    ),
}


def _model(case: Case, rng: np.random.Generator) -> onnx.ModelProto:
    inits: dict[str, np.ndarray] = {}
    if case.bn is not None:
        inits.update(bn_stats(rng, case.bn))
        if case.negative or case.positive:
            inits["gamma"] = np.abs(inits["gamma"]) * (-1 if case.negative else 1)
    for name, shape in case.params.items():
        inits[name] = _w(rng, *shape)
    for name, values in case.ints.items():
        inits[name] = np.array(values, np.int64)
    if "Wi" in inits:
        inits["Wi"] = rng.integers(-3, 4, inits["Wi"].shape).astype(np.int32)
    model = make_model(case.text, inits, check=False)
    if case.unranked:
        model.graph.input[0].type.tensor_type.ClearField("shape")
    for name, shape in case.shapes.items():
        model.graph.value_info.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
        )
    return model


def _refused(case: Case, model: onnx.ModelProto) -> tuple[str, list[str]]:
    """(every skipped BN's reason, the notes) from folding ``model`` the case's way."""
    if case.via == "fold":
        result = bnfold.fold(model)
        report = result.report
        assert serialize(result.model) == serialize(bnfold.fold(model).model)
    else:
        with pytest.raises(BadInputError):  # the loader refuses the model ...
            bnfold.fold(model)
        ir_model = ir.serde.deserialize_model(model)
        before = serialize(ir_model)
        passed = FoldPass()(ir_model)  # ... and the pass alone refuses to fold it
        assert not passed.modified
        assert serialize(ir_model) == before
        report = passed.report
    assert not report.folded
    assert report.bn_after == report.bn_before == len(report.skipped)
    return " | ".join(s.reason for s in report.skipped), report.notes


@pytest.mark.parametrize("name", list(CASES))
def test_refused(rng, name):
    case = CASES[name]
    reason, _ = _refused(case, _model(case, rng))
    expected = case.reason.split("...")
    assert all(part.strip() in reason for part in expected), reason


def test_function_body_that_would_grow_is_refused(rng):
    """Folding into a function body turns new tensors into Constant nodes; where the fold frees
    fewer nodes than it adds (the weight and the BN parameters are shared), it is refused."""
    p = {"W": _w(rng, 4, 3, 1, 1), **bn_stats(rng, 4)}

    def const(name: str) -> str:
        values = ", ".join(repr(float(v)) for v in p[name].reshape(-1))
        dims = ",".join(map(str, p[name].shape))
        return f"{name} = Constant <value = float[{dims}] {{{values}}}> ()"

    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2,3,4,4] x) => (float[2,4,4,4] y, float[2,4,4,4] z) {
          y, z = local.Two (x)
        }
        <domain: "local", opset_import: ["" : 17]>
        Two (x) => (y, z) {
          """
        + "\n          ".join(const(k) for k in ("W", "gamma", "beta", "mean", "var"))
        + """
          a = Conv (x, W)
          b = Conv (x, W)
          y = BatchNormalization (a, gamma, beta, mean, var)
          z = BatchNormalization (b, gamma, beta, mean, var)
        }"""
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert [s.reason for s in result.report.skipped] == [
        "backward: in a function body the fold would add Constant nodes; forward: its output "
        f"'{out}' is a graph output"
        for out in ("y", "z")
    ]
    assert result.report.nodes_after == result.report.nodes_before


def test_fp16_weights_that_would_overflow_name_the_dtype(rng):
    p = {"W": np.full((4, 3, 1, 1), 4000.0, np.float16), **bn_stats(rng, 4, np.float16)}
    p["var"] = np.full(4, 1e-4, np.float16)
    p["gamma"] = np.full(4, 2.0, np.float16)
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float16[2,3,4,4] x) => (float16[2,4,4,4] y) {
          c = Conv (x, W)
          y = BatchNormalization (c, gamma, beta, mean, var) }""",
        p,
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert reasons(result) == (
        "backward: the folded float16 weights would not be exact: 12 value(s) overflow; "
        "forward: its output 'y' is a graph output"
    )


def test_division_by_a_zero_constant_is_noted_and_left(rng):
    """A Div by a constant holding a zero is not affine (it divides by zero): it stays, and the
    report's notes say why (it is no BN, so it has no skipped entry)."""
    c = np.array([2.0, 0.0, 4.0, 0.5], np.float32).reshape(1, 4, 1, 1)
    model = make_model(
        f"""{H17} g (float[2,3,4,4] x) => (float[2,4,4,4] y) {{
          a = Conv (x, W, B0)
          y = Div (a, c) }}""",
        {"W": _w(rng, 4, 3, 1, 1), "B0": _w(rng, 4), "c": c},
    )
    result = bnfold.fold(model)
    assert not result.report.folded and not result.report.skipped
    assert result.report.notes == ["Div 'Div(y)' is not folded: division by a constant with zeros"]
    assert [n.op_type for n in ir.to_proto(result.model).graph.node] == ["Conv", "Div"]


# ------------------------------------------------- reasons that stay inside the fold core
# These refusals decide what is not an affine node or which map a value carries; the fold
# then simply does not see a chain (or says why in other words), so they are checked where they
# are made, next to what the fold does with such a node.


@pytest.mark.parametrize(
    ("shape", "rank", "reason"),
    [
        ((1, 1, 1, 1, 1), 4, "a constant of rank 5 would broadcast the output to a higher rank"),
        ((1, 1), None, "the output rank is unknown, so the constant's axis cannot be checked"),
        ((1, 3, 4), 3, "the constant of shape (1, 3, 4) varies along several axes"),
        ((1, 4, 1), None, "the output rank is unknown, so the constant's axis cannot be checked"),
        ((1, 1, 4, 1, 1), 4, "a constant of rank 5 would broadcast the output to a higher rank"),
    ],
)
def test_constant_that_is_not_per_channel(shape, rank, reason):
    found = elementwise.constant_axis(np.ones(shape), rank)
    assert found == Refusal(reason)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (1, 1, 4, 1, 1), (1, 4, 4, 1)])
def test_mul_by_a_constant_that_is_not_per_channel_stays(rng, shape):
    """Such a Mul broadcasts its output to a higher rank, or scales along two axes: it is not
    an affine map per channel and stays as it is."""
    out = "float y" if len(shape) > 4 else "float[2,4,4,4] y"
    c = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    model = make_model(
        f"""{H17} g (float[2,3,4,4] x) => ({out}) {{
          a = Conv (x, W)
          y = Mul (a, c) }}""",
        {"W": _w(rng, 4, 3, 1, 1), "c": c},
    )
    result = bnfold.fold(model)
    assert not result.report.folded
    assert [n.op_type for n in ir.to_proto(result.model).graph.node] == ["Conv", "Mul"]


def test_channel_map_refusals():
    assert ChannelMap(-1).normalized(None) == Refusal("the tensor's rank is unknown")
    normalized = ChannelMap(-1).normalized(3)
    assert isinstance(normalized, ChannelMap) and normalized.axis == 2
    assert ChannelMap(1).features(4, 6) == Refusal("6 channels meet 4 features")
    mapped = ChannelMap(1, np.arange(4))
    assert mapped.features(5, None) == Refusal("4 mapped features meet 5")
    got = trace.remap([2, 6], [12], ChannelMap(1, np.arange(4)), "the Reshape")
    assert got == Refusal("the Reshape: 6 features on the channel axis, not 4")

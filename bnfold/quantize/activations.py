"""What every BatchNormalization sees on calibration data: per-channel input ranges, dead channels.

The model is copied with each BN's input added as a graph output and run by onnxruntime
(optimisations off, so nothing is fused away) over the calibration batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from bnfold.quantize.channels import DEAD_RTOL, ChannelRange
from bnfold.verify.session import ModelRef, make_session

__all__ = ["BnChannels", "bn_channels"]


@dataclass
class BnChannels:
    """One BatchNormalization: its input's per-channel range over the data, and its scale."""

    node: str
    input: str
    range: ChannelRange
    scale: np.ndarray | None  # s = gamma / sqrt(var + eps); None if the parameters are not constant
    variance: np.ndarray | None

    def dead(self, rtol: float = DEAD_RTOL) -> np.ndarray:
        return self.range.dead(rtol)

    def to_dict(self, rtol: float = DEAD_RTOL) -> dict:
        dead = np.flatnonzero(self.dead(rtol))
        d: dict = {
            "node": self.node,
            "input": self.input,
            "channels": int(self.range.min.size),
            "dead": [int(i) for i in dead],
            "dead_values": [float(self.range.min[i]) for i in dead],
        }
        if self.scale is not None and self.variance is not None:
            live = np.ones(self.scale.size, dtype=bool)
            live[dead] = False
            d["dead_scale"] = [float(self.scale[i]) for i in dead]
            d["dead_variance"] = [float(self.variance[i]) for i in dead]
            d["median_abs_scale_live"] = (
                float(np.median(np.abs(self.scale[live]))) if live.any() else None
            )
        return d


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _bn_scale(
    node: onnx.NodeProto, consts: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    names = list(node.input[1:5])
    if len(names) < 4 or not all(n in consts for n in names):
        return None, None
    gamma, _beta, _mean, var = (consts[n].astype(np.float64) for n in names)
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    return gamma / np.sqrt(var + eps), var


def bn_channels(
    model: str | os.PathLike | onnx.ModelProto,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    provider: str = "cpu",
) -> dict[str, BnChannels]:
    """Per-channel input ranges of every main-graph BatchNormalization over ``batches``."""
    proto = onnx.load(os.fspath(model)) if not isinstance(model, onnx.ModelProto) else model
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    graph = probe.graph
    bns = [n for n in graph.node if n.op_type == "BatchNormalization" and n.input]
    if not bns:
        return {}
    consts = _constants(graph)
    outputs = {o.name for o in graph.output}
    elem = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info)}
    for node in bns:
        if node.input[0] not in outputs:
            graph.output.append(
                onnx.helper.make_tensor_value_info(
                    node.input[0], elem.get(node.input[0], onnx.TensorProto.FLOAT), None
                )
            )
            outputs.add(node.input[0])
    session = make_session(ModelRef("probe", data=probe.SerializeToString()), provider=provider)
    wanted = [n.input[0] for n in bns]
    names = sorted(set(wanted))
    ranges: dict[str, ChannelRange] = {}
    taken = {i.name for i in session.get_inputs()}
    for feeds in batches:
        values = session.run(names, {k: v for k, v in feeds.items() if k in taken})
        for name, value in zip(names, values, strict=True):
            if name not in ranges:
                ranges[name] = ChannelRange(value.shape[1], axis=1)
            ranges[name].update(value)
    if not ranges:
        raise ValueError("no calibration batches")
    result = {}
    for node in bns:
        scale, var = _bn_scale(node, consts)
        key = node.name or node.output[0]
        result[key] = BnChannels(key, node.input[0], ranges[node.input[0]], scale, var)
    return result

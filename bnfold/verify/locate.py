"""Find the first intermediate tensor, present in both graphs, where the candidate diverges."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from bnfold.verify.inputs import InputSet
from bnfold.verify.session import PROTO_LIMIT, ModelRef, open_session, run_feeds
from bnfold.verify.settings import SessionSettings
from bnfold.verify.stats import ErrorStats, failed_stats, incomparable, is_text

FOLD_KEY = "bnfold.fold"
SOURCE_KEY = "bnfold.source"


@dataclass(frozen=True)
class NodeInfo:
    """A node by name and op type, with the bnfold fold that made it (if any)."""

    name: str
    op_type: str
    fold: str | None = None
    source: str | None = None

    def describe(self) -> str:
        text = f"{self.op_type} node {self.name!r}" if self.name else f"unnamed {self.op_type} node"
        if self.fold:
            text += f" (bnfold fold {self.fold}"
            text += f" of BatchNormalization {self.source!r})" if self.source else ")"
        return text


@dataclass(frozen=True)
class Divergence:
    """The first common tensor that differs beyond tolerance and the nodes that produce it."""

    tensor: str
    input_set: str
    candidate_node: NodeInfo
    reference_node: NodeInfo
    stats: ErrorStats
    tensors_compared: int

    def describe(self) -> str:
        return (
            f"first divergence at tensor {self.tensor!r} (input set {self.input_set}): produced in the "
            f"candidate by {self.candidate_node.describe()}, in the reference by "
            f"{self.reference_node.describe()}; max abs error {self.stats.max_abs:.3g}"
        )

    def to_dict(self) -> dict:
        return {
            "tensor": self.tensor,
            "input_set": self.input_set,
            "candidate_node": vars(self.candidate_node),
            "reference_node": vars(self.reference_node),
            "stats": self.stats.to_dict(),
            "tensors_compared": self.tensors_compared,
            "message": self.describe(),
        }


def _node_info(node: onnx.NodeProto) -> NodeInfo:
    meta = {p.key: p.value for p in node.metadata_props}
    return NodeInfo(node.name, node.op_type, meta.get(FOLD_KEY), meta.get(SOURCE_KEY))


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _expose(model: onnx.ModelProto, names: list[str], workdir: Path, label: str) -> ModelRef:
    """A copy of ``model`` whose graph also outputs ``names`` (untyped: onnxruntime infers them)."""
    present = {o.name for o in model.graph.output}
    for n in names:
        if n not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=n))
    if model.ByteSize() <= PROTO_LIMIT:
        return ModelRef(label=label, data=model.SerializeToString())
    path = workdir / f"{label}.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location=f"{label}.data")
    return ModelRef(label=label, path=path)


def locate_divergence(
    reference: ModelRef,
    candidate: ModelRef,
    input_sets: list[InputSet],
    compare: Callable[[str, np.ndarray, np.ndarray], ErrorStats],
    session: SessionSettings | None = None,
) -> Divergence | None:
    """Run both models exposing every main-graph tensor they share; return the first, in the
    candidate's node order, that ``compare`` fails on, trying input sets in turn."""
    ref_model, cand_model = reference.load(), candidate.load()
    ref_prod, cand_prod = _producers(ref_model.graph), _producers(cand_model.graph)
    common = [name for name in cand_prod if name in ref_prod]
    if not common:
        return None
    settings = session or SessionSettings()
    with tempfile.TemporaryDirectory(prefix="bnfold-locate-") as tmp:
        ref_sess = open_session(_expose(ref_model, common, Path(tmp), "reference"), settings)
        cand_sess = open_session(_expose(cand_model, common, Path(tmp), "candidate"), settings)
        for input_set in input_sets:
            ref_out = run_feeds(ref_sess, input_set.feeds, common, input_set.label)
            cand_out = run_feeds(cand_sess, input_set.feeds, common, input_set.label)
            for name in common:
                r, c = ref_out[name], cand_out[name]
                if incomparable(r, c):
                    stats = failed_stats(r.size)
                elif is_text(r.dtype):  # strings: equal or not
                    if np.array_equal(r, c):
                        continue
                    stats = failed_stats(r.size)
                else:
                    stats = compare(name, r, c)
                if not stats.passed:
                    return Divergence(
                        name,
                        input_set.label,
                        _node_info(cand_prod[name]),
                        _node_info(ref_prod[name]),
                        stats,
                        len(common),
                    )
    return None

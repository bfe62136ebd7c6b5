"""What a report says about a model besides its BNs: op counts, weight bytes, inputs/outputs.

All of it is read from the graph and the tensors' declared shapes and types; no tensor data is
read (external data stays on disk, a folded weight is not computed).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import onnx_ir as ir

from bnfold.folds.context import all_graphs


def op_counts(model: ir.Model) -> dict[str, int]:
    """Nodes per op type over every graph and function (``domain::op`` outside the default
    domain), sorted by op type."""
    counts: Counter[str] = Counter()
    for graph in all_graphs(model):
        for node in graph:
            domain = "" if node.domain in ("", "ai.onnx") else f"{node.domain}::"
            counts[f"{domain}{node.op_type}"] += 1
    return dict(sorted(counts.items()))


def weight_bytes(model: ir.Model) -> int:
    """Bytes of every initializer and Constant tensor, by declared shape and type."""
    total = 0
    for graph in all_graphs(model):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
        for node in graph:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                attr = node.attributes.get("value")
                if attr is not None and not attr.is_ref() and attr.type == ir.AttributeType.TENSOR:
                    total += attr.as_tensor().nbytes
    return total


def dtype_name(dtype: ir.DataType) -> str:
    """numpy's name for ``dtype`` (float32, bfloat16, ...), else the ONNX name in lower case."""
    try:
        return str(dtype.numpy().name)
    except (TypeError, ValueError, AttributeError):
        return dtype.name.lower()


def _value_info(value: ir.Value) -> dict[str, Any]:
    dtype = dtype_name(value.dtype) if value.dtype is not None else None
    shape = None
    if value.shape is not None:
        shape = [d if isinstance(d, int) else (d.value if d.value else "?") for d in value.shape]
    return {"name": value.name, "dtype": dtype, "shape": shape}


def signature(model: ir.Model) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """The main graph's inputs and outputs as {name, dtype, shape} (a symbolic dim by its name,
    an unknown one as "?"), and how many inputs are initializers (IR < 4), which are left out."""
    graph = model.graph
    inputs = [v for v in graph.inputs if v.name not in graph.initializers]
    return (
        [_value_info(v) for v in inputs],
        [_value_info(v) for v in graph.outputs],
        len(graph.inputs) - len(inputs),
    )


def files_bytes(files: list[Path]) -> int:
    """Total size of the files that exist among ``files``."""
    return sum(f.stat().st_size for f in files if f.is_file())


def model_file_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a model file and the external-data files it names."""
    from bnfold.paths import model_files

    return files_bytes(model_files(path))

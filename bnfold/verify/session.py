"""onnxruntime plumbing: model sources, sessions, providers and optimisation levels."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from bnfold.errors import BadInputError, UsageError
from bnfold.verify.settings import SessionSettings

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

# A serialized protobuf cannot exceed 2 GiB; bigger models must go by path.
PROTO_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ModelRef:
    """A model to run: a path on disk or serialized bytes, with a label for messages."""

    label: str
    path: Path | None = None
    data: bytes | None = None

    @property
    def source(self) -> str | bytes:
        if self.path is not None:
            return str(self.path)
        assert self.data is not None  # a ModelRef holds a path or bytes
        return self.data

    @property
    def display(self) -> str:
        """The path, or ``<label in memory>``, for reports."""
        return str(self.path) if self.path is not None else f"<{self.label} in memory>"

    def load(self, with_external_data: bool = True) -> onnx.ModelProto:
        """The ModelProto (external data loaded unless asked otherwise)."""
        if self.path is not None:
            try:
                return onnx.load(str(self.path), load_external_data=with_external_data)
            except Exception as exc:  # onnx raises DecodeError, OSError, ...
                raise BadInputError(self.path, f"not a readable ONNX model ({exc})") from exc
        assert self.data is not None
        return onnx.load_from_string(self.data)

    def size_bytes(self, model: onnx.ModelProto | None = None) -> int:
        """Bytes on disk: the model file plus its external data files. ``model``: this model
        already loaded (external data not needed), to save loading it again."""
        if self.path is None:
            return len(self.data or b"")
        total = self.path.stat().st_size
        if model is None:
            model = self.load(with_external_data=False)
        seen: set[str] = set()
        for tensor in _external_tensors(model.graph):
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in seen:
                    seen.add(entry.value)
                    f = self.path.parent / entry.value
                    if f.exists():
                        total += f.stat().st_size
        return total


def _external_tensors(graph: onnx.GraphProto):
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _external_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _external_tensors(g)


def model_ref(model: object, label: str) -> ModelRef:
    """Turn a path, ModelProto or bytes into a ModelRef; a missing file is a BadInputError."""
    if isinstance(model, onnx.ModelProto):
        if model.ByteSize() > PROTO_LIMIT:
            raise BadInputError(
                None, f"{label} model is over 2 GB; pass it by path (external data)"
            )
        return ModelRef(label=label, data=model.SerializeToString())
    if isinstance(model, bytes | bytearray):
        return ModelRef(label=label, data=bytes(model))
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if path.is_dir():
            raise BadInputError(path, "is a directory, not an ONNX model")
        if not path.is_file():
            raise BadInputError(path, "no such file")
        return ModelRef(label=label, path=path)
    raise TypeError(
        f"{label}: expected a path, onnx.ModelProto or bytes, not {type(model).__name__}"
    )


def check_provider(provider: str) -> str:
    """The onnxruntime provider name for ``cpu``/``cuda``; exit-2 error when it is unavailable."""
    if provider not in PROVIDERS:
        raise UsageError(f"--provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise UsageError(
            f"--provider {provider}: {name} is not available in this onnxruntime "
            f"({ort.__version__}; available: {', '.join(ort.get_available_providers())}); "
            "install onnxruntime-gpu with a matching CUDA to use it"
        )
    return name


def check_opt_level(level: str) -> ort.GraphOptimizationLevel:
    if level not in OPT_LEVELS:
        raise UsageError(f"--opt-level must be one of {', '.join(OPT_LEVELS)}, not {level!r}")
    return OPT_LEVELS[level]


def make_session(
    model: ModelRef,
    *,
    provider: str = "cpu",
    opt_level: str = "disable",
    threads: int | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on one provider at one optimisation level.

    ``threads`` fixes intra-op threads (inter-op is then 1 and execution sequential); None lets
    onnxruntime choose.
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = check_opt_level(opt_level)
    so.log_severity_level = 4  # errors come back as exceptions, said in one line
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers: Sequence[str] = [check_provider(provider)]
    try:
        return ort.InferenceSession(model.source, sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        where = "" if model.path is not None else f"{model.label} model: "
        raise BadInputError(
            model.path, f"{where}onnxruntime cannot load it: {_first_line(exc)}"
        ) from exc


def open_session(model: ModelRef, settings: SessionSettings) -> ort.InferenceSession:
    """``make_session`` with typed settings."""
    return make_session(
        model, provider=settings.provider, opt_level=settings.opt_level, threads=settings.threads
    )


def run_feeds(
    session: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    names: Sequence[str],
    label: str,
    model: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Run ``session`` for outputs ``names`` on the feeds it takes (others are left out); a
    sequence output comes back as its tensors flattened into one array. A failure is a
    BadInputError naming the model file and the input set ``label``."""
    try:
        values = session.run(list(names), session_feeds(session, feeds))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BadInputError(
            model, f"onnxruntime failed on input set {label}: {_one_line(exc)}"
        ) from exc
    return {n: _flat(v) for n, v in zip(names, values, strict=True)}


def session_feeds(
    session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The part of ``feeds`` that ``session`` takes (onnxruntime rejects unknown names)."""
    wanted = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in wanted}


def _flat(value: Any) -> np.ndarray:
    if isinstance(value, list):  # a sequence output
        parts = [np.asarray(v).ravel() for v in value]
        return np.concatenate(parts) if parts else np.zeros(0)
    return np.asarray(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """onnxruntime's whole message on one line (its detail, e.g. which dim, is on later
    lines), cut at ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"

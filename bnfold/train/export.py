"""Export a trained model to ONNX with every BatchNorm kept as a BatchNormalization node.

torch 2.13's exporters fold BatchNorm by default, so this uses the TorchScript exporter with
``TrainingMode.PRESERVE`` on an eval-mode model: the BN modules keep their running statistics
and come out as inference-mode ``BatchNormalization`` nodes. Never a training-mode export.
The result is checked twice: the graph must hold one BatchNormalization per BN module, and
onnxruntime must reproduce torch's output on real digits.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from bnfold import atomic
from bnfold.errors import BnfoldError, UsageError
from bnfold.train.checkpoint import load_checkpoint
from bnfold.train.data import split_digits
from bnfold.train.zoo import count_batchnorms

__all__ = ["DEFAULT_OPSET", "ExportError", "ExportResult", "export_checkpoint", "export_model"]

DEFAULT_OPSET = 17
try:  # the newest opset the TorchScript exporter writes
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except ImportError:  # pragma: no cover - other torch versions
    MAX_OPSET = 20
INPUT_SHAPE = (1, 8, 8)
ATOL = RTOL = 1e-4


class ExportError(BnfoldError):
    """The exported graph lost BatchNorm nodes or disagrees with torch. Exit code 1."""

    exit_code = 1


@dataclass(frozen=True)
class ExportResult:
    """What was written and how it was verified."""

    path: str
    opset: int
    dynamic_batch: bool
    bn_modules: int
    bn_nodes: int
    verify_batch: int
    max_abs_error: float

    def to_dict(self) -> dict:
        return asdict(self)


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    batch_size: int = 1,
    sample: np.ndarray | None = None,
) -> ExportResult:
    """Export ``model`` (switched to eval mode) to ``path`` and verify it; raise ExportError.

    ``sample`` (float32, (N, 1, 8, 8)) is the verification input; by default test digits.
    With ``dynamic_batch`` the batch axis is symbolic and verification uses 8 images.
    """
    if opset < 9:
        raise UsageError(f"opset {opset} is too old; use 9 or newer")
    if opset > MAX_OPSET:
        raise UsageError(
            f"opset {opset} is newer than torch {torch.__version__}'s TorchScript exporter "
            f"supports (up to {MAX_OPSET})"
        )
    model.eval()
    p = Path(path)
    verify_batch = 8 if dynamic_batch else batch_size
    if sample is None:
        sample = split_digits().x_test[:verify_batch]
    example = torch.zeros((batch_size, *INPUT_SHAPE))
    dynamic_axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    # export into a temporary file beside the destination; it is renamed into place only
    # once it has passed both checks, so a failed export leaves nothing behind
    with atomic.atomic_path(p) as tmp:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            _export_errors(p),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                training=torch.onnx.TrainingMode.PRESERVE,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        proto = onnx.load(tmp)
        bn_modules = count_batchnorms(model)
        bn_nodes = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
        if bn_nodes != bn_modules:
            raise ExportError(
                f"{p}: the exported graph has {bn_nodes} BatchNormalization nodes for "
                f"{bn_modules} BatchNorm modules; the exporter folded or dropped BatchNorm"
            )
        error = _max_error(model, tmp, np.ascontiguousarray(sample, dtype=np.float32), p)
    return ExportResult(str(p), opset, dynamic_batch, bn_modules, bn_nodes, len(sample), error)


@contextlib.contextmanager
def _export_errors(path: Path) -> Iterator[None]:
    """The exporter's own failures as one-line ExportErrors (exit 1), not tracebacks."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, torch.onnx.errors.OnnxExporterError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ExportError(f"{path}: torch.onnx.export failed: {first}") from None


def export_checkpoint(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
) -> ExportResult:
    """Load a checkpoint written by ``bnfold train`` and ``export_model`` it."""
    model, _config, _metrics = load_checkpoint(checkpoint)
    return export_model(model, path, opset=opset, dynamic_batch=dynamic_batch)


def _max_error(model: nn.Module, path: Path, sample: np.ndarray, label: Path) -> float:
    """Largest |onnxruntime - torch| on ``sample``; ExportError above tolerance.

    onnxruntime runs with graph optimisations off, so the exported graph is what is checked,
    not onnxruntime's fused rewrite of it.
    """
    with torch.no_grad():
        expected = model(torch.from_numpy(sample)).numpy()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": sample})
    error = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
        raise ExportError(
            f"{label}: onnxruntime disagrees with torch (max abs error {error:.3g}, "
            f"tolerance {ATOL:g} + {RTOL:g}*|torch|)"
        )
    return error

"""The library entry point: ``bnfold.fold(model_or_path) -> FoldResult``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnx_ir as ir

from bnfold import model_stats, paths
from bnfold.engine import FoldPass
from bnfold.errors import BadInputError, UsageError, VerificationError
from bnfold.folds.context import FoldOptions
from bnfold.model_io import (
    load_model,
    model_from_proto,
    save_model,
    staged_save,
    validate_model,
)
from bnfold.report import FoldReport

if TYPE_CHECKING:
    from bnfold.verify import CheckOptions

ModelLike = str | os.PathLike | ir.Model | onnx.ModelProto | bytes


@dataclass
class FoldResult:
    """The folded model and what was done to it."""

    model: ir.Model
    report: FoldReport
    check: Any = None  # the CheckResult when the fold was verified

    def save(
        self,
        path: str | os.PathLike,
        *,
        external_data: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Path]:
        """Write the model atomically (external data beside it when needed; ``external_data``
        forces it on or off); ``progress(done, total)`` is told the bytes written."""
        start = time.perf_counter()
        files = save_model(self.model, path, external_data=external_data, progress=progress)
        _record_written(self.report, path, files)
        self.report.timings["save"] = time.perf_counter() - start
        return files


def as_ir_model(model: ModelLike) -> tuple[ir.Model, str | None]:
    """Load or convert ``model``; an ``ir.Model`` is used as is (folding changes it)."""
    if isinstance(model, ir.Model):
        return model, None
    if isinstance(model, bytes):
        try:
            model = onnx.load_from_string(model)
        except Exception as exc:
            raise BadInputError("<bytes>", f"not an ONNX model ({exc})") from None
    if isinstance(model, onnx.ModelProto):
        return model_from_proto(model), None
    return load_model(model), os.fspath(model)


def fold(
    model: ModelLike,
    *,
    allow_initializer_inputs: bool = True,
    affine: bool = True,
    forward: str = "exact",
) -> FoldResult:
    """Fold every foldable BatchNormalization of ``model``.

    ``model`` is a path (loaded lazily; the file is never modified), an ``onnx.ModelProto``
    (copied), serialized bytes, or an ``onnx_ir.Model`` (folded in place). With
    ``allow_initializer_inputs=False``, parameters that are initializers *and* graph inputs
    (IR < 4 exporters) are refused instead of treated as constants. With ``affine=False`` only
    BatchNormalization (and an Add between a linear layer and a BN) is folded, not standalone
    per-channel Mul/Add/Sub/Div. ``forward``: "exact" (default) also folds a BN into the layers
    after it and through activations where that is exact, "off" only into the layer before it.
    """
    try:
        options = FoldOptions(allow_initializer_inputs, affine, forward)
    except ValueError as exc:
        raise UsageError(str(exc), cli=f"--{exc}") from None
    start = time.perf_counter()
    ir_model, path = as_ir_model(model)
    if path is None:
        validate_model(ir_model)
    loaded = time.perf_counter()
    ops_before, weights_before = model_stats.op_counts(ir_model), model_stats.weight_bytes(ir_model)
    try:
        report = FoldPass(options).call(ir_model).report
    except BadInputError as exc:
        if exc.path is None and path is not None:
            raise BadInputError(path, exc.problem) from None
        raise
    report.model = path
    report.forward = forward
    report.ops_before, report.weights_before = ops_before, weights_before
    report.ops_after = model_stats.op_counts(ir_model)
    report.weights_after = model_stats.weight_bytes(ir_model)
    report.inputs, report.outputs, report.initializer_inputs = model_stats.signature(ir_model)
    if path is not None:
        report.file_bytes_before = model_stats.model_file_bytes(path)
    report.timings["load"] = loaded - start
    report.timings["fold"] = time.perf_counter() - loaded
    return FoldResult(ir_model, report)


def verification_inputs(verify: CheckOptions | None) -> list[Path]:
    """The .npz files a verification reads (``CheckOptions.inputs``, folders expanded)."""
    if verify is None or not verify.inputs:
        return []
    from bnfold.verify.inputs import npz_files

    return npz_files(verify.inputs)


def fold_file(
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    verify: CheckOptions | None = None,
    force: bool = False,
    allow_initializer_inputs: bool = True,
    affine: bool = True,
    forward: str = "exact",
    progress: Callable[[int, int], None] | None = None,
    in_place: bool = False,
    also_writes: Sequence[paths.Output] = (),
) -> FoldResult:
    """Fold ``model`` into ``output``, verifying the written file before it is put in place.

    Before any work, ``output`` (and its external-data file) and ``also_writes`` (the caller's
    other outputs, e.g. a report) are checked: writable, and none of them an input file or
    another output (``bnfold.paths.guard``); ``output`` may name ``model`` only with
    ``in_place``. With ``verify`` (CheckOptions), the staged output is compared with the input
    by onnxruntime, one session at a time; if it differs beyond tolerance nothing is written
    and VerificationError is raised (its ``result`` is the FoldResult, whose ``report.verify``
    holds the comparison), unless ``force`` (then it is written and the report marked). Nothing
    folded means nothing to verify.
    """
    paths.guard(
        [paths.Output("-o", Path(output), "model"), *also_writes],
        models=[model],
        files=verification_inputs(verify),
        in_place=model if in_place else None,
    )
    result = fold(
        model, allow_initializer_inputs=allow_initializer_inputs, affine=affine, forward=forward
    )
    start = time.perf_counter()
    with staged_save(result.model, output, progress=progress) as staged:
        result.report.timings["save"] = time.perf_counter() - start
        if verify is not None and result.report.folded:
            from bnfold.verify import check_models

            start = time.perf_counter()
            try:
                check = check_models(model, staged.path, verify)
            except BadInputError as exc:  # name the destination, never the staged file
                if exc.path is not None and paths.same_file(exc.path, staged.path):
                    raise BadInputError(output, exc.problem) from None
                raise
            check.candidate = os.fspath(output)
            result.report.timings["verify"] = time.perf_counter() - start
            result.report.verify = check.to_dict()
            result.check = check
            if not check.passed:
                if not force:
                    raise VerificationError(
                        f"{model}: the folded model differs beyond tolerance in "
                        f"{len(check.failed_outputs)} output(s); nothing written "
                        "(--force writes it anyway)",
                        result,
                    )
                result.report.forced = True
        files = staged.commit()
    _record_written(result.report, output, files)
    return result


def _record_written(report: FoldReport, path: str | os.PathLike, files: list[Path]) -> None:
    """The model written to ``path`` as ``files`` (the model, then its external data)."""
    report.output = os.fspath(path)
    report.file_bytes_after = model_stats.files_bytes(files)
    report.files_written = [os.fspath(f) for f in files]

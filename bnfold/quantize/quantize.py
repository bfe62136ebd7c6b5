"""Fold, then quantize with onnxruntime, then prove: ``quantize_file(model, output, options)``.

1. Fold every safe fold with :func:`bnfold.fold` and check the folded fp32 model against the
   original on real data (the first calibration batch).
2. Record what each BatchNormalization of the original sees on the calibration data (dead
   channels: constant over every sample).
3. ``onnxruntime.quantization.quantize_static`` on the folded model: QDQ, per-channel weights,
   the types onnxruntime recommends for this CPU (:mod:`bnfold.quantize.types`), the chosen
   calibration method, the excluded nodes. bnfold reimplements none of it.
4. Prove the int8 model against the fp32 original on held-out data (:mod:`bnfold.quantize.prove`)
   and list the ops that still run in float once onnxruntime has optimised it.
5. Write it atomically: staged beside the destination, renamed into place only when the proof
   passes (or with ``force``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

import bnfold
from bnfold import paths
from bnfold.api import FoldResult
from bnfold.atomic import atomic_path
from bnfold.errors import BadInputError, UsageError, VerificationError
from bnfold.quantize.activations import BnChannels, bn_channels
from bnfold.quantize.data import CALIBRATION_SAMPLES, Dataset, resolve_dataset
from bnfold.quantize.float_ops import FloatOps, float_ops
from bnfold.quantize.prove import Proof, ProofThresholds, prove_int8
from bnfold.quantize.types import QUANT_TYPES, QuantTypes, recommended_types
from bnfold.verify import CheckOptions, check_models
from bnfold.verify.inputs import InputInfo, npz_files, session_inputs
from bnfold.verify.session import make_session, model_ref

if TYPE_CHECKING:
    from rich.console import Group

__all__ = [
    "CALIBRATION_METHODS",
    "FORWARD_MODES",
    "QuantizeOptions",
    "QuantizeResult",
    "fold_for_int8",
    "model_inputs",
    "ort_quantize",
    "quantize_file",
    "quiet_onnxruntime",
]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
FORWARD_MODES = ("off", "exact", "int8-safe")


@dataclass
class QuantizeOptions:
    """How to quantize. ``None`` means: the recommendation for this CPU (types, reduced range),
    every sample given (200 digits training images for a zoo model), int8-safe forward folds."""

    calibration: list[str | os.PathLike[str]] = field(default_factory=list)
    calibration_samples: int | None = None
    eval: list[str | os.PathLike[str]] = field(default_factory=list)
    eval_samples: int | None = None
    method: str = "minmax"
    exclude: list[str] = field(default_factory=list)
    activation_type: str | None = None
    weight_type: str | None = None
    reduce_range: bool | None = None
    forward: str | None = None
    prove: bool = True
    thresholds: ProofThresholds = field(default_factory=ProofThresholds)
    force: bool = False
    provider: str = "cpu"

    def validate(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise UsageError(
                f"--method must be one of {', '.join(CALIBRATION_METHODS)}, not {self.method!r}"
            )
        for flag, value in (
            ("--activation-type", self.activation_type),
            ("--weight-type", self.weight_type),
        ):
            if value is not None and value not in QUANT_TYPES:
                raise UsageError(f"{flag} must be one of {', '.join(QUANT_TYPES)}, not {value!r}")
        if self.forward is not None and self.forward not in FORWARD_MODES:
            raise UsageError(
                f"--forward must be one of {', '.join(FORWARD_MODES)}, not {self.forward!r}"
            )
        for flag, n in (
            ("--calibration-samples", self.calibration_samples),
            ("--eval-samples", self.eval_samples),
        ):
            if n is not None and n < 1:
                raise UsageError(f"{flag} must be >= 1, not {n}")
        self.thresholds.validate()

    def types(self) -> QuantTypes:
        """The recommendation for this CPU, with any type or range given here in its place."""
        rec = recommended_types()
        if self.activation_type is None and self.weight_type is None and self.reduce_range is None:
            return rec
        return QuantTypes(
            self.activation_type or rec.activation,
            self.weight_type or rec.weight,
            rec.reduce_range if self.reduce_range is None else self.reduce_range,
            f"set by the user (recommended here: {rec.activation}/{rec.weight}"
            f"{', reduce_range' if rec.reduce_range else ''}; {rec.reason})",
        )

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["calibration"] = [os.fspath(p) for p in self.calibration]
        d["eval"] = [os.fspath(p) for p in self.eval]
        d["thresholds"] = self.thresholds.to_dict()
        return d


@dataclass
class QuantizeResult:
    """What ``quantize_file`` did and measured."""

    model: str
    output: str | None
    options: QuantizeOptions
    types: QuantTypes
    forward: str
    calibration: Dataset
    evaluation: Dataset | None
    fold: FoldResult
    fold_check: dict[str, Any] | None
    channels: dict[str, BnChannels]
    float_ops: FloatOps
    proof: Proof | None
    sizes: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    forced: bool = False
    bench: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return self.proof is None or self.proof.passed

    @property
    def dead_channels(self) -> dict[str, list[int]]:
        """BatchNormalization -> its input channels constant over the calibration data."""
        out = {}
        for name, ch in self.channels.items():
            dead = np.flatnonzero(ch.dead())
            if dead.size:
                out[name] = [int(i) for i in dead]
        return out

    def render(self) -> Group:
        from bnfold.quantize.report import render_quantize

        return render_quantize(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "output": self.output,
            "passed": self.passed,
            "forced": self.forced,
            "options": self.options.to_dict(),
            "types": self.types.to_dict(),
            "forward": self.forward,
            "calibration": self.calibration.to_dict(),
            "evaluation": self.evaluation.to_dict() if self.evaluation else None,
            "fold": self.fold.report.to_dict(),
            "fold_check": self.fold_check,
            "batchnorm_channels": [c.to_dict() for c in self.channels.values()],
            "dead_channels": self.dead_channels,
            "float_ops": self.float_ops.to_dict(),
            "proof": self.proof.to_dict() if self.proof else None,
            "sizes": self.sizes,
            "bench": self.bench,
            "timings": self.timings,
            "notes": self.notes,
        }


def model_inputs(model: str | os.PathLike[str], provider: str = "cpu") -> list[InputInfo]:
    """The inputs of ``model`` as onnxruntime sees them."""
    return session_inputs(make_session(model_ref(model, "model"), provider=provider))


def fold_for_int8(model: Any, forward: str | None = None) -> tuple[FoldResult, str]:
    """Fold ``model`` for an int8 target; return the result and the forward mode used
    (``None``: int8-safe)."""
    mode = forward or "int8-safe"
    if mode not in FORWARD_MODES:
        raise UsageError(f"--forward must be one of {', '.join(FORWARD_MODES)}, not {mode!r}")
    return bnfold.fold(model, forward=mode), mode


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Silence the quantizer's logging warnings, its histogram prints and ORT's C++ warnings."""
    import onnxruntime as ort

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(3)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)
        ort.set_default_logger_severity(2)


def ort_quantize(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    calibration: Dataset,
    types: QuantTypes,
    *,
    method: str = "minmax",
    exclude: Sequence[str] = (),
) -> None:
    """``onnxruntime.quantization.quantize_static``: QDQ, per-channel weights, ``types``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )

    batches = [b.feeds for b in calibration.batches]
    if method != "minmax" and len({b.samples for b in calibration.batches}) > 1:
        # onnxruntime's histogram calibrators stack the runs' outputs: they must share a shape
        batches = [calibration.merged().feeds]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    activation, weight = types.ort()
    with quiet_onnxruntime():
        try:
            quantize_static(
                os.fspath(source),
                os.fspath(output),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=types.reduce_range,
                activation_type=activation,
                weight_type=weight,
                nodes_to_exclude=list(exclude) or None,
                calibrate_method=methods[method],
            )
        except Exception as exc:  # onnxruntime's quantizer raises many types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BadInputError(source, f"onnxruntime's quantizer failed: {first}") from exc


def _node_names(model: onnx.ModelProto) -> set[str]:
    return {n.name for n in model.graph.node if n.name}


def _check_exclude(
    exclude: Sequence[str], original: onnx.ModelProto, folded: onnx.ModelProto, path: str
) -> None:
    have, before = _node_names(folded), _node_names(original)
    for name in exclude:
        if name in have:
            continue
        if name in before:
            raise UsageError(f"--exclude {name}: that node was folded away; nothing to exclude")
        raise BadInputError(path, f"--exclude {name}: no node of that name")


def _verify_fold(
    model: Path, folded: Path, batch: dict[str, np.ndarray], tmp: Path, provider: str
) -> dict[str, Any]:
    sample = tmp / "fold_check.npz"
    arrays: dict[str, Any] = {k: v[:16] for k, v in batch.items()}
    np.savez(sample, **arrays)
    check = check_models(
        model, folded, CheckOptions(samples=0, inputs=[sample], provider=provider, locate=True)
    )
    result = check.to_dict()
    if not check.passed:
        raise VerificationError(
            f"{model}: the folded model differs from the original beyond tolerance on the "
            f"calibration data in {len(check.failed_outputs)} output(s); nothing written",
            result,
        )
    return result


def quantize_file(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: QuantizeOptions | None = None,
    *,
    also_writes: Sequence[paths.Output] = (),
) -> QuantizeResult:
    """Fold ``model``, quantize it to int8 with onnxruntime, prove it, write ``output``.

    Before any work ``output`` (and its external-data file) and ``also_writes`` (the caller's
    other outputs, e.g. a report) are checked against the model, its external data, the
    calibration and evaluation files and each other (``bnfold.paths.guard``).

    Raises BadInputError / UsageError on bad input (nothing written) and VerificationError when
    the fold or the int8 proof fails (nothing written unless ``options.force``; the error's
    ``result`` is the QuantizeResult, or the fold check's dict when the fold failed).
    """
    options = options or QuantizeOptions()
    options.validate()
    model, output = Path(model), Path(output)
    paths.guard(
        [paths.Output("-o", output, "model"), *also_writes],
        models=[model],
        files=npz_files([*options.calibration, *options.eval]),
        in_place_hint=False,
    )
    start = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []

    def lap(step: str) -> None:
        nonlocal start
        now = time.perf_counter()
        timings[step] = round(now - start, 4)
        start = now

    infos = model_inputs(model, options.provider)
    calibration = resolve_dataset(
        options.calibration, infos, split="train",
        limit=options.calibration_samples
        or (None if options.calibration else CALIBRATION_SAMPLES),
    )  # fmt: skip
    if calibration is None:
        raise UsageError(
            f"{model}: give --calibration DATA (.npz files or a folder of them, one array per "
            "input); the bundled digits serve only the zoo models (input 'input', (N, 1, 8, 8))"
        )
    evaluation = None
    if options.prove:
        evaluation = resolve_dataset(options.eval, infos, split="test", limit=options.eval_samples)
        if evaluation is None:
            evaluation = calibration
            notes.append(
                "no --eval data: the int8 model was proved on the calibration data (not held out)"
            )
    types = options.types()
    lap("data")

    original = onnx.load(os.fspath(model), load_external_data=False)
    folded, forward = fold_for_int8(model, options.forward)
    lap("fold")
    with tempfile.TemporaryDirectory(prefix="bnfold-quantize-") as tmp_dir:
        tmp = Path(tmp_dir)
        folded_path = tmp / "folded.onnx"
        folded.save(folded_path)
        fold_check = None
        if folded.report.folded:
            fold_check = _verify_fold(
                model, folded_path, calibration.batches[0].feeds, tmp, options.provider
            )
        lap("fold_check")
        folded_proto = onnx.load(os.fspath(folded_path), load_external_data=False)
        _check_exclude(options.exclude, original, folded_proto, os.fspath(model))
        channels = bn_channels(model, calibration.feeds(), provider=options.provider)
        lap("channels")
        with atomic_path(output) as staged:
            ort_quantize(
                folded_path, staged, calibration, types,
                method=options.method, exclude=options.exclude,
            )  # fmt: skip
            lap("quantize")
            proof = None
            if evaluation is not None:
                proof = prove_int8(
                    model, staged, evaluation, options.thresholds, provider=options.provider
                )
            lap("prove")
            ops = float_ops(staged, provider=options.provider)
            lap("float_ops")
            sizes = {
                "fp32": model.stat().st_size,
                "folded": folded_path.stat().st_size,
                "int8": staged.stat().st_size,
            }
            result = QuantizeResult(
                model=os.fspath(model), output=None, options=options, types=types,
                forward=forward, calibration=calibration, evaluation=evaluation, fold=folded, fold_check=fold_check,
                channels=channels, float_ops=ops, proof=proof, sizes=sizes, timings=timings,
                notes=notes,
            )  # fmt: skip
            if not result.passed:
                if not options.force:
                    assert proof is not None
                    raise VerificationError(
                        f"{model}: the int8 model fails its proof ({'; '.join(proof.failures)}); "
                        "nothing written (--force writes it anyway)",
                        result,
                    )
                result.forced = True
        result.output = os.fspath(output)
    return result

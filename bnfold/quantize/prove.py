"""Prove an int8 model against its fp32 original on held-out data.

Both models run with onnxruntime on the same batches: the fp32 original with optimisations off
(the reference, exactly as written), the int8 model at ORT_ENABLE_ALL (as it is deployed: QDQ
groups become integer kernels). Per output: max and mean absolute error and the max error over
the reference's range; for classifier outputs ((N, C) floats, C > 1) the share of samples whose
top-1 class agrees, and the accuracy of both models where the data holds ``labels``.
The verdict compares these with the user's thresholds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnfold.errors import BadInputError, UsageError
from bnfold.quantize.data import Dataset
from bnfold.verify.session import make_session, model_ref, run_feeds

__all__ = ["MIN_AGREEMENT", "OutputProof", "Proof", "ProofThresholds", "prove_int8"]

MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class ProofThresholds:
    """Pass when every classifier output agrees on at least ``min_agreement`` of the samples,
    and (when set) accuracy drops by at most ``max_accuracy_drop`` and every output's mean abs
    error is at most ``max_mean_error``."""

    min_agreement: float = MIN_AGREEMENT
    max_accuracy_drop: float | None = None
    max_mean_error: float | None = None

    def validate(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise UsageError(f"--min-agreement must be in [0, 1], not {self.min_agreement}")
        for flag, value in (
            ("--max-accuracy-drop", self.max_accuracy_drop),
            ("--max-mean-error", self.max_mean_error),
        ):
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise UsageError(f"{flag} must be a finite number >= 0, not {value}")

    def to_dict(self) -> dict[str, float | None]:
        return dict(vars(self))


@dataclass
class OutputProof:
    """One output over every sample."""

    name: str
    shape: list[int]
    classifier: bool
    max_abs: float
    mean_abs: float
    max_rel_range: float
    agreement: float | None = None
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_fp32 is None or self.accuracy_int8 is None:
            return None
        return self.accuracy_fp32 - self.accuracy_int8

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "accuracy_drop": self.accuracy_drop}


@dataclass
class Proof:
    """Every output's figures, the thresholds, the verdict and why."""

    data: dict[str, Any]
    thresholds: ProofThresholds
    outputs: list[OutputProof] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "data": self.data,
            "thresholds": self.thresholds.to_dict(),
            "outputs": [o.to_dict() for o in self.outputs],
            "failures": self.failures,
            "notes": self.notes,
        }

    def verdict(self) -> str:
        """One line."""
        if self.failures:
            return "FAILED: " + "; ".join(self.failures)
        parts = []
        for o in self.outputs:
            if o.agreement is not None:
                part = f"{o.name}: top-1 agreement {o.agreement:.4f}"
                if o.accuracy_int8 is not None and o.accuracy_fp32 is not None:
                    part += f", accuracy {o.accuracy_fp32:.4f} -> {o.accuracy_int8:.4f}"
                parts.append(part)
        if not parts:
            parts = [f"{o.name}: mean |error| {o.mean_abs:.3g}" for o in self.outputs]
        return "passed (" + "; ".join(parts) + ")"


def _is_classifier(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "f" and arr.ndim == 2 and arr.shape[1] > 1


def prove_int8(
    fp32: Any,
    int8: Any,
    data: Dataset,
    thresholds: ProofThresholds | None = None,
    *,
    provider: str = "cpu",
    int8_level: str = "all",
) -> Proof:
    """Run ``fp32`` (optimisations off) and ``int8`` (``int8_level``) on ``data``; judge them."""
    thresholds = thresholds or ProofThresholds()
    thresholds.validate()
    if not data.batches:
        raise UsageError("no evaluation data")
    fp32_ref, int8_ref = model_ref(fp32, "fp32"), model_ref(int8, "int8")
    ref = make_session(fp32_ref, provider=provider, opt_level="disable")
    cand = make_session(int8_ref, provider=provider, opt_level=int8_level)
    names = [o.name for o in ref.get_outputs()]
    missing = [n for n in names if n not in {o.name for o in cand.get_outputs()}]
    if missing:
        raise UsageError(f"the int8 model lacks output(s) {', '.join(missing)}")
    refs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    cands: dict[str, list[np.ndarray]] = {n: [] for n in names}
    labels: list[np.ndarray] = []
    for batch in data.batches:
        r = run_feeds(ref, batch.feeds, names, batch.label, fp32_ref.path)
        c = run_feeds(cand, batch.feeds, names, batch.label, int8_ref.path)
        for n in names:
            refs[n].append(r[n])
            cands[n].append(c[n])
        if batch.labels is not None:
            labels.append(batch.labels)
    y = np.concatenate(labels) if data.has_labels else None
    _check_labels(data, [refs[n][0].shape[1] for n in names if _is_classifier(refs[n][0])])
    proof = Proof(data.to_dict(), thresholds)
    for n in names:
        a = np.concatenate(
            [x.reshape(x.shape[0], -1) if x.ndim else x.reshape(1, 1) for x in refs[n]]
        )
        b = np.concatenate(
            [x.reshape(x.shape[0], -1) if x.ndim else x.reshape(1, 1) for x in cands[n]]
        )
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        err = np.abs(a64 - b64)
        span = float(a64.max() - a64.min()) if a64.size else 0.0
        shape = list(refs[n][0].shape[1:])
        classifier = _is_classifier(refs[n][0])
        out = OutputProof(
            name=n,
            shape=shape,
            classifier=classifier,
            max_abs=float(err.max()) if err.size else 0.0,
            mean_abs=float(err.mean()) if err.size else 0.0,
            max_rel_range=float(err.max()) / span if span > 0 and err.size else 0.0,
        )
        if classifier:
            top_a, top_b = a.argmax(axis=1), b.argmax(axis=1)
            out.agreement = float((top_a == top_b).mean())
            if y is not None and len(y) == len(top_a) and _fits(y, a.shape[1]):
                out.accuracy_fp32 = float((top_a == y).mean())
                out.accuracy_int8 = float((top_b == y).mean())
        proof.outputs.append(out)
    _judge(proof)
    return proof


def _fits(y: np.ndarray, classes: int) -> bool:
    return not y.size or (int(y.min()) >= 0 and int(y.max()) < classes)


def _check_labels(data: Dataset, classes: list[int]) -> None:
    """Labels must be class ids of one classifier output at least (accuracy is given for the
    outputs they fit), or accuracy means nothing."""
    if not classes:
        return
    most = max(classes)
    for batch in data.batches:
        y = batch.labels
        if y is not None and not _fits(y, most):
            source = batch.label.split("[", 1)[0]
            raise BadInputError(
                source,
                f"labels must be class ids 0..{most - 1} (the model has {most} classes), "
                f"got {int(y.min())}..{int(y.max())}",
            )


def _judge(proof: Proof) -> None:
    t = proof.thresholds
    classifiers = [o for o in proof.outputs if o.agreement is not None]
    for o in classifiers:
        assert o.agreement is not None
        if o.agreement < t.min_agreement:
            proof.failures.append(
                f"{o.name}: top-1 agreement {o.agreement:.4f} < --min-agreement {t.min_agreement}"
            )
        drop = o.accuracy_drop
        if t.max_accuracy_drop is not None and drop is not None and drop > t.max_accuracy_drop:
            proof.failures.append(
                f"{o.name}: accuracy drops {drop:.4f} > --max-accuracy-drop {t.max_accuracy_drop}"
            )
    if t.max_mean_error is not None:
        for o in proof.outputs:
            if o.mean_abs > t.max_mean_error:
                proof.failures.append(
                    f"{o.name}: mean |error| {o.mean_abs:.4g} > --max-mean-error {t.max_mean_error}"
                )
    if not classifiers:
        proof.notes.append(
            "no classifier output ((N, C) floats): agreement does not apply"
            + ("" if t.max_mean_error is not None else "; set --max-mean-error to judge the errors")
        )
    if t.max_accuracy_drop is not None and not any(
        o.accuracy_drop is not None for o in proof.outputs
    ):
        proof.notes.append("--max-accuracy-drop needs labels in the evaluation data")

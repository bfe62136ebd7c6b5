"""Run a reference and a candidate model on the same inputs and compare every output."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnfold.errors import BadInputError, UsageError
from bnfold.verify.inputs import InputSet, input_sets, session_inputs
from bnfold.verify.locate import Divergence, locate_divergence
from bnfold.verify.precision import ComputePrecision, compute_precision
from bnfold.verify.session import (
    ModelRef,
    check_opt_level,
    model_ref,
    open_session,
    run_feeds,
)
from bnfold.verify.settings import RunSettings
from bnfold.verify.stats import (
    MODES,
    ErrorStats,
    Tolerance,
    compare_arrays,
    failed_stats,
    incomparable,
    is_text,
    json_float,
    noise_multiple,
)

# Default (atol, rtol) by output dtype, used where CheckOptions leaves atol/rtol as None.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-2),
    "bfloat16": (1e-2, 5e-2),
    "float32": (1e-5, 1e-4),
    "float64": (1e-9, 1e-7),
}
EXACT_TOLERANCE = (0.0, 0.0)  # integers, bools, strings


@dataclass
class CheckOptions(RunSettings):
    """How to compare two models: the shared input and session settings (``RunSettings``: a
    symbolic batch dim runs at ``batch``, 1 by default), ``samples`` random input sets, the
    ``opt_level``, and tolerances. ``atol``/``rtol`` None mean the default of the lower of the
    output's dtype and the lowest float precision the reference computes in (float32: 1e-5 /
    1e-4, float16: 1e-3 / 1e-2, bfloat16: 1e-2 / 5e-2, float64: 1e-9 / 1e-7, integers and bools:
    exact): an fp16 model with fp32 outputs gets fp16 tolerances. ``per_output`` maps an output
    name to its own (atol, rtol)."""

    samples: int = 3
    opt_level: str = "disable"
    atol: float | None = None
    rtol: float | None = None
    mode: str = "range"
    per_output: dict[str, tuple[float, float]] = field(default_factory=dict)
    calibrate: bool = False
    locate: bool = False

    def validate(self) -> None:
        super().validate()
        if self.mode not in MODES:
            raise UsageError(
                f"--tolerance-mode must be one of {', '.join(MODES)}, not {self.mode!r}"
            )
        for name, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if value is not None and not 0 <= value < math.inf:
                raise UsageError(f"{name} must be finite and >= 0, not {value}")
        for output, (atol, rtol) in self.per_output.items():
            if not (0 <= atol < math.inf and 0 <= rtol < math.inf):
                raise UsageError(
                    f"--output-tol {output}={atol},{rtol}: both must be finite and >= 0"
                )
        if self.samples < 0:
            raise UsageError(f"--samples must be >= 0, not {self.samples}")
        check_opt_level(self.opt_level)

    def tolerance(
        self, output: str, dtype: np.dtype | str, precision: ComputePrecision | None = None
    ) -> Tolerance:
        return self.tolerance_rule(output, dtype, precision)[0]

    def tolerance_rule(
        self, output: str, dtype: np.dtype | str, precision: ComputePrecision | None = None
    ) -> tuple[Tolerance, str]:
        """The tolerance for one output and the rule that chose it (for the report)."""
        if output in self.per_output:
            atol, rtol = self.per_output[output]
            return Tolerance(atol, rtol, self.mode), f"--output-tol {output}"
        name = np.dtype(dtype).name
        basis = name if precision is None else precision.lowest(name)
        default = DEFAULT_TOLERANCES.get(basis, EXACT_TOLERANCE)
        atol = default[0] if self.atol is None else self.atol
        rtol = default[1] if self.rtol is None else self.rtol
        if self.atol is not None and self.rtol is not None:
            rule = "--atol/--rtol"
        elif basis not in DEFAULT_TOLERANCES:
            rule = f"exact ({name})"
        elif basis != name and precision is not None:
            rule = f"{basis} defaults: {precision.describe()}"
        else:
            rule = f"{basis} defaults"
        if (self.atol is None) != (self.rtol is None):
            rule += " with " + ("--atol" if self.atol is not None else "--rtol")
        return Tolerance(atol, rtol, self.mode), rule

    def check_output_names(self, names: list[str]) -> None:
        """Refuse ``per_output`` tolerances for outputs the model does not have."""
        unknown = [n for n in self.per_output if n not in names]
        if unknown:
            outputs = ", ".join(names)
            raise UsageError(
                f"per_output {unknown[0]!r}: the reference has no output of that name "
                f"(outputs: {outputs})",
                cli=f"--output-tol {unknown[0]}=...: the reference has no output of that name "
                f"(outputs: {outputs})",
            )


@dataclass
class Calibration:
    """The reference's own noise on one output: its max abs change under another setting."""

    setting: str
    noise_abs: float
    noise_floor: float  # max(noise_abs, dtype epsilon x output range)
    error_vs_noise: float  # candidate max abs error / noise_floor

    def to_dict(self) -> dict[str, Any]:
        return {k: json_float(v) if isinstance(v, float) else v for k, v in vars(self).items()}


@dataclass
class OutputResult:
    """The comparison of one output over every input set."""

    name: str
    candidate_name: str
    dtype: str
    shapes: list[tuple[int, ...]]
    tolerance: Tolerance
    stats: ErrorStats
    problem: str | None = None
    calibration: Calibration | None = None
    rule: str = ""  # how the tolerance was chosen

    @property
    def passed(self) -> bool:
        return self.problem is None and self.stats.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "candidate_name": self.candidate_name,
            "dtype": self.dtype,
            "shapes": [list(s) for s in self.shapes],
            "tolerance": vars(self.tolerance),
            "tolerance_rule": self.rule,
            "passed": self.passed,
            "problem": self.problem,
            **self.stats.to_dict(),
            "calibration": self.calibration.to_dict() if self.calibration else None,
        }


@dataclass
class CheckResult:
    """Everything ``check_models`` found; ``passed`` is True when every output is within tolerance."""

    reference: str
    candidate: str
    options: CheckOptions
    input_sets: list[str]
    outputs: list[OutputResult]
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)
    precision: str | None = None  # the lowest float the reference computes in

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def failed_outputs(self) -> list[str]:
        return [o.name for o in self.outputs if not o.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reference": self.reference,
            "candidate": self.candidate,
            "options": self.options.to_dict(),
            "input_sets": self.input_sets,
            "outputs": [o.to_dict() for o in self.outputs],
            "locate": self.divergence.to_dict() if self.divergence else None,
            "precision": self.precision,
            "notes": self.notes,
        }

    def render(self):
        """A rich renderable (table and notes) for a terminal."""
        from bnfold.verify.report import render_check

        return render_check(self)


def _run_all(
    session, sets: list[InputSet], names: list[str], model: Path | None = None
) -> list[dict[str, np.ndarray]]:
    return [run_feeds(session, s.feeds, names, s.label, model) for s in sets]


def _pair_outputs(
    ref_names: list[str], cand_names: list[str], notes: list[str]
) -> list[tuple[str, str]]:
    if set(ref_names) == set(cand_names):
        return [(n, n) for n in ref_names]
    if len(ref_names) == len(cand_names):
        notes.append("output names differ; outputs were paired by position")
        return list(zip(ref_names, cand_names, strict=True))
    raise BadInputError(
        None,
        f"the models' outputs differ: reference has {', '.join(ref_names)}; "
        f"candidate has {', '.join(cand_names)}",
    )


def _compare_output(
    ref_name: str,
    cand_name: str,
    ref_runs: list[dict],
    cand_runs: list[dict],
    options: CheckOptions,
    precision: ComputePrecision | None = None,
) -> OutputResult:
    refs = [r[ref_name] for r in ref_runs]
    cands = [c[cand_name] for c in cand_runs]
    dtype = str(refs[0].dtype)
    tol, rule = options.tolerance_rule(ref_name, refs[0].dtype, precision)
    shapes = [tuple(r.shape) for r in refs]
    for r, c in zip(refs, cands, strict=True):
        problem = incomparable(r, c)
        if problem:
            return OutputResult(
                ref_name, cand_name, dtype, shapes, tol, failed_stats(r.size), problem, rule=rule
            )
    if is_text(refs[0].dtype):  # strings: equal or not
        equal = all(np.array_equal(r, c) for r, c in zip(refs, cands, strict=True))
        size = sum(r.size for r in refs)
        stats = compare_arrays(np.zeros(size), np.zeros(size) if equal else np.ones(size), tol)
        return OutputResult(ref_name, cand_name, dtype, shapes, tol, stats, rule=rule)
    ref_all = np.concatenate([r.ravel() for r in refs])
    cand_all = np.concatenate([c.ravel() for c in cands])
    stats = compare_arrays(ref_all, cand_all, tol)
    return OutputResult(ref_name, cand_name, dtype, shapes, tol, stats, rule=rule)


def _calibrate(
    ref: ModelRef,
    sets: list[InputSet],
    outputs: list[OutputResult],
    ref_runs: list[dict],
    options: CheckOptions,
) -> None:
    """Rerun the reference at another optimisation level; its change is the noise floor."""
    other = "all" if options.opt_level != "all" else "disable"
    session = open_session(ref, options.session(other))
    names = [o.name for o in outputs]
    alt_runs = _run_all(session, sets, names, ref.path)
    for out in outputs:
        dtype = np.dtype(out.dtype)
        if out.problem or is_text(dtype):
            continue
        ref_all = np.concatenate([r[out.name].ravel() for r in ref_runs])
        alt_all = np.concatenate([a[out.name].ravel() for a in alt_runs])
        noise = compare_arrays(ref_all, alt_all, out.tolerance).max_abs
        eps = float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else 0.0
        floor = max(noise, eps * out.stats.ref_range)
        out.calibration = Calibration(
            setting=f"reference at opt-level {other} vs {options.opt_level}",
            noise_abs=noise,
            noise_floor=floor,
            error_vs_noise=noise_multiple(out.stats.max_abs, floor),
        )


def check_models(
    reference: Any, candidate: Any, options: CheckOptions | None = None
) -> CheckResult:
    """Compare every output of ``candidate`` with ``reference`` on the same inputs.

    ``reference``/``candidate``: a path, an ``onnx.ModelProto`` or serialized bytes (models over
    2 GB, with external data, by path). The two sessions never exist at once: the reference runs
    on every input set and is released, keeping only its outputs, then the candidate runs, so
    memory peaks near one model, not two. Raises BadInputError/UsageError for unusable inputs;
    a failed comparison is a result with ``passed`` False, not an exception.
    """
    options = options or CheckOptions()
    options.validate()
    ref, cand = model_ref(reference, "reference"), model_ref(candidate, "candidate")
    session = options.session(options.opt_level)
    ref_sess = open_session(ref, session)
    infos = session_inputs(ref_sess)
    ref_names = [o.name for o in ref_sess.get_outputs()]
    options.check_output_names(ref_names)
    sets, notes = input_sets(infos, options, samples=options.samples, model=ref.path)
    ref_runs = _run_all(ref_sess, sets, ref_names, ref.path)
    del ref_sess  # frees its weights before the candidate's are loaded
    cand_sess = open_session(cand, session)
    ref_types = {i.name: i.type for i in infos}
    for i in session_inputs(cand_sess):
        if ref_types.get(i.name) != i.type:
            raise BadInputError(
                cand.path,
                f"candidate input {i.name!r} ({i.type}) is not an input of the reference "
                f"(reference inputs: {', '.join(f'{k} ({v})' for k, v in ref_types.items())})",
            )
    pairs = _pair_outputs(ref_names, [o.name for o in cand_sess.get_outputs()], notes)
    cand_runs = _run_all(cand_sess, sets, [p[1] for p in pairs], cand.path)
    del cand_sess
    precision = compute_precision(ref.load(with_external_data=False))
    outputs = [_compare_output(r, c, ref_runs, cand_runs, options, precision) for r, c in pairs]
    if options.calibrate:
        _calibrate(ref, sets, outputs, ref_runs, options)
    result = CheckResult(
        ref.display, cand.display, options, [s.label for s in sets], outputs, notes=notes,
        precision=precision.dtype,
    )  # fmt: skip
    if options.locate and not result.passed:

        def compare(name: str, r: np.ndarray, c: np.ndarray) -> ErrorStats:
            return compare_arrays(r, c, options.tolerance(name, r.dtype, precision))

        result.divergence = locate_divergence(ref, cand, sets, compare, session)
        if result.divergence is None:
            notes.append("--locate: no intermediate tensor shared by both graphs diverges")
    return result

"""Measure the latency of a reference and a candidate model, paired and shuffled per round."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bnfold.bench.memory import PeakMemory, peak_memory
from bnfold.bench.stats import Speedup, paired_speedup
from bnfold.errors import UsageError
from bnfold.verify.inputs import input_sets, session_inputs
from bnfold.verify.session import (
    ModelRef,
    check_opt_level,
    model_ref,
    open_session,
    run_feeds,
    session_feeds,
)
from bnfold.verify.settings import RunSettings, SessionSettings

SIDES = ("reference", "candidate")
# Fewer paired rounds than this give bootstrap intervals too wide to call a small difference.
FEW_ROUNDS = 8


@dataclass
class BenchOptions(RunSettings):
    """How to measure: the shared input and session settings (``RunSettings``; a symbolic batch
    dim runs at ``batch``, 1 by default; the first real input set of ``inputs``, else one seeded
    random set, is fed), then per level ``rounds`` rounds that run both sessions, in shuffled
    order, ``iters`` times each, keeping each side's median. ``threads`` fixes intra-op threads
    (inter-op 1)."""

    threads: int | None = 1
    levels: tuple[str, ...] = ("disable", "all")
    warmup: int = 5
    rounds: int = 20
    iters: int = 10
    creation_repeats: int = 3
    memory: bool = True
    resamples: int = 2000

    def validate(self) -> None:
        super().validate()
        if not self.levels:
            raise UsageError("--opt-level: give at least one level")
        for level in self.levels:
            check_opt_level(level)
        for name in ("rounds", "iters", "creation_repeats"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
        if self.warmup < 0:
            raise UsageError("--warmup must be >= 0")


@dataclass
class ModelFacts:
    """Static facts about one side: file size, node and BatchNormalization counts."""

    path: str
    size_bytes: int
    nodes: int
    batchnorm_nodes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class SideTiming:
    """One side at one optimisation level."""

    creation_s: float
    round_medians_ms: list[float]
    memory: PeakMemory | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.round_medians_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "creation_s": self.creation_s,
            "median_ms": self.median_ms,
            "round_medians_ms": self.round_medians_ms,
            "memory": self.memory.to_dict() if self.memory else None,
        }


@dataclass
class LevelResult:
    """Both sides at one optimisation level, and the candidate's speed-up."""

    level: str
    sides: dict[str, SideTiming]
    speedup: Speedup

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            **{side: t.to_dict() for side, t in self.sides.items()},
            "speedup": self.speedup.to_dict(),
            "creation_speedup": self.sides["reference"].creation_s
            / self.sides["candidate"].creation_s,
        }


@dataclass
class BenchResult:
    """Everything ``bench_models`` measured."""

    options: BenchOptions
    models: dict[str, ModelFacts]
    input_shapes: dict[str, list[int]]
    levels: list[LevelResult]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def slower_than(self, bound: float) -> list[LevelResult]:
        """Levels whose whole speed-up interval lies below ``bound`` (e.g. 0.95: the candidate
        is measurably more than about 5% slower); a level within noise never counts."""
        return [lv for lv in self.levels if lv.speedup.ci_high < bound]

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": self.options.to_dict(),
            "models": {side: m.to_dict() for side, m in self.models.items()},
            "input_shapes": self.input_shapes,
            "levels": [lv.to_dict() for lv in self.levels],
            "environment": self.environment,
            "notes": self.notes,
            "note": MEASUREMENT_NOTE,
        }

    def render(self):
        from bnfold.bench.report import render_bench

        return render_bench(self)


MEASUREMENT_NOTE = (
    "onnxruntime's basic level already folds Conv+BN, ConvTranspose+BN and MatMul+BN when it "
    "creates a session, but not Gemm+BN; an offline fold shows at opt-level disable, in session "
    "creation time, on Gemm+BN models and on runtimes that do not fuse."
)


def _count_nodes(graph: onnx.GraphProto) -> tuple[int, int]:
    nodes = bns = 0
    for node in graph.node:
        nodes += 1
        bns += node.op_type == "BatchNormalization"
        for attr in node.attribute:
            for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                n, b = _count_nodes(g)
                nodes, bns = nodes + n, bns + b
    return nodes, bns


def _facts(ref: ModelRef) -> ModelFacts:
    model = ref.load(with_external_data=False)
    nodes, bns = _count_nodes(model.graph)
    return ModelFacts(ref.display, ref.size_bytes(model), nodes, bns)


def _creation_time(ref: ModelRef, repeats: int, session: SessionSettings) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        open_session(ref, session)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _run_ms(session, feeds: dict[str, np.ndarray], iters: int) -> float:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        session.run(None, feeds)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(times)


def _on_disk(ref: ModelRef, workdir: Path) -> Path:
    if ref.path is not None:
        return ref.path
    path = workdir / f"{ref.label}.onnx"
    path.write_bytes(ref.data or b"")
    return path


@dataclass
class MultiLevelResult:
    """Every model at one optimisation level, measured in the same shuffled rounds."""

    level: str
    sides: dict[str, SideTiming]


@dataclass
class MultiBenchResult:
    """Everything ``bench_many`` measured; speed-ups of any pair come from the shared rounds."""

    options: BenchOptions
    models: dict[str, ModelFacts]
    input_shapes: dict[str, list[int]]
    levels: list[MultiLevelResult]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def speedup(self, level: str, reference: str, candidate: str) -> Speedup:
        """``reference`` latency / ``candidate`` latency at ``level``, paired by round."""
        (lv,) = (x for x in self.levels if x.level == level)
        return paired_speedup(
            lv.sides[reference].round_medians_ms,
            lv.sides[candidate].round_medians_ms,
            resamples=self.options.resamples,
            seed=self.options.seed,
        )

    def to_dict(self, pairs: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """JSON; ``pairs`` of (reference, candidate) get their speed-up at every level."""
        return {
            "options": self.options.to_dict(),
            "models": {label: m.to_dict() for label, m in self.models.items()},
            "input_shapes": self.input_shapes,
            "levels": [
                {
                    "level": lv.level,
                    "sides": {label: t.to_dict() for label, t in lv.sides.items()},
                    "speedups": [
                        {
                            "reference": r,
                            "candidate": c,
                            **self.speedup(lv.level, r, c).to_dict(),
                        }  # fmt: skip
                        for r, c in pairs
                    ],
                }
                for lv in self.levels
            ],
            "environment": self.environment,
            "notes": self.notes,
        }


def bench_many(models: Mapping[str, Any], options: BenchOptions | None = None) -> MultiBenchResult:
    """Time every model of ``models`` (label -> path, ModelProto or bytes) at each level.

    The design of :func:`bench_models` for any number of models: per level, session creation
    (median of ``creation_repeats``), warm-up, then ``rounds`` rounds that run every session in
    a seeded shuffled order ``iters`` times each, keeping each model's median per round; peak
    memory from a child process per model and level. Speed-ups of any two models are paired by
    round (:meth:`MultiBenchResult.speedup`). The first model's inputs define the feeds.
    """
    options = options or BenchOptions()
    options.validate()
    labels = list(models)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise UsageError("bench: give at least two models with distinct labels")
    refs = {label: model_ref(m, label) for label, m in models.items()}
    probe = open_session(refs[labels[0]], options.session("disable"))
    infos = session_inputs(probe)
    sets, notes = input_sets(
        infos, options, samples=0 if options.inputs else 1, model=refs[labels[0]].path
    )
    sample = sets[0]
    feeds = sample.feeds
    rng = np.random.default_rng(options.seed)
    levels = []
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as tmp:
        npz = Path(tmp) / "inputs.npz"
        arrays: dict[str, Any] = dict(feeds)
        np.savez(npz, **arrays)
        on_disk = {s: _on_disk(r, Path(tmp)) for s, r in refs.items()} if options.memory else {}
        for level in options.levels:
            session = options.session(level)
            creation = {
                s: _creation_time(r, options.creation_repeats, session) for s, r in refs.items()
            }
            sessions = {s: open_session(r, session) for s, r in refs.items()}
            side_feeds = {s: session_feeds(sessions[s], feeds) for s in labels}
            for s in labels:
                # one checked run first: an input onnxruntime rejects is a BadInputError (exit 2)
                outputs = [o.name for o in sessions[s].get_outputs()]
                run_feeds(sessions[s], side_feeds[s], outputs, sample.label, refs[s].path)
                for _ in range(options.warmup):
                    sessions[s].run(None, side_feeds[s])
            rounds: dict[str, list[float]] = {s: [] for s in labels}
            for _ in range(options.rounds):
                for s in map(str, rng.permutation(labels)):
                    rounds[s].append(_run_ms(sessions[s], side_feeds[s], options.iters))
            del sessions
            memory: dict[str, PeakMemory | None] = {s: None for s in labels}
            if options.memory:
                memory = {s: peak_memory(on_disk[s], npz, session) for s in labels}
            sides = {s: SideTiming(creation[s], rounds[s], memory[s]) for s in labels}
            levels.append(MultiLevelResult(level, sides))
    return MultiBenchResult(
        options=options,
        models={s: _facts(r) for s, r in refs.items()},
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
        levels=levels,
        environment=_environment(),
        notes=notes,
    )


def bench_models(
    reference: Any, candidate: Any, options: BenchOptions | None = None
) -> BenchResult:
    """Time ``reference`` and ``candidate`` (paths, ModelProtos or bytes) at each level.

    Per level: session creation (median of ``creation_repeats``), warm-up, then ``rounds``
    rounds that run the two sessions in a seeded shuffled order; the speed-up is the median of the
    per-round ratios reference/candidate with a bootstrap 95% interval. Peak memory comes from a
    child process per side and level.
    """
    many = bench_many({"reference": reference, "candidate": candidate}, options)
    return BenchResult(
        options=many.options,
        models=many.models,
        input_shapes=many.input_shapes,
        levels=[
            LevelResult(lv.level, lv.sides, many.speedup(lv.level, *SIDES)) for lv in many.levels
        ],
        environment=many.environment,
        notes=many.notes,
    )


def _environment() -> dict[str, Any]:
    import platform

    import onnxruntime as ort

    return {
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }

"""Measure what a fold buys: paired, shuffled latency rounds with a bootstrap interval."""

from bnfold.bench.bench import (
    MEASUREMENT_NOTE,
    BenchOptions,
    BenchResult,
    LevelResult,
    ModelFacts,
    MultiBenchResult,
    MultiLevelResult,
    SideTiming,
    bench_many,
    bench_models,
)
from bnfold.bench.memory import PeakMemory
from bnfold.bench.plot import write_plot
from bnfold.bench.report import render_bench
from bnfold.bench.stats import Speedup, bootstrap_median_ci, paired_speedup, verdict

__all__ = [
    "MEASUREMENT_NOTE",
    "BenchOptions",
    "BenchResult",
    "LevelResult",
    "ModelFacts",
    "MultiBenchResult",
    "MultiLevelResult",
    "PeakMemory",
    "SideTiming",
    "Speedup",
    "bench_many",
    "bench_models",
    "bootstrap_median_ci",
    "paired_speedup",
    "render_bench",
    "verdict",
    "write_plot",
]

"""Measure what a fold buys: paired, shuffled latency rounds with a bootstrap interval.

The names below are imported on first use (numpy, onnx and onnxruntime load then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnfold._lazy import lazy_attributes

if TYPE_CHECKING:
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

_BENCH = "bnfold.bench.bench"
_STATS = "bnfold.bench.stats"
__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        **dict.fromkeys(
            [
                "MEASUREMENT_NOTE",
                "BenchOptions",
                "BenchResult",
                "LevelResult",
                "ModelFacts",
                "MultiBenchResult",
                "MultiLevelResult",
                "SideTiming",
                "bench_many",
                "bench_models",
            ],
            _BENCH,
        ),  # fmt: skip
        "PeakMemory": "bnfold.bench.memory",
        "write_plot": "bnfold.bench.plot",
        "render_bench": "bnfold.bench.report",
        **dict.fromkeys(["Speedup", "bootstrap_median_ci", "paired_speedup", "verdict"], _STATS),
    },
    globals(),
)

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

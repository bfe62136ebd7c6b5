"""Forward+backward time of bnfold's reference BatchNorm2d against torch.nn.BatchNorm2d on CPU.

Training mode, float32, one CPU thread (``torch.set_num_threads(1)``), the three (N, C, H, W)
shapes of issue 10. For each shape both modules are warmed up, then timed for ``--rounds``
rounds; each round times ``iters`` forward+backward passes of one module, then of the other
(which goes first alternates), with ``iters`` chosen so a round lasts about ``--round-ms``. A
round's time is the median of its passes, and its ratio reference / torch compares two
neighbouring measurements, so a change of machine load between rounds cancels. Reported: the
median over rounds of each time and of the ratio, the ratio's quartiles, the minor page faults
per pass (fresh memory touched; they are much of the cost at the larger shapes and much of the
noise) and the load average before and after.

    python benchmarks/bench_reference_bn.py [--out benchmarks/results/bench_reference_bn.json]

With glibc told to keep freed memory (no fresh pages after warm-up), the ratio is that of the
arithmetic alone::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \
        python benchmarks/bench_reference_bn.py --out benchmarks/results/bench_reference_bn_kept_memory.json
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bnfold.atomic import write_json
from bnfold.train import BatchNorm2d

SHAPES = [(32, 16, 8, 8), (64, 64, 16, 16), (32, 128, 32, 32)]
NAMES = ("reference", "torch")


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time_passes(
    module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, iters: int
) -> tuple[float, float]:
    """(median seconds of one forward+backward pass, minor page faults per pass)."""
    times = []
    faults = _minor_faults()
    for _ in range(iters):
        xi = x.detach().requires_grad_()
        t0 = time.perf_counter()
        module(xi).backward(grad)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (_minor_faults() - faults) / iters


def _quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def bench_shape(shape: tuple[int, int, int, int], rounds: int, round_ms: float) -> dict:
    """Time both modules on one shape; a JSON-ready row."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    grad = torch.randn(shape)
    modules = {
        "reference": BatchNorm2d(shape[1]).train(),
        "torch": torch.nn.BatchNorm2d(shape[1]).train(),
    }
    warm = {name: _time_passes(m, x, grad, 5)[0] for name, m in modules.items()}
    slowest = max(warm.values())
    iters = max(3, min(500, math.ceil(round_ms / 1e3 / slowest)))
    for m in modules.values():  # a second warm-up at the timed length
        _time_passes(m, x, grad, iters)
    times: dict[str, list[float]] = {name: [] for name in NAMES}
    faults: dict[str, list[float]] = {name: [] for name in NAMES}
    ratios = []
    for r in range(rounds):
        order = NAMES if r % 2 == 0 else NAMES[::-1]
        for name in order:
            t, f = _time_passes(modules[name], x, grad, iters)
            times[name].append(t)
            faults[name].append(f)
        ratios.append(times["reference"][-1] / times["torch"][-1])
    q1, q3 = _quartiles(ratios)
    return {
        "shape": list(shape),
        "iters_per_round": iters,
        "reference_ms": round(statistics.median(times["reference"]) * 1e3, 4),
        "torch_ms": round(statistics.median(times["torch"]) * 1e3, 4),
        "ratio_reference_over_torch": round(statistics.median(ratios), 3),
        "ratio_quartiles": [round(q1, 3), round(q3, 3)],
        "minor_faults_per_pass": {
            name: round(statistics.median(faults[name]), 1) for name in NAMES
        },
    }


def print_table(results: list[dict]) -> None:
    table = Table(title="reference BatchNorm2d vs torch.nn.BatchNorm2d, fwd+bwd, CPU, 1 thread")
    for col in ("shape", "reference ms", "torch ms", "ratio", "ratio IQR", "faults/pass ref/torch"):
        table.add_column(col, justify="right")
    for row in results:
        f = row["minor_faults_per_pass"]
        q1, q3 = row["ratio_quartiles"]
        table.add_row(
            "×".join(map(str, row["shape"])),
            f"{row['reference_ms']:.3f}",
            f"{row['torch_ms']:.3f}",
            f"{row['ratio_reference_over_torch']:.2f}",
            f"{q1:.2f}–{q3:.2f}",
            f"{f['reference']:.0f} / {f['torch']:.0f}",
        )
    Console(width=110).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--round-ms", type=float, default=30.0, help="target length of a round")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/bench_reference_bn.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    malloc_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}
    load_before = os.getloadavg()
    results = [bench_shape(shape, args.rounds, args.round_ms) for shape in SHAPES]
    load_after = os.getloadavg()
    print_table(results)
    report = {
        "what": "forward+backward per pass, training mode, float32, CPU, 1 thread; times are "
        "medians over rounds of per-round medians; ratio = median over rounds of "
        "reference / torch (above 1: the reference is slower)",
        "command": " ".join([*(f"{k}={v}" for k, v in malloc_env.items()), "python", *sys.argv]),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1_5_15_before": [round(v, 2) for v in load_before],
            "load_average_1_5_15_after": [round(v, 2) for v in load_after],
            "malloc_env": malloc_env,
        },
        "rounds": args.rounds,
        "round_ms": args.round_ms,
        "results": results,
    }
    print(f"wrote {write_json(args.out, report)}")


if __name__ == "__main__":
    main()

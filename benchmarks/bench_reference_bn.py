"""Forward+backward time of bnfold's reference BatchNorm2d against torch.nn.BatchNorm2d.

Training mode, float32, a few (N, C, H, W) sizes, on CPU (and CUDA where available). Each size
times ``--rounds`` rounds of ``--iters`` forward+backward passes per module, alternating which
module goes first; reports the median per-pass time and the ratio reference / torch.

    python benchmarks/bench_reference_bn.py [--out benchmarks/results/bench_reference_bn.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from bnfold.train import BatchNorm2d

SIZES = [(32, 16, 8, 8), (64, 64, 16, 16), (32, 128, 28, 28), (16, 256, 56, 56)]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_pass(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor, iters: int) -> float:
    """Median seconds of one forward+backward pass over ``iters`` passes."""
    device = x.device.type
    times = []
    for _ in range(iters):
        xi = x.detach().requires_grad_()
        _sync(device)
        t0 = time.perf_counter()
        module(xi).backward(grad)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_size(shape: tuple[int, ...], device: str, rounds: int, iters: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(shape, device=device)
    grad = torch.randn(shape, device=device)
    modules = {
        "reference": BatchNorm2d(shape[1]).to(device).train(),
        "torch": torch.nn.BatchNorm2d(shape[1]).to(device).train(),
    }
    for m in modules.values():  # warm-up
        _time_pass(m, x, grad, 3)
    samples: dict[str, list[float]] = {"reference": [], "torch": []}
    for r in range(rounds):
        order = ("reference", "torch") if r % 2 == 0 else ("torch", "reference")
        for name in order:
            samples[name].append(_time_pass(modules[name], x, grad, iters))
    ref_ms = statistics.median(samples["reference"]) * 1e3
    torch_ms = statistics.median(samples["torch"]) * 1e3
    return {
        "device": device,
        "shape": list(shape),
        "reference_ms": round(ref_ms, 4),
        "torch_ms": round(torch_ms, 4),
        "ratio_reference_over_torch": round(ref_ms / torch_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/bench_reference_bn.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for shape in SIZES:
            row = bench_size(shape, device, args.rounds, args.iters)
            results.append(row)
            print(
                f"{device:<5} {'x'.join(map(str, shape)):<14} reference {row['reference_ms']:9.3f} ms"
                f"  torch {row['torch_ms']:9.3f} ms  ratio {row['ratio_reference_over_torch']:.2f}"
            )
    report = {
        "what": "median forward+backward time per pass, training mode, float32; "
        "ratio = reference / torch (above 1: the reference is slower)",
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_threads": args.threads,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "rounds": args.rounds,
        "iters": args.iters,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""CPU time of ``bnfold --help`` (and peers' ``--help``) before any work: start-up cost.

Each command runs ``--repeat`` times, interleaved across commands, in a fresh child process;
its user + system CPU time comes from ``os.wait4`` (the child's own rusage, its children
included once they are waited for). Also recorded: which heavy modules ``bnfold --help`` imports
(none should be: onnx, onnx_ir, onnxruntime, numpy, torch, matplotlib). Writes
``benchmarks/results/startup.json`` and prints a table (median and range per command).

    python benchmarks/bench_startup.py [--repeat 15] [--json PATH]

Peers are measured where their console scripts are installed beside this Python
(``onnxslim``, ``polygraphy``: ``pip install onnxslim polygraphy``); missing ones are listed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
HEAVY = ("onnx", "onnx_ir", "onnxruntime", "numpy", "torch", "matplotlib", "sympy")

COMMANDS = {
    "bnfold --help": [str(BIN / "bnfold"), "--help"],
    "bnfold fold --help": [str(BIN / "bnfold"), "fold", "--help"],
    "python -c pass": [sys.executable, "-c", "pass"],
    "onnxslim --help": [str(BIN / "onnxslim"), "--help"],
    "polygraphy --help": [str(BIN / "polygraphy"), "--help"],
}


def cpu_seconds(argv: list[str]) -> tuple[float, float, int]:
    """(user + sys CPU s, wall s, exit code) of one run of ``argv``."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, wall, proc.returncode


def heavy_imports() -> list[str]:
    """The heavy top-level modules in ``sys.modules`` after ``bnfold --help``."""
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom bnfold.cli import app\n"
        "CliRunner().invoke(app, ['--help'])\n"
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args()
    present = {k: v for k, v in COMMANDS.items() if shutil.which(v[0])}
    missing = sorted(set(COMMANDS) - set(present))
    runs: dict[str, list[tuple[float, float, int]]] = {k: [] for k in present}
    for argv in present.values():  # one warm-up each (page cache, .pyc files)
        cpu_seconds(argv)
    for _ in range(args.repeat):
        for name, argv in present.items():
            runs[name].append(cpu_seconds(argv))
    rows = {}
    for name, samples in runs.items():
        cpu = [s[0] for s in samples]
        wall = [s[1] for s in samples]
        rows[name] = {
            "cpu_s_median": statistics.median(cpu),
            "cpu_s_min": min(cpu),
            "cpu_s_max": max(cpu),
            "wall_s_median": statistics.median(wall),
            "exit_codes": sorted({s[2] for s in samples}),
            "cpu_s": cpu,
        }
    data = {
        "repeat": args.repeat,
        "commands": rows,
        "missing": missing,
        "bnfold_help_heavy_imports": heavy_imports(),
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(f"| command | CPU s, median of {args.repeat} [min, max] | wall s, median |")
    print("|---|---|---|")
    for name, r in rows.items():
        print(
            f"| `{name}` | {r['cpu_s_median']:.3f} [{r['cpu_s_min']:.3f}, {r['cpu_s_max']:.3f}] "
            f"| {r['wall_s_median']:.3f} |"
        )
    heavy = ", ".join(data["bnfold_help_heavy_imports"]) or "none"
    print(f"\nheavy modules imported by `bnfold --help`: {heavy}")
    if missing:
        print(f"not installed: {', '.join(missing)}")
    print(f"load average {data['environment']['load_average']}; wrote {args.json}")


if __name__ == "__main__":
    main()

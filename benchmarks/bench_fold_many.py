"""Folding many models: ``bnfold fold DIR --output-dir OUT -j N`` against one ``bnfold fold``
per model, on the sample and zoo models (copied into a temporary folder; nothing downloaded).

Cases, interleaved ``--repeat`` times, each a fresh run of the CLI with verification on:

* ``one process per model``: ``bnfold fold MODEL -o OUT/...`` for each model in turn, as a shell
  loop would (each process imports bnfold, onnx and onnxruntime again);
* ``-j 1`` / ``-j 2``: one ``bnfold fold`` for the whole folder, every model in a worker process
  of its own, forked from a server that has imported them once.

Wall time, and CPU time (user + system) of the whole process tree from ``os.wait4`` (bnfold
reaps its fork server, whose rusage holds its workers'). Every run is checked: exit 0, one
output per model. Writes ``benchmarks/results/fold_many.json`` and prints a table.

    python benchmarks/bench_fold_many.py [--repeat 3] [--json PATH]
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
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BNFOLD = [sys.executable, "-m", "bnfold"]


def _run(argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the process tree) of one command, which must exit 0."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} exited {code}: {err}")
    return wall, usage.ru_utime + usage.ru_stime


def _models(folder: Path) -> list[Path]:
    (folder / "zoo").mkdir(parents=True)
    for p in sorted((ROOT / "models").glob("*.onnx")):
        shutil.copy(p, folder / p.name)
    for p in sorted((ROOT / "models" / "zoo").glob("*.onnx")):
        shutil.copy(p, folder / "zoo" / p.name)
    return sorted(folder.rglob("*.onnx"))


def _case(name: str, src: Path, models: list[Path], out: Path) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    if name == "one process per model":
        wall = cpu = 0.0
        for m in models:
            dest = out / m.relative_to(src).with_suffix(".folded.onnx")
            w, c = _run([*BNFOLD, "fold", str(m), "-o", str(dest), "-q"])
            wall, cpu = wall + w, cpu + c
    else:
        jobs = name.split()[-1]
        wall, cpu = _run([*BNFOLD, "fold", str(src), "--output-dir", str(out), "-j", jobs, "-q"])
    written = sorted(out.rglob("*.folded.onnx"))
    if len(written) != len(models):
        raise SystemExit(f"{name}: {len(written)} outputs for {len(models)} models")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS / "fold_many.json")
    args = parser.parse_args()
    cases = ("one process per model", "-j 1", "-j 2")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bnfold-many-") as tmp:
        src = Path(tmp) / "models"
        models = _models(src)
        _case("-j 1", src, models, Path(tmp) / "warm")  # page cache, .pyc files
        runs: dict[str, list[tuple[float, float]]] = {c: [] for c in cases}
        for _ in range(args.repeat):
            for case in cases:
                runs[case].append(_case(case, src, models, Path(tmp) / "out"))
    rows = {
        case: {
            "wall_s_median": statistics.median(w for w, _ in samples),
            "cpu_s_median": statistics.median(c for _, c in samples),
            "wall_s": [w for w, _ in samples],
            "cpu_s": [c for _, c in samples],
        }
        for case, samples in runs.items()
    }
    data = {
        "models": [str(m.relative_to(src)) for m in models],
        "repeat": args.repeat,
        "cases": rows,
        "environment": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    base = rows["one process per model"]["wall_s_median"]
    print(f"{len(models)} models (models/*.onnx, models/zoo/*.onnx), verified; "
          f"medians of {args.repeat} runs")  # fmt: skip
    print("\n| run | wall s | CPU s | wall vs one process per model |")
    print("|---|---|---|---|")
    for case, r in rows.items():
        print(
            f"| {case} | {r['wall_s_median']:.2f} | {r['cpu_s_median']:.2f} "
            f"| {base / r['wall_s_median']:.2f}x |"
        )
    print(f"\nload average before {load_before}, after {data['environment']['load_average_after']}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

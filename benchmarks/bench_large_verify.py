"""``bnfold fold`` on a ~3 GiB external-data model: fold time, verify time and peak RSS.

Generates a chain of 2048-channel 3x3 Conv+BN+Relu (``make_models.build_huge``, seeded, weights
generated while written) with ``--layers`` layers in a temporary folder, then runs, each in a
fresh child process (peak RSS from ``wait4``: the child's ru_maxrss, which counts mapped file
pages it touched, like VmHWM):

* ``fold --no-verify``: load, fold, staged write, fsync, rename;
* ``fold`` (default verification: onnxruntime runs the input, then the folded model, one session
  at a time, on 3 seeded input sets);
* with ``--before REV``, the default ``fold`` of that git revision of bnfold (both sessions held
  at once), for comparison.

Each is run ``--repeat`` times, interleaved; the run with the median wall time is reported (its
peak and timings). Timings come from each run's ``--report`` ("save" includes the fsync of the
written files); the model and every output are deleted afterwards.
Writes ``benchmarks/results/large_verify.json`` and prints a table.

    python benchmarks/bench_large_verify.py [--layers 22] [--workdir DIR] [--before 700c8a9]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def _make(folder: Path, layers: int) -> tuple[Path, int]:
    import onnx_ir as ir
    from make_models import build_huge

    model, _ = build_huge(layers=layers)
    path = folder / "large.onnx"
    ir.save(model, path, external_data="large.onnx.data", size_threshold_bytes=1024)
    return path, path.stat().st_size + (folder / "large.onnx.data").stat().st_size


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    start = time.perf_counter()
    # cwd away from the checkout: ``python -m`` puts the cwd first on sys.path
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}: {err.strip()[-500:]}")
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024}


def _fold(model: Path, out: Path, report: Path, *extra: str, env=None) -> dict:
    cmd = [sys.executable, "-m", "bnfold", "fold", str(model), "-o", str(out), "-q"]
    result = _run([*cmd, "--report", str(report), *extra], model.parent, env)
    timings = json.loads(report.read_text())["timings"]
    result["timings_s"] = timings
    for p in (out, Path(str(out) + ".data"), report):
        p.unlink(missing_ok=True)
    return result


def _checkout(rev: str, folder: Path) -> Path:
    """bnfold at git revision ``rev``, unpacked into ``folder`` (importable from there)."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "bnfold"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22, help="151 MB of weight per layer")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--before", default=None, help="also run this git revision's fold")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the median is kept")
    parser.add_argument("--out", type=Path, default=RESULTS / "large_verify.json")
    args = parser.parse_args()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bnfold-large-", dir=args.workdir) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        model, size = _make(folder, args.layers)
        made = time.perf_counter() - start
        print(f"model: {size / 2**30:.2f} GiB in {made:.0f} s ({model})", flush=True)
        out, report = folder / "out.onnx", folder / "report.json"
        plans: list[tuple[str, tuple[str, ...], dict[str, str] | None]] = [
            ("fold --no-verify", ("--no-verify",), None),
            ("fold (verified)", (), None),
        ]
        if args.before:
            old = _checkout(args.before, folder / "before")
            plans.append(
                (f"fold (verified), {args.before}", (), {**os.environ, "PYTHONPATH": str(old)})
            )
        tries: dict[str, list[dict]] = {name: [] for name, _, _ in plans}
        for _ in range(args.repeat):  # interleaved: disk and load drift hit every case alike
            for name, extra, env in plans:
                subprocess.run(["sync"], check=False)
                r = _fold(model, out, report, *extra, env=env)
                tries[name].append(r)
                peak = r["peak_rss_bytes"] / 2**20
                print(f"{name}: {r['wall_s']:.1f} s, peak {peak:.0f} MiB", flush=True)
        for name, results in tries.items():
            results.sort(key=lambda r: r["wall_s"])
            median = results[(len(results) - 1) // 2]
            runs[name] = {**median, "all_wall_s": [r["wall_s"] for r in results]}
        if args.before:
            shutil.rmtree(old)
    rows = []
    for name, r in runs.items():
        t = r["timings_s"]
        rows.append(
            {
                "run": name,
                "fold_s": round(t.get("load", 0) + t.get("fold", 0), 2),
                "save_s": round(t.get("save", 0), 2),
                "verify_s": round(t["verify"], 2) if "verify" in t else None,
                "wall_s": round(r["wall_s"], 2),
                "all_wall_s": [round(w, 2) for w in r["all_wall_s"]],
                "peak_rss_mib": round(r["peak_rss_bytes"] / 2**20),
                "peak_over_model": round(r["peak_rss_bytes"] / size, 3),
            }
        )
    result = {
        "model_bytes": size,
        "layers": args.layers,
        "generate_s": round(made, 1),
        "rows": rows,
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nmodel {size / 2**30:.2f} GiB ({size / 2**20:.0f} MiB); load average {os.getloadavg()}"
    )
    print("| run | load+fold s | save s | verify s | wall s | peak RSS MiB | peak / model |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        verify = "–" if r["verify_s"] is None else f"{r['verify_s']:.2f}"
        print(
            f"| {r['run']} | {r['fold_s']:.2f} | {r['save_s']:.2f} | {verify} | {r['wall_s']:.2f} "
            f"| {r['peak_rss_mib']} | {r['peak_over_model']:.2f}x |"
        )


if __name__ == "__main__":
    main()

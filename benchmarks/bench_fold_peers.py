"""Compare bnfold's BN folding with peer tools: fold time, total time and peak RSS.

Every (model, tool, repeat) runs in a fresh child process, which loads the model, folds its
BatchNormalization nodes, saves the result, and reports its phase times and its peak resident
set size (VmHWM, so mapped file pages it touched count as well). The models come from
``make_models.py`` (generated once into ``--workdir``). Tools:

* ``copy``: onnx-ir load + save, nothing folded (the I/O floor; external data is copied with
  ``copy_file_range``).
* ``bnfold``: ``bnfold.fold(path).save(out)``.
* ``onnxscript``: onnx-ir lazy load, ``onnxscript.rewriter.rewrite`` with only its
  fuse-batchnorm rules (Conv, ConvTranspose, Gemm), ``ir.save``.
* ``onnxscript-proto``: the same rules on an ``onnx.load`` -ed ModelProto, ``onnx.save``.
* ``onnxslim``: ``onnx.load``, ``onnxslim.slim`` with only graph fusion and only its Conv/ConvTranspose+BN
  patterns, no shape inference, onnxslim's own save (external data above 2 GB).
* ``onnxoptimizer``: ``onnx.load``, ``onnxoptimizer.optimize(model, ["fuse_bn_into_conv"])``,
  ``onnx.save``.

Each output is checked for the number of BatchNormalization nodes left (all tools should leave 0),
and for models under 2 GB each output is compared with the input under onnxruntime
(ORT_DISABLE_ALL) on one random input. The page cache is warmed with the model's files before
every run, so all tools read from memory. Writes ``benchmarks/results/fold_peers.json`` and
prints a table with ratios to bnfold.

    python benchmarks/bench_fold_peers.py [--models resnet50,wide,huge] [--tools ...]
        [--repeat 3] [--workdir /tmp/bnfold-peers] [--timeout 300]
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
TOOLS = ("copy", "bnfold", "onnxscript", "onnxscript-proto", "onnxslim", "onnxoptimizer")
PROTO_LIMIT = 2**31


# --------------------------------------------------------------------------- child side


def _peak_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _onnx_save(model, out: Path, external: bool) -> None:
    import onnx

    if external:
        onnx.save_model(
            model, out, save_as_external_data=True, all_tensors_to_one_file=True,
            location=out.name + ".data", size_threshold=1024,
        )  # fmt: skip
    else:
        onnx.save_model(model, out)


def _ir_save(model, out: Path, external: bool) -> None:
    import onnx_ir as ir

    if external:
        ir.save(model, out, external_data=out.name + ".data", size_threshold_bytes=1024)
    else:
        ir.save(model, out)


def _run_tool(tool: str, src: Path, out: Path, external: bool) -> dict[str, float]:
    """Load, fold, save; return phase times. Imports happen before the clock starts."""
    if tool == "copy":
        import onnx_ir as ir

        t0 = time.perf_counter()
        model = ir.load(src)
        t1 = time.perf_counter()
        t2 = t1
        _ir_save(model, out, external)
    elif tool == "bnfold":
        import bnfold

        t0 = time.perf_counter()
        result = bnfold.fold(src)
        t1 = t0 + result.report.timings["load"]
        t2 = time.perf_counter()
        result.save(out)
    elif tool == "onnxscript":
        import onnx_ir as ir
        from onnxscript.rewriter import rewrite
        from onnxscript.rewriter.rules.common import _fuse_batchnorm

        t0 = time.perf_counter()
        model = ir.load(src)
        t1 = time.perf_counter()
        model = rewrite(model, pattern_rewrite_rules=_fuse_batchnorm.rules)
        t2 = time.perf_counter()
        _ir_save(model, out, external)
    elif tool == "onnxscript-proto":
        import onnx
        from onnxscript.rewriter import rewrite
        from onnxscript.rewriter.rules.common import _fuse_batchnorm

        t0 = time.perf_counter()
        model = onnx.load(src)
        t1 = time.perf_counter()
        model = rewrite(model, pattern_rewrite_rules=_fuse_batchnorm.rules)
        t2 = time.perf_counter()
        _onnx_save(model, out, external)
    elif tool == "onnxslim":
        import onnx
        import onnxslim
        import onnxslim.core.pattern.fusion  # noqa: F401  (registers the patterns)
        from onnxslim.core.optimization import OptimizationSettings
        from onnxslim.core.pattern.registry import DEFAULT_FUSION_PATTERNS
        from onnxslim.utils import save

        keep = {"FusionConvBN", "FusionConvTransposeBN"}
        skip_patterns = [p for p in DEFAULT_FUSION_PATTERNS if p not in keep]
        skip_opts = [k for k in OptimizationSettings.keys() if k != "graph_fusion"]  # noqa: SIM118
        t0 = time.perf_counter()
        model = onnx.load(src)
        t1 = time.perf_counter()
        model = onnxslim.slim(
            model, skip_optimizations=skip_opts, skip_fusion_patterns=skip_patterns,
            no_shape_infer=True,
        )  # fmt: skip
        t2 = time.perf_counter()
        save(model, str(out), save_as_external_data=external)
    elif tool == "onnxoptimizer":
        import onnx
        import onnxoptimizer

        t0 = time.perf_counter()
        model = onnx.load(src)
        t1 = time.perf_counter()
        model = onnxoptimizer.optimize(model, ["fuse_bn_into_conv"])
        t2 = time.perf_counter()
        _onnx_save(model, out, external)
    else:
        raise ValueError(f"unknown tool {tool!r}")
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "fold_s": t2 - t1, "save_s": t3 - t2, "total_s": t3 - t0}


def child_main(args: dict) -> None:
    # import everything the tool needs before measuring the baseline
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    import onnx_ir  # noqa: F401

    before = _peak_kib()
    times = _run_tool(args["tool"], Path(args["src"]), Path(args["out"]), args["external"])
    print(json.dumps({**times, "peak_kib": _peak_kib(), "start_kib": before}))


# --------------------------------------------------------------------------- parent side


def _files_of(path: Path) -> list[Path]:
    data = Path(str(path) + ".data")
    return [path] + ([data] if data.exists() else [])


def _warm(path: Path) -> None:
    """Read the model's files once so every tool starts from a warm page cache."""
    for f in _files_of(path):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass


def _bn_left(path: Path) -> int:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return sum(n.op_type == "BatchNormalization" for n in model.graph.node)


def _ort_diff(ref: Path, cand: Path, input_shape: list[int]) -> float:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    outs = []
    for p in (ref, cand):
        sess = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
        del sess
    scale = float(np.max(np.abs(outs[0]))) or 1.0
    return float(np.max(np.abs(outs[0] - outs[1]))) / scale


def run_one(tool: str, info: dict, out_dir: Path, timeout: float) -> dict:
    src = Path(info["path"])
    out = out_dir / f"{info['name']}.{tool}.onnx"
    for f in _files_of(out):
        f.unlink(missing_ok=True)
    _warm(src)
    os.sync()  # no dirty pages of an earlier run left to write back during this one
    args = {"tool": tool, "src": str(src), "out": str(out), "external": info["external_data"]}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(args)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        if proc.returncode < 0:
            error = f"killed by signal {-proc.returncode}"
        else:
            error = lines[-1][:300] if lines else f"exit status {proc.returncode}"
        return {"ok": False, "error": error, "wall_s": wall}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data.update(ok=True, wall_s=wall, out=str(out))
    return data


def check_output(tool: str, info: dict, result: dict, verify_ort: bool) -> None:
    """BN count, and (under 2 GB) onnxruntime agreement with the input; then delete the output."""
    out = Path(result["out"])
    try:
        result["bn_left"] = _bn_left(out)
        result["bn_ok"] = (
            result["bn_left"] == 0 if tool != "copy" else result["bn_left"] == info["bn"]
        )
        if verify_ort and info["bytes"] < PROTO_LIMIT and tool != "copy":
            result["ort_rel_diff"] = _ort_diff(Path(info["path"]), out, info["input_shape"])
            result["ort_ok"] = result["ort_rel_diff"] < 1e-4
    except Exception as exc:  # a broken output is a result, not a crash of the benchmark
        result["check_error"] = f"{type(exc).__name__}: {exc}"[:300]
        result["bn_ok"] = False
    finally:
        for f in _files_of(out):
            f.unlink(missing_ok=True)


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("ok")]
    if not ok:
        return {"ok": False, "error": runs[0].get("error", "failed"), "runs": runs}
    med = {
        k: statistics.median(r[k] for r in ok) for k in ("load_s", "fold_s", "save_s", "total_s")
    }
    return {
        "ok": True,
        **med,
        "peak_mib": statistics.median(r["peak_kib"] for r in ok) / 1024,
        "peak_mib_max": max(r["peak_kib"] for r in ok) / 1024,
        "start_mib": statistics.median(r["start_kib"] for r in ok) / 1024,
        "bn_left": ok[0].get("bn_left"),
        "bn_ok": all(r.get("bn_ok", False) for r in ok),
        "ort_rel_diff": max((r["ort_rel_diff"] for r in ok if "ort_rel_diff" in r), default=None),
        "check_error": next((r["check_error"] for r in ok if "check_error" in r), None),
        "runs": runs,
    }


def print_table(results: dict, models: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="BN folding: bnfold vs peers (median of repeats; ratios = tool / bnfold)")
    for col in (
        "model",
        "tool",
        "fold s",
        "total s",
        "× bnfold",
        "peak MiB",
        "× bnfold",
        "BN left",
        "ORT rel diff",
    ):
        table.add_column(col, justify="left" if col in ("model", "tool") else "right")
    for name, per_tool in results.items():
        ref = per_tool.get("bnfold", {})
        size = f"{name} ({models[name]['bytes'] / 2**20:.0f} MiB)"
        for tool, r in per_tool.items():
            if not r["ok"]:
                table.add_row(size, tool, "[red]failed", r["error"][:60], "", "", "", "", "")
                size = ""
                continue
            ratio_t = f"{r['total_s'] / ref['total_s']:.2f}" if ref.get("ok") else ""
            ratio_m = f"{r['peak_mib'] / ref['peak_mib']:.2f}" if ref.get("ok") else ""
            diff = "" if r["ort_rel_diff"] is None else f"{r['ort_rel_diff']:.1e}"
            bn = str(r["bn_left"]) + ("" if r["bn_ok"] else " [red]✗")
            table.add_row(
                size, tool, f"{r['fold_s']:.2f}", f"{r['total_s']:.2f}", ratio_t,
                f"{r['peak_mib']:.0f}", ratio_m, bn, diff,
            )  # fmt: skip
            size = ""
        table.add_section()
    Console(width=160).print(table)


def goals(results: dict, models: dict) -> dict:
    """The issue's goals, evaluated on the measured medians."""
    out = {}
    for name, per_tool in results.items():
        ref = per_tool.get("bnfold")
        if not ref or not ref["ok"]:
            continue
        peers = {t: r for t, r in per_tool.items() if t not in ("bnfold", "copy") and r["ok"]}
        g = {
            "fastest": all(ref["total_s"] < r["total_s"] for r in peers.values()),
            "lowest_peak": all(ref["peak_mib"] < r["peak_mib"] for r in peers.values()),
        }
        if models[name]["bytes"] >= PROTO_LIMIT and per_tool.get("copy", {}).get("ok"):
            g["total_vs_copy"] = ref["total_s"] / per_tool["copy"]["total_s"]
            g["peak_vs_model_size"] = ref["peak_mib"] * 2**20 / models[name]["bytes"]
            g["total_at_most_2x_copy"] = g["total_vs_copy"] <= 2.0
            g["peak_at_most_half_model"] = g["peak_vs_model_size"] <= 0.5
        out[name] = g
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,wide,huge")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bnfold-peers"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--no-ort", action="store_true", help="skip the onnxruntime check")
    parser.add_argument("--json", type=Path, default=RESULTS / "fold_peers.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0

    sys.path.insert(0, str(HERE))
    from make_models import MODELS, make_model

    tools = args.tools.split(",")
    for t in tools:
        if t not in TOOLS:
            parser.error(f"unknown tool {t!r} (choose from {', '.join(TOOLS)})")
    names = args.models.split(",")
    for n in names:
        if n not in MODELS:
            parser.error(f"unknown model {n!r} (choose from {', '.join(MODELS)})")
    out_dir = args.workdir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    models = {n: make_model(n, args.workdir / "models") for n in names}
    results: dict[str, dict] = {}
    for name in names:
        info = models[name]
        need = 2 * info["bytes"] + (1 << 30)
        if shutil.disk_usage(out_dir).free < need:
            print(f"not enough disk under {out_dir} for {name}", file=sys.stderr)
            return 1
        runs: dict[str, list] = {t: [] for t in tools}
        for rep in range(args.repeat):
            for tool in tools:  # interleaved, so drift hits every tool alike
                r = run_one(tool, info, out_dir, args.timeout)
                if r["ok"]:
                    check_output(tool, info, r, verify_ort=not args.no_ort and rep == 0)
                runs[tool].append(r)
                state = (
                    f"{r['total_s']:.2f} s, {r['peak_kib'] / 1024:.0f} MiB"
                    if r["ok"]
                    else r["error"][:80]
                )
                print(
                    f"[{name} {rep + 1}/{args.repeat}] {tool}: {state}", file=sys.stderr, flush=True
                )
        results[name] = {t: summarize(runs[t]) for t in tools}
    print_table(results, models)
    summary = goals(results, models)
    for name, g in summary.items():
        print(
            name, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in g.items()})
        )
    import numpy
    import onnx
    import onnx_ir
    import onnxruntime

    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "onnx": onnx.__version__,
                "onnx_ir": onnx_ir.__version__, "onnxruntime": onnxruntime.__version__}  # fmt: skip
    for mod in ("onnxscript", "onnxslim", "onnxoptimizer"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    payload = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **versions},
        "repeat": args.repeat,
        "models": models,
        "results": results,
        "goals": summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

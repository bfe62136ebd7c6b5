"""What bnfold's forward and through-activation folds buy under onnxruntime's defaults, next to
the best any exact fold can do, and how many BatchNormalization nodes each tool leaves.

For each model of ``forward_models.py`` (torch, seeded, random BN statistics, eval mode) and each
batch size, the script exports the model with its BN kept (the TorchScript exporter with
``TrainingMode.PRESERVE``, opset 17, or torch's dynamo exporter with ``optimize=False``) and
derives two candidates:

* **bnfold**: ``bnfold.fold(path)`` with its defaults (``forward="exact"``);
* **limit**: the same torch model with every exactly foldable BN folded into its neighbour's
  weights by hand (float64, in torch) and exported the same way without it.

Both are verified against the unfolded export with ``bnfold.verify.check_models``
(ORT_DISABLE_ALL, 3 random inputs; max |error| / output range). Then four paired timings, each
``bnfold.bench.bench_models`` at ORT_ENABLE_ALL, 1 intra-op thread, rounds in shuffled order, the
speed-up the median of per-round latency ratios reference / candidate with a bootstrap 95%
interval, the runs per round chosen so a round lasts about ``--round-ms``:

* unfolded vs bnfold, and unfolded vs limit: what each buys;
* limit vs bnfold: below 1 where bnfold's model is slower than the limit's;
* A/A, the unfolded model vs a copy of itself: how far two sessions of one model differ. The
  interval only covers the noise between rounds of one pair of sessions; A/A shows the noise
  between sessions. bnfold is "short" of the limit when its limit/bnfold interval lies wholly
  below 1 - d, d the A/A interval's largest distance from 1.

``same_structure_as_limit`` in the JSON says whether bnfold's graph equals the limit's up to
names and weight values (ops, attributes, constant shapes).

The peer part counts the BN each tool leaves in each model (batch 1 export), every tool run in a
child process and its output checked against the input with onnxruntime: bnfold (and with
``forward="off"``), onnxruntime's own ORT_ENABLE_ALL graph, onnxslim (defaults), onnxscript
(its fuse-batchnorm rules, and ``onnxscript.optimizer.optimize``), onnx-simplifier (``onnxsim``)
and onnxoptimizer (its fuse-and-elimination passes, which hold its only BN pass,
``fuse_bn_into_conv``). Writes ``benchmarks/results/forward.json`` and prints two tables.

    python benchmarks/bench_forward.py [--quick] [--models a,b] [--batches 1,32]
        [--rounds 20] [--round-ms 150] [--no-peers] [--json benchmarks/results/forward.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import forward_models as fm  # noqa: E402

import bnfold  # noqa: E402
from bnfold.atomic import write_json  # noqa: E402
from bnfold.bench import BenchOptions, bench_models  # noqa: E402
from bnfold.verify import CheckOptions, check_models  # noqa: E402
from bnfold.verify.session import make_session, model_ref  # noqa: E402

RESULTS = HERE / "results"
PEERS = (
    "bnfold",
    "bnfold-forward-off",
    "onnxruntime",
    "onnxslim",
    "onnxscript",
    "onnxscript-optimize",
    "onnxsim",
    "onnxoptimizer",
)
AIMET = (
    "not installed: `pip install --dry-run aimet-onnx` (2.42.0) would replace the pinned "
    "torch 2.13.0 with torch 2.14.1 and add torchvision, triton and the CUDA 13 toolkit, cuDNN, "
    "cuBLAS, NCCL wheels (gigabytes) on this CPU-only machine; skipped"
)


# --------------------------------------------------------------------------- export


def export(model: torch.nn.Module, exporter: str, x: torch.Tensor, path: Path) -> None:
    """Export ``model`` with every BatchNorm kept as a BatchNormalization node."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(model, (x,), dynamo=True, optimize=False, verbose=False)
            assert program is not None
            program.save(str(path))
        else:
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                training=torch.onnx.TrainingMode.PRESERVE,
                opset_version=17,
                input_names=["x"],
                output_names=["y"],
                do_constant_folding=True,
            )


def op_counts(path: Path) -> dict[str, int]:
    """Nodes per op type ("domain:op" outside the default domain) in the graph, its subgraphs
    and its functions."""
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}

    def visit(nodes) -> None:
        for node in nodes:
            key = (
                f"{node.domain}:{node.op_type}"
                if node.domain not in ("", "ai.onnx")
                else node.op_type
            )
            counts[key] = counts.get(key, 0) + 1
            for attr in node.attribute:
                for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    visit(g.node)

    visit(model.graph.node)
    for f in model.functions:
        visit(f.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def structure(path: Path) -> list[str]:
    """The graph without names: per node its op, attributes and constant input shapes, sorted.
    Two models with the same structure differ only in names and weight values."""
    model = onnx.load(str(path), load_external_data=False)
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    sig = []
    for node in model.graph.node:
        attrs = sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute)
        sig.append(f"{node.domain}:{node.op_type} {attrs} {[dims.get(i) for i in node.input]}")
    return sorted(sig)


def bn_count(path: Path) -> int:
    return op_counts(path).get("BatchNormalization", 0)


def ort_vs_torch(module: torch.nn.Module, path: Path, x: torch.Tensor) -> float:
    """max |onnxruntime (ORT_DISABLE_ALL) - torch eager| / max |torch|: the export is faithful."""
    session = make_session(model_ref(path, "export"), opt_level="disable", threads=1)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = module(x).numpy()
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


def check(ref: Path, cand: Path) -> dict[str, Any]:
    """check_models at ORT_DISABLE_ALL: passed, max abs error, its ratio to the output range."""
    result = check_models(ref, cand, CheckOptions(samples=3, threads=1))
    stats = [o.stats for o in result.outputs]
    return {
        "passed": result.passed,
        "max_abs": max(s.max_abs for s in stats),
        "max_rel_range": max(s.max_rel_range for s in stats),
        "ref_range": max(s.ref_range for s in stats),
    }


# --------------------------------------------------------------------------- latency


def probe_ms(path: Path, x: np.ndarray) -> float:
    """A rough latency at ORT_ENABLE_ALL, 1 thread (best of a few runs), to size the rounds."""
    session = make_session(model_ref(path, "probe"), opt_level="all", threads=1)
    feeds = {session.get_inputs()[0].name: x}
    best = float("inf")
    for _ in range(4):
        t0 = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def bench(ref: Path, cand: Path, options: BenchOptions) -> dict[str, Any]:
    level = bench_models(ref, cand, options).levels[0]
    s = level.speedup
    return {
        "reference_ms": level.sides["reference"].median_ms,
        "candidate_ms": level.sides["candidate"].median_ms,
        "speedup": s.ratio,
        "ci": [s.ci_low, s.ci_high],
        "verdict": s.verdict,
        "creation_ms": [level.sides[k].creation_s * 1e3 for k in ("reference", "candidate")],
        "round_medians_ms": {k: v.round_medians_ms for k, v in level.sides.items()},
    }


def fold_report(report) -> dict[str, Any]:
    """What bnfold did: counts per (direction, fold) and every refusal with its reason."""
    kinds: dict[str, int] = {}
    for f in report.folded:
        key = f"{f.direction}: {f.fold}"
        kinds[key] = kinds.get(key, 0) + 1
    return {
        "summary": report.summary(),
        "bn_before": report.bn_before,
        "bn_after": report.bn_after,
        "folded": kinds,
        "skipped": [{"node": s.node, "reason": s.reason} for s in report.skipped],
    }


def run_model(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Export, fold (bnfold and by hand), verify and time one model at every batch size."""
    spec = fm.MODELS[name]
    module = fm.build(name)
    limit_module, limit_bn = fm.fold_by_hand(module)
    gen = torch.Generator().manual_seed(1)
    x8 = torch.randn(8, *spec.input_shape, generator=gen)
    with torch.no_grad():
        ref_out = module(x8)
        hand_err = float((limit_module(x8) - ref_out).abs().max() / ref_out.abs().max())
    if hand_err > 1e-5:
        raise AssertionError(f"{name}: the hand fold changed the output ({hand_err:.1e})")
    record: dict[str, Any] = {
        "title": spec.title,
        "design": spec.design,
        "exporter": spec.exporter,
        "bn_modules": fm.count_bn(module),
        "limit_bn_modules": limit_bn,
        "hand_fold_torch_max_rel_error": hand_err,
        "load_average_before": os.getloadavg(),
        "batches": {},
    }
    for batch in args.batches:
        x = torch.randn(batch, *spec.input_shape, generator=torch.Generator().manual_seed(batch))
        paths = {k: work / f"{name}.b{batch}.{k}.onnx" for k in ("unfolded", "bnfold", "limit")}
        t0 = time.perf_counter()
        export(module, spec.exporter, x, paths["unfolded"])
        export(limit_module, spec.exporter, x, paths["limit"])
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        folded = bnfold.fold(paths["unfolded"])
        fold_s = time.perf_counter() - t0
        folded.save(paths["bnfold"])
        if "bnfold_report" not in record:
            record["bnfold_report"] = fold_report(folded.report)
        row: dict[str, Any] = {
            "bn": {k: bn_count(p) for k, p in paths.items()},
            "nodes": {k: sum(op_counts(p).values()) for k, p in paths.items()},
            "export_s": export_s,
            "fold_s": fold_s,
            "export_vs_torch_max_rel_error": ort_vs_torch(module, paths["unfolded"], x),
            "check": {k: check(paths["unfolded"], paths[k]) for k in ("bnfold", "limit")},
        }
        lat = probe_ms(paths["unfolded"], x.numpy())
        iters = int(min(max(round(args.round_ms / lat), 1), 5000))
        options = BenchOptions(
            levels=("all",),
            threads=1,
            memory=False,
            rounds=args.rounds,
            iters=iters,
            warmup=max(3, min(iters, 50)),
            creation_repeats=args.creation_repeats,
            seed=0,
        )
        row["iters_per_round"] = iters
        copy = work / f"{name}.b{batch}.unfolded-copy.onnx"
        shutil.copyfile(paths["unfolded"], copy)
        row["same_structure_as_limit"] = structure(paths["bnfold"]) == structure(paths["limit"])
        row["bench"] = {
            "bnfold": bench(paths["unfolded"], paths["bnfold"], options),
            "limit": bench(paths["unfolded"], paths["limit"], options),
            # paired directly: limit latency / bnfold latency, below 1 where bnfold is slower
            "bnfold_vs_limit": bench(paths["limit"], paths["bnfold"], options),
            # A/A: the unfolded model against a copy of itself; the noise between two sessions
            "a_a": bench(paths["unfolded"], copy, options),
        }
        b, lim = row["bench"]["bnfold"]["ci"], row["bench"]["limit"]["ci"]
        vs, aa = row["bench"]["bnfold_vs_limit"]["ci"], row["bench"]["a_a"]["ci"]
        row["noise"] = max(abs(aa[0] - 1.0), abs(aa[1] - 1.0))
        row["intervals_overlap"] = b[0] <= lim[1] and lim[0] <= b[1]
        # bnfold is short of the limit only if it is slower by more than two identical sessions
        row["within_noise_of_limit"] = vs[1] >= 1.0 - row["noise"]
        row["goal_met"] = b[0] > 1.0 and row["within_noise_of_limit"]
        row["load_average_after"] = os.getloadavg()
        record["batches"][str(batch)] = row
        r = row["bench"]
        print(
            f"[{name} b{batch}] BN {row['bn']['unfolded']}->{row['bn']['bnfold']} "
            f"(limit {row['bn']['limit']}); bnfold {r['bnfold']['speedup']:.3f} "
            f"[{b[0]:.3f}, {b[1]:.3f}], limit {r['limit']['speedup']:.3f} "
            f"[{lim[0]:.3f}, {lim[1]:.3f}], bnfold vs limit "
            f"{r['bnfold_vs_limit']['speedup']:.3f} [{vs[0]:.3f}, {vs[1]:.3f}], A/A "
            f"{r['a_a']['speedup']:.3f} [{aa[0]:.3f}, {aa[1]:.3f}]; "
            f"load {os.getloadavg()[0]:.2f}",
            file=sys.stderr,
            flush=True,
        )
    return record


# --------------------------------------------------------------------------- peers


def peer_fold(tool: str, src: Path, out: Path) -> None:
    """Run one tool on ``src`` as a new user would and write its output to ``out``."""
    if tool in ("bnfold", "bnfold-forward-off"):
        bnfold.fold(src, forward="off" if tool.endswith("off") else "exact").save(out)
    elif tool == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    elif tool == "onnxslim":
        import onnxslim

        onnx.save(onnxslim.slim(onnx.load(str(src))), str(out))
    elif tool == "onnxscript":
        from onnxscript.rewriter import rewrite
        from onnxscript.rewriter.rules.common import _fuse_batchnorm

        onnx.save(rewrite(onnx.load(str(src)), pattern_rewrite_rules=_fuse_batchnorm.rules), out)
    elif tool == "onnxscript-optimize":
        import onnxscript

        onnx.save(onnxscript.optimizer.optimize(onnx.load(str(src))), str(out))
    elif tool == "onnxsim":
        import onnxsim

        model, ok = onnxsim.simplify(onnx.load(str(src)))
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        onnx.save(model, str(out))
    elif tool == "onnxoptimizer":
        import onnxoptimizer

        passes = onnxoptimizer.get_fuse_and_elimination_passes()
        onnx.save(onnxoptimizer.optimize(onnx.load(str(src)), passes), str(out))
    else:
        raise ValueError(f"unknown tool {tool!r}")


def peer_child(tool: str, pairs: list[list[str]]) -> None:
    """In a child process: run ``tool`` on each (src, out); print one JSON line per model."""
    out: dict[str, Any] = {}
    for src, dst in pairs:
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peer_fold(tool, Path(src), Path(dst))
            out[src] = {"ok": True, "seconds": time.perf_counter() - t0}
        except Exception as exc:  # a tool that fails is a result
            out[src] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    print(json.dumps(out))


def tool_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for dist in ("onnxruntime", "onnxslim", "onnxscript", "onnxsim", "onnxoptimizer", "aimet-onnx"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = None
    return found


def run_peers(sources: dict[str, Path], work: Path, timeout: float) -> dict[str, Any]:
    """BN left and onnxruntime agreement for every tool on every model."""
    results: dict[str, dict[str, Any]] = {name: {} for name in sources}
    for tool in PEERS:
        pairs = [[str(p), str(work / f"{name}.{tool}.onnx")] for name, p in sources.items()]
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--peer-child",
            tool,
            json.dumps(pairs),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines:
                tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
                raise RuntimeError(tail[-1][:300] if tail else f"exit status {proc.returncode}")
            runs = json.loads(lines[-1])
        except (subprocess.TimeoutExpired, RuntimeError) as exc:
            runs = {src: {"ok": False, "error": str(exc)[:300]} for src, _ in pairs}
        for (name, _), (src, dst) in zip(sources.items(), pairs, strict=True):
            r = runs[src]
            if r["ok"]:
                r["ops"] = op_counts(Path(dst))
                r["bn_left"] = r["ops"].get("BatchNormalization", 0)
                if tool == "onnxruntime":  # its NCHWc pass runs a lone BN as a depthwise Conv
                    convs = sum(n for op, n in r["ops"].items() if op.endswith("Conv"))
                    r["bn_as_nchwc_conv"] = max(0, convs - op_counts(Path(src)).get("Conv", 0))
                try:
                    r["check"] = check(Path(src), Path(dst))
                except Exception as exc:  # onnxruntime refuses the output: a result too
                    r["check"] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            results[name][tool] = r
        print(f"[peers] {tool} done", file=sys.stderr, flush=True)
    for name in sources:
        results[name]["aimet-onnx"] = {"ok": False, "error": AIMET}
    return results


# --------------------------------------------------------------------------- output


def _x(r: dict[str, Any]) -> str:
    return f"{r['speedup']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


LATENCY_COLUMNS = ("model", "batch", "BN: unfolded → bnfold (limit)", "unfolded ms", "bnfold ms",
                   "bnfold speed-up [95% CI]", "verdict", "limit ms", "limit speed-up [95% CI]",
                   "limit ms / bnfold ms [95% CI]", "A/A [95% CI]", "check err/range")  # fmt: skip


def latency_rows(records: dict[str, Any], titles: bool = True) -> list[list[str]]:
    """One row per model and batch, as text; "(short)": bnfold measurably slower than the limit."""
    rows = []
    for name, rec in records.items():
        for i, (batch, row) in enumerate(rec["batches"].items()):
            b, lim, vs, aa = (
                row["bench"][k] for k in ("bnfold", "limit", "bnfold_vs_limit", "a_a")
            )
            bn = row["bn"]
            rows.append([
                (rec["title"] if titles else name) if i == 0 else "",
                batch,
                f"{bn['unfolded']} → {bn['bnfold']} ({bn['limit']})",
                f"{b['reference_ms']:.3f}",
                f"{b['candidate_ms']:.3f}",
                _x(b),
                b["verdict"],
                f"{lim['candidate_ms']:.3f}",
                _x(lim),
                _x(vs) + ("" if row["within_noise_of_limit"] else " (short)"),
                _x(aa),
                f"{row['check']['bnfold']['max_rel_range']:.1e}",
            ])  # fmt: skip
    return rows


def latency_table(records: dict[str, Any]) -> Table:
    t = Table(
        title="ORT_ENABLE_ALL, 1 thread: speed-up = unfolded / folded latency [95% CI]; "
        "limit = every exactly foldable BN folded by hand"
    )
    for col in ("model", "batch", "BN (limit)", "unfolded ms", "bnfold ms", "bnfold ×",
                "verdict", "limit ms", "limit ×", "limit/bnfold", "A/A", "err/range"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("model", "verdict") else "right")
    for row in latency_rows(records, titles=False):
        if row[0] and t.row_count:
            t.add_section()
        t.add_row(*row)
    return t


def markdown(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def peer_rows(peers: dict[str, Any], records: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per tool: BN left per model; "✗": the output differs from the input."""
    header = ["tool", *(f"{name} ({rec['bn_modules']} BN)" for name, rec in records.items())]
    rows = []
    for tool in (*PEERS, "aimet-onnx"):
        cells = [tool]
        for name in records:
            r = peers[name][tool]
            if not r["ok"]:
                cells.append("not installed" if tool == "aimet-onnx" else "failed")
                continue
            extra = f" ({r['bn_as_nchwc_conv']} run as Conv)" if r.get("bn_as_nchwc_conv") else ""
            cells.append(f"{r['bn_left']}{extra}" + ("" if r["check"].get("passed") else " ✗"))
        rows.append(cells)
    return header, rows


def peer_table(peers: dict[str, Any], records: dict[str, Any]) -> Table:
    t = Table(title="BatchNormalization nodes left (✗: output differs from the input)")
    header, rows = peer_rows(peers, records)
    for col in header:
        t.add_column(col, justify="left" if col == "tool" else "right")
    for row in rows:
        t.add_row(*row)
    return t


def print_folds(console: Console, records: dict[str, Any]) -> None:
    """What bnfold folded per model, and why it left each remaining BN."""
    for name, rec in records.items():
        rep = rec["bnfold_report"]
        folded = ", ".join(f"{n} x {k}" for k, n in rep["folded"].items()) or "nothing"
        console.print(f"[bold]{name}[/]: bnfold folded {folded}")
        reasons: dict[str, int] = {}
        for s in rep["skipped"]:
            reason = re.sub(r"'[^']*'", "'…'", s["reason"])  # node names apart, the same reason
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in reasons.items():
            console.print(f"  left {n}: {reason}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(fm.MODELS))
    p.add_argument("--batches", default="1,32")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--round-ms", type=float, default=150.0, help="target length of a round")
    p.add_argument("--creation-repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a short smoke run (5 rounds of ~20 ms)")
    p.add_argument("--no-peers", action="store_true", help="skip the BN-left comparison")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    p.add_argument("--peer-timeout", type=float, default=300.0, help="seconds per peer tool")
    p.add_argument("--json", type=Path, default=RESULTS / "forward.json")
    p.add_argument("--peer-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.peer_child:
        peer_child(args.peer_child[0], json.loads(args.peer_child[1]))
        return 0
    names = args.models.split(",")
    for n in names:
        if n not in fm.MODELS:
            p.error(f"unknown model {n!r} (choose from {', '.join(fm.MODELS)})")
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.quick:
        args.rounds, args.round_ms, args.creation_repeats = 5, 20.0, 1
    torch.set_num_threads(1)
    start, load_start = time.perf_counter(), os.getloadavg()
    records: dict[str, Any] = {}
    peers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bnfold-forward-") as tmp:
        work = Path(tmp)
        for name in names:
            records[name] = run_model(name, args, work)
        if not args.no_peers:
            sources = {n: work / f"{n}.b{args.batches[0]}.unfolded.onnx" for n in names}
            peers = run_peers(sources, work, args.peer_timeout)
    console = Console()
    console.print(latency_table(records))
    print_folds(console, records)
    if peers:
        console.print(peer_table(peers, records))
    payload = {
        "command": " ".join(["python", "benchmarks/bench_forward.py", *(argv or sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            **tool_versions(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },
        "options": {
            "rounds": args.rounds,
            "round_ms": args.round_ms,
            "batches": args.batches,
            "creation_repeats": args.creation_repeats,
            "quick": args.quick,
        },  # fmt: skip
        "seconds": time.perf_counter() - start,
        "models": records,
        "peers": peers,
    }
    if args.markdown:
        print(markdown(LATENCY_COLUMNS, latency_rows(records)))
        if peers:
            print()
            print(markdown(*peer_rows(peers, records)))
    write_json(args.json, payload)
    print(f"wrote {args.json} ({payload['seconds']:.0f} s)")
    failed = [
        f"{name} batch {batch} {k}"
        for name, rec in records.items()
        for batch, row in rec["batches"].items()
        for k, c in row["check"].items()
        if not c["passed"]
    ]
    if failed:
        print(f"check failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

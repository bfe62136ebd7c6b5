"""Measure what a forward BN fold does to int8 weights and accuracy; the int8-safe thresholds.

Trains the digits MLP and CNN with BatchNorm *after* ReLU (bnfold.train, seeded), exports them
with BN kept, folds backward with bnfold, and for every BatchNormalization left (they all follow
a ReLU) computes :func:`bnfold.int8.forward_fold_effect` on the next layer's weight
(a Gemm, a Conv, or a Gemm after Flatten). Where the next layer is a Gemm (exact to fold
forward) the fold is also done by hand here, two ways, and each model is quantized with
onnxruntime and proved on the digits test split:

- ``forward``: the exact fold W' = W·diag(s), b' = b + W·t;
- ``forward, dead zeroed``: channels constant over the calibration data (dead ReLU units) get
  s = 0 and their constant s·c + t moved into the bias (exact wherever they stay dead).

Writes benchmarks/results/int8_forward_guard.json and prints one row per fold. Needs torch.

    python benchmarks/int8_forward_guard.py [--epochs 10] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from rich.console import Console
from rich.table import Table

import bnfold
from bnfold import atomic
from bnfold.quantize import (
    digits_dataset,
    forward_fold_effect,
    int8_forward_refusal,
    ort_quantize,
    prove_int8,
    recommended_types,
)
from bnfold.quantize.activations import bn_channels

RESULTS = Path(__file__).parent / "results"


def _train(model: str, epochs: int, seed: int, path: Path) -> float:
    from bnfold.train import TrainConfig, export_model, train

    result = train(TrainConfig(model=model, bn_position="after", epochs=epochs, seed=seed))
    export_model(result.model, path, dynamic_batch=True)
    return float(result.final_accuracy or 0.0)


def _consumer(graph: onnx.GraphProto, value: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if value in n.input]


def _next_linear(graph: onnx.GraphProto, bn: onnx.NodeProto):
    """The linear layer the BN feeds, through Flatten/MaxPool: (node, path op types)."""
    value, path = bn.output[0], list[str]()
    while True:
        users = _consumer(graph, value)
        if len(users) != 1:
            return None, path
        node = users[0]
        if node.op_type in ("Gemm", "Conv"):
            return node, path
        if node.op_type not in ("Flatten", "MaxPool"):
            return None, path
        path.append(node.op_type)
        value = node.output[0]


def _bn_params(inits: dict[str, np.ndarray], bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (inits[n].astype(np.float64) for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    s = gamma / np.sqrt(var + eps)
    return s, beta - s * mean


def _fold_into_gemm(
    model: onnx.ModelProto, bn_name: str, dead: np.ndarray | None, dead_values: np.ndarray | None
) -> onnx.ModelProto:
    """Exact forward fold of BN -> Gemm(transB=1); with ``dead``, s = 0 there and s·c + t in b."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    bn = next(n for n in g.node if n.name == bn_name)
    (gemm,) = _consumer(g, bn.output[0])
    attrs = {a.name: a for a in gemm.attribute}
    assert gemm.op_type == "Gemm" and attrs["transB"].i == 1 and "transA" not in attrs
    s, t = _bn_params(inits, bn)
    if dead is not None and dead_values is not None:
        t = np.where(dead, s * dead_values + t, t)
        s = np.where(dead, 0.0, s)
    w = inits[gemm.input[1]].astype(np.float64)
    b = inits[gemm.input[2]].astype(np.float64)
    new_w = (w * s[None, :]).astype(np.float32)
    new_b = (b + w @ t).astype(np.float32)
    wname, bname = f"{bn_name}/forward_w", f"{bn_name}/forward_b"
    g.initializer.extend(
        [numpy_helper.from_array(new_w, wname), numpy_helper.from_array(new_b, bname)]
    )
    gemm.input[0], gemm.input[1], gemm.input[2] = bn.input[0], wname, bname
    g.node.remove(bn)
    return m


def _int8_figures(src: Path, fp32: Path, tmp: Path, tag: str) -> dict:
    types = recommended_types()
    out = tmp / f"{tag}.int8.onnx"
    ort_quantize(src, out, digits_dataset("train", limit=200), types)
    proof = prove_int8(fp32, out, digits_dataset("test"))
    (o,) = proof.outputs
    return {"accuracy": o.accuracy_int8, "agreement": o.agreement, "mean_logit_error": o.mean_abs}


def measure(model: str, epochs: int, seed: int, tmp: Path) -> list[dict]:
    fp32 = tmp / f"{model}-{seed}.onnx"
    torch_acc = _train(model, epochs, seed, fp32)
    base = tmp / f"{model}-{seed}.backward.onnx"
    bnfold.fold(fp32).save(base)
    proto = onnx.load(base)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    channels = bn_channels(base, digits_dataset("train", limit=200).feeds())
    baseline = _int8_figures(base, fp32, tmp, f"{model}-{seed}-unfolded")
    rows = []
    folds: list[tuple[str, np.ndarray, np.ndarray]] = []
    for bn in [n for n in proto.graph.node if n.op_type == "BatchNormalization"]:
        nxt, path = _next_linear(proto.graph, bn)
        if nxt is None:
            continue
        s, _t = _bn_params(inits, bn)
        ch = channels[bn.name]
        dead = ch.dead()
        w = inits[nxt.input[1]]
        if "Flatten" in path:  # NCHW flatten: channel c is a block of H*W features
            block = w.shape[1] // s.size
            s_in, live = np.repeat(s, block), np.repeat(~dead, block)
        else:
            s_in, live = s, ~dead
        row = {
            "model": model, "seed": seed, "epochs": epochs, "torch_accuracy": torch_acc,
            "bn": bn.name, "into": f"{' -> '.join([*path, nxt.op_type])} {nxt.name}",
            "channels": int(s.size), "dead": int(dead.sum()),
            "dead_variance_max": float(ch.variance[dead].max()) if dead.any() and ch.variance is not None else None,
            "s_dead_median": float(np.median(np.abs(s[dead]))) if dead.any() else None,
            "s_live_median": float(np.median(np.abs(s[~dead]))),
        }  # fmt: skip
        blind = forward_fold_effect(w, s_in, 0, 1)  # no calibration data: every weight counts
        row["full_range_without_data"] = {**blind.to_dict(), "refusal": int8_forward_refusal(blind)}
        for rr in (False, True):
            eff = forward_fold_effect(w, s_in, 0, 1, live=live, reduce_range=rr)
            key = "reduce_range" if rr else "full_range"
            row[key] = eff.to_dict()
            row[key]["refusal"] = int8_forward_refusal(eff)
            s_zeroed = np.where(np.repeat(dead, s_in.size // s.size), 0.0, s_in)
            eff0 = forward_fold_effect(w, s_zeroed, 0, 1, live=live, reduce_range=rr)
            row[key + "_dead_zeroed"] = eff0.to_dict()
            row[key + "_dead_zeroed"]["refusal"] = int8_forward_refusal(eff0)
        if nxt.op_type == "Gemm" and not path:
            row["int8_unfolded"] = baseline
            for tag, zero in (("int8_forward", False), ("int8_forward_dead_zeroed", True)):
                folded = _fold_into_gemm(
                    proto, bn.name, dead if zero else None, ch.range.min if zero else None
                )
                path_f = tmp / f"{model}-{seed}-{bn.name.strip('/').replace('/', '_')}-{tag}.onnx"
                onnx.save(folded, path_f)
                row[tag] = _int8_figures(path_f, fp32, tmp, path_f.stem)
            folds.append((bn.name, dead, ch.range.min))
        rows.append(row)
    if len(folds) > 1:  # every Gemm-fed BN at once
        for tag, zero in (("int8_forward", False), ("int8_forward_dead_zeroed", True)):
            m = proto
            for name, dead, values in folds:
                m = _fold_into_gemm(m, name, dead if zero else None, values if zero else None)
            path_f = tmp / f"{model}-{seed}-all-{tag}.onnx"
            onnx.save(m, path_f)
            rows.append({
                "model": model, "seed": seed, "epochs": epochs, "bn": "all", "into": "Gemm",
                "int8_unfolded": baseline, tag: _int8_figures(path_f, fp32, tmp, path_f.stem),
            })  # fmt: skip
    return rows


def _merge(rows: list[dict]) -> list[dict]:
    merged: dict[tuple, dict] = {}
    for r in rows:
        merged.setdefault((r["model"], r["seed"], r["bn"]), {}).update(r)
    return list(merged.values())


def _pct(x) -> str:
    return "" if x is None else f"{x:.1%}"


def _acc(row: dict, key: str) -> str:
    if key not in row:
        return ""
    return f"{row[key]['accuracy']:.4f} ({row[key]['mean_logit_error']:.3f})"


def table(rows: list[dict]) -> Table:
    t = Table(title="forward fold into the next layer: int8 weights (full range) and accuracy")
    for col in ("model", "seed", "BN", "into", "dead", "spread", "zero share before -> after",
                "err x", "refused", "int8 acc unfolded", "forward", "dead zeroed"):  # fmt: skip
        t.add_column(col)
    for r in rows:
        e = r.get("full_range", {})
        spread = e.get("spread")
        t.add_row(
            r["model"], str(r["seed"]), r["bn"], r["into"], str(r.get("dead", "")),
            "" if spread is None else (f"{spread:.0f}" if isinstance(spread, float) else spread),
            f"{_pct(e.get('zero_share_before'))} -> {_pct(e.get('zero_share_after'))}" if e else "",
            f"{e['error_ratio']:.2f}" if e else "",
            ("yes" if e.get("refusal") else "no") if e else "",
            _acc(r, "int8_unfolded"), _acc(r, "int8_forward"), _acc(r, "int8_forward_dead_zeroed"),
        )  # fmt: skip
    return t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["mlp", "digits_cnn"])
    parser.add_argument("--json", type=Path, default=RESULTS / "int8_forward_guard.json")
    args = parser.parse_args()
    start = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bnfold-guard-") as tmp:
        for model in args.models:
            for seed in args.seeds:
                rows += measure(model, args.epochs, seed, Path(tmp))
    rows = _merge(rows)
    Console(width=200).print(table(rows))
    atomic.write_json(args.json, {"rows": rows, "seconds": time.perf_counter() - start,
                                  "types": recommended_types().to_dict()})  # fmt: skip
    print(f"wrote {args.json} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

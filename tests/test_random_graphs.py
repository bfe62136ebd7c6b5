"""Differential testing on random graphs in CI: ``benchmarks/random_graphs.py`` in process.

A fixed run of seeds (each seed always makes the same model) must fold correctly or be a
legitimate skip (onnxruntime cannot run the original); the run must reach every fold direction
and the models the generator is there for (subgraphs, fp16, IR 3), so that it cannot pass by
folding nothing. The seeds that found the bugs fixed in e55d9c7 (among ~29k random graphs) make
the same models still, and pass. The driver is tested too: a worker that crashes is recorded
and the run goes on; a bnfold failure exits 1.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "random_graphs.py"
SEEDS = range(0, 1500)  # about 15 s on one core


def _load():
    spec = importlib.util.spec_from_file_location("random_graphs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rg = _load()

# (seed, sha256 prefix of its model, what the fold did to it before e55d9c7)
REGRESSIONS = [
    (10776, "126ee4872e7662cf", "IndexError in matmul.bias_add (a 0-d bias, rank-2 MatMul)"),
    (10111, "55a9c42913bef0c9", "IndexError in matmul.bias_add (a 0-d bias, rank-4 MatMul)"),
    (12826, "04803d6b8bcdc7f5", "IndexError in matmul.bias_add (a 0-d bias, rank-3 MatMul)"),
    (13622, "7ca9a77abd972cb6", "IndexError in matmul.bias_add (a 0-d bias, rank-5 MatMul)"),
    (30026, "ae7d01b787328ef1", "IndexError in matmul.bias_add (in a function)"),
    (31570, "0619f5480d10769b", "IndexError in matmul.bias_add (in an If)"),
    (13507, "b238bf04bf86f158", "IndexError in matmul.bias_add (a (1, 1, 1) bias)"),
    (10173, "9ccb3bca92ebb9ce", "IndexError in trace.remap (an empty tensor)"),
    (30148, "e161bc5e3290dcf5", "IndexError in trace.remap (an empty tensor)"),
    (40036, "8efea890177d21cf", "IndexError in trace.remap (an empty tensor)"),
    (11132, "cd77739d8b0a276d", "a second fold folded gemm+bn"),
    (13562, "6f725d873db8a2dc", "a second fold folded bn+sub"),
    (33341, "3196ff7c7b5b3166", "a second fold folded gemm+sub"),
    (34618, "80965660801dd26a", "a second fold folded bn+add"),
    (34988, "9f7becd4cc632abe", "a second fold folded bn+div"),
    (41743, "2ac989a0327abf28", "a second fold folded bn+mul"),
    (42903, "12e411a9d6274ab1", "a second fold folded bn+gemm (forward)"),
    (30717, "d6acb21ca47c0244", "a second fold folded bn+add twice"),
    (36316, "0bce8adc901fd62a", "a second fold folded gemm+add twice"),
    (31374, "9c404656d15c552f", "a Loop body's output taken over by an outer value (invalid)"),
    (31710, "9a9081e5f30a6076", "a Loop body's output taken over by an outer value (invalid)"),
    (40683, "6db3afbb78cb8b8f", "a Loop body's output taken over by an outer value (invalid)"),
    (11066, "1333abc11f5190c1", "a function's output changed rank (0 to 1): checker, outputs"),
    (42120, "22b3255074d1d895", "the folded Conv's channels did not match its input (ORT)"),
]


@pytest.fixture(scope="module")
def verdicts() -> list[dict]:
    return [rg.run_seed(seed) for seed in SEEDS]


def test_every_seed_folds_correctly_or_is_a_legitimate_skip(verdicts):
    failed = [(v["seed"], v["status"], v.get("problems")) for v in verdicts
              if v["status"] not in rg.LEGITIMATE]  # fmt: skip
    assert failed == []
    counts = collections.Counter(v["status"] for v in verdicts)
    # most models run in onnxruntime (1335 of 1500 when written): the run is not all skips
    assert counts["ok"] >= 1200, counts


def test_the_seeds_fold_in_every_direction(verdicts):
    directions = collections.Counter(d for v in verdicts for _, d in v.get("folded", []))
    labels = collections.Counter(label for v in verdicts for label, _ in v.get("folded", []))
    # when written: backward 1470, forward 545, merge 394, through the activation 117
    least = {"backward": 1000, "forward": 300, "merge": 200, "through the activation": 60}
    assert all(directions[d] >= n for d, n in least.items()), directions
    for label in ("conv+bn", "conv_transpose+bn", "gemm+bn", "matmul+bn", "bn+conv", "bn+gemm",
                  "bn+matmul", "bn+bn", "bn+mul", "gemm+add", "gemm+relu+bn+gemm"):  # fmt: skip
        assert labels[label] >= 3, (label, labels)
    assert sum(bool(v.get("folded")) for v in verdicts) >= 900  # 1049 models fold something


def test_the_seeds_cover_subgraphs_fp16_and_ir3(verdicts):
    ran = [v for v in verdicts if v["status"] == "ok"]
    ops = collections.Counter(op for v in ran for op in v["ops"])
    # when written (of 1500): If 133, Loop 121, function 103, fp16 147, IR 3 106
    assert all(ops[f"wrap_{kind}"] >= 40 for kind in ("If", "Loop", "Function")), ops
    assert sum(v["fp16"] for v in ran) >= 40
    assert sum(v["ir3"] for v in ran) >= 40
    assert {v["opset"] for v in ran} == {9, *rg.OPSETS}
    assert ops["opaque_ms_Gelu"] >= 20 and ops["shared_weight"] >= 20, ops


@pytest.mark.parametrize(("seed", "digest", "before"), REGRESSIONS, ids=[str(r[0]) for r in REGRESSIONS])  # fmt: skip
def test_a_seed_that_found_a_bug_makes_the_same_model_and_passes(seed, digest, before):
    model = rg.generate(seed).model().SerializeToString()
    assert hashlib.sha256(model).hexdigest()[:16] == digest, (
        f"seed {seed} no longer makes the model that found '{before}': keep the generator's "
        "random draws as they are (add new choices after them, or behind a new option)"
    )
    verdict = rg.run_seed(seed)
    assert verdict["status"] == "ok", (before, verdict.get("problems"))


@pytest.mark.parametrize(
    ("stage", "status", "code"),
    [("original", "ort_crash", 0), ("fold", "fold_crash", 1), ("folded", "bad", 1)],
)
def test_a_crashed_worker_is_placed_and_the_run_goes_on(tmp_path, stage, status, code):
    """A native crash running the generated model is onnxruntime's (exit 0); in the fold or
    on the folded model, whose original ran, it is bnfold's (exit 1). Seed 3's original
    fails in onnxruntime (it never reaches the fold), seed 2's folds."""
    seed = 3 if stage == "original" else 2
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "0", "8", "--jobs", "2", "--json", str(out),
         "--crash-at", f"{seed}:{stage}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == code, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["seeds"] == {"start": 0, "count": 8}
    ok = 7 if stage == "original" else 6
    assert data["counts"][status] == 1 and data["counts"]["ok"] == ok, data["counts"]
    assert data["failures"] == [
        {"seed": seed, "status": status, "problems": [f"worker died: SIGSEGV ({stage})"]}
    ]
    assert data["directions"]["backward"] >= 1 and data["ops"]["BN"] == 7  # crashed: no ops
    assert status in proc.stdout and "SIGSEGV" in proc.stdout


def test_a_bnfold_failure_exits_1(tmp_path, monkeypatch, capsys):
    verdicts = [
        {"seed": 7, "status": "ok", "folded": [("conv+bn", "backward")], "ops": ["BN"]},
        {"seed": 8, "status": "bad", "problems": ["mismatch:0.5"], "ops": ["BN"]},
        {"seed": 9, "status": "bad", "problems": ["mismatch:0.25"], "ops": ["BN"]},
    ]
    monkeypatch.setattr(rg, "run_parallel", lambda *args, **kwargs: verdicts)
    out = tmp_path / "r.json"
    assert rg.main(["--seeds", "7", "3", "--jobs", "1", "--json", str(out)]) == 1
    data = json.loads(out.read_text())
    assert data["counts"]["bad"] == 2 and data["folds"] == {"conv+bn": 1}
    assert data["problems"] == [
        {"kind": "mismatch:N", "seeds": 2, "example_seed": 8, "example": "mismatch:0.5"}
    ]
    assert "mismatch:0.5" in capsys.readouterr().out

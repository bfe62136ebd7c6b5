"""``bnfold bench`` and the latency statistics (no timing assertions)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _verify_models import gemm_bn_pair, int_bool_pair
from typer.testing import CliRunner

from bnfold.bench import BenchOptions, bench_models, bootstrap_median_ci, paired_speedup, verdict
from bnfold.cli import app
from bnfold.errors import BadInputError, UsageError

TINY = {"rounds": 3, "iters": 2, "warmup": 1, "creation_repeats": 1, "resamples": 200}


def test_paired_speedup_by_hand():
    s = paired_speedup([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])  # ratios 2, 2, 3
    assert s.ratio == 2.0 and s.rounds == 3
    assert 2.0 <= s.ci_low <= s.ci_high <= 3.0
    assert s.verdict == "faster"
    assert paired_speedup([1.0, 1.0], [2.0, 2.0]).verdict == "slower"
    with pytest.raises(ValueError):
        paired_speedup([1.0], [1.0, 2.0])


def test_bootstrap_interval_and_verdict():
    lo, hi = bootstrap_median_ci([1.0] * 5)
    assert lo == hi == 1.0
    lo, hi = bootstrap_median_ci(np.linspace(0.9, 1.1, 41), seed=3)
    assert lo < 1.0 < hi
    assert verdict(lo, hi) == "no measurable difference"
    assert verdict(1.01, 1.2) == "faster" and verdict(0.5, 0.99) == "slower"


def test_bench_models_holds_both_sides_at_each_level():
    ref, cand = gemm_bn_pair(batch=4)
    result = bench_models(ref, cand, BenchOptions(memory=False, **TINY))
    d = json.loads(json.dumps(result.to_dict()))
    assert [lv["level"] for lv in d["levels"]] == ["disable", "all"]
    for lv in d["levels"]:
        for side in ("reference", "candidate"):
            assert len(lv[side]["round_medians_ms"]) == 3 and lv[side]["creation_s"] > 0
        sp = lv["speedup"]
        assert sp["ci_low"] <= sp["ratio"] <= sp["ci_high"]
    assert d["models"]["reference"]["batchnorm_nodes"] == 1
    assert d["models"]["candidate"]["batchnorm_nodes"] == 0
    assert d["models"]["reference"]["nodes"] == 3 and d["models"]["candidate"]["size_bytes"] > 0


def test_bench_options_are_validated():
    ref, cand = gemm_bn_pair(batch=4)
    with pytest.raises(UsageError, match="--opt-level"):
        bench_models(ref, cand, BenchOptions(levels=("fast",)))
    with pytest.raises(UsageError, match="--rounds"):
        bench_models(ref, cand, BenchOptions(rounds=0))


@pytest.fixture
def model_files(tmp_path):
    ref, cand = gemm_bn_pair(batch="N")
    onnx.save(ref, tmp_path / "r.onnx")
    onnx.save(cand, tmp_path / "c.onnx")
    return tmp_path / "r.onnx", tmp_path / "c.onnx"


def test_bench_cli_json_plot_memory_and_fail_if_slower(model_files, tmp_path):
    pytest.importorskip("matplotlib")
    args = [
        "bench",
        *map(str, model_files),
        "--batch",
        "8",
        "--rounds",
        "3",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--json",
        str(tmp_path / "b.json"),
        "--plot",
        str(tmp_path / "b.png"),
    ]
    # --fail-if-slower takes the least speed-up allowed: 1000 means "1000x faster or fail"
    res = CliRunner().invoke(app, [*args, "--fail-if-slower", "1000"])
    assert res.exit_code == 1, res.output
    assert "slower than --fail-if-slower 1000.0 allows" in res.stderr
    assert "3 rounds give wide intervals" in res.stderr
    assert "fails unless the candidate is measurably at least 1000.0x as fast" in res.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["input_shapes"] == {"x": [8, 16]}
    mem = data["levels"][0]["reference"]["memory"]
    assert mem["peak_mib"] > 0 and mem["session_mib"] >= 0
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(
        app, [*args, "--no-memory", "--opt-level", "basic", "--fail-if-slower", "0.0001"]
    )
    assert res.exit_code == 0, res.output
    assert [lv["level"] for lv in json.loads((tmp_path / "b.json").read_text())["levels"]] == [
        "basic"
    ]


def test_bench_cli_errors_exit_2(model_files, tmp_path):
    res = CliRunner().invoke(app, ["bench", *map(str, model_files), "--shape", "M=3"])
    assert res.exit_code == 2 and "symbolic dims: N" in res.output
    res = CliRunner().invoke(app, ["bench", str(tmp_path / "none.onnx"), str(model_files[1])])
    assert res.exit_code == 2 and "no such file" in res.output
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        res = CliRunner().invoke(app, ["bench", *map(str, model_files), "--provider", "cuda"])
        assert res.exit_code == 2 and "not available" in res.output


@pytest.mark.gpu
def test_bench_on_cuda():
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider")
    ref, cand = gemm_bn_pair(batch=4)
    result = bench_models(ref, cand, BenchOptions(provider="cuda", memory=False, **TINY))
    assert len(result.levels) == 2


def test_bench_onnxruntime_failure_is_bad_input():
    """Bug: an input onnxruntime rejects at run time (here a Gather index out of range) escaped
    bench as a traceback, exit 1, the code of --fail-if-slower, instead of a BadInputError."""
    ref, cand = int_bool_pair()
    with pytest.raises(BadInputError, match="onnxruntime failed on input set random #0"):
        bench_models(
            ref, cand, BenchOptions(memory=False, shapes={"K": (5,)}, int_range=(11, 11), **TINY)
        )


def test_bench_candidate_with_fewer_inputs(tmp_path):
    """Bug: bench fed the candidate every reference input, and onnxruntime rejects a name the
    model does not take, though check accepts a candidate whose inputs are a subset."""
    ref, cand = gemm_bn_pair(batch=4)
    ref.graph.input.append(
        onnx.helper.make_tensor_value_info("unused", onnx.TensorProto.FLOAT, [1])
    )
    onnx.save(ref, tmp_path / "r.onnx")
    onnx.save(cand, tmp_path / "c.onnx")
    options = BenchOptions(levels=("disable",), **TINY)
    result = bench_models(tmp_path / "r.onnx", tmp_path / "c.onnx", options)
    assert result.levels[0].sides["candidate"].memory.peak_mib > 0

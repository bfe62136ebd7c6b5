"""``bnfold check``: exit codes, messages and the JSON report."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _verify_models import conv_bn_pair, gemm_bn_pair
from typer.testing import CliRunner

from bnfold.cli import app

runner = CliRunner()


@pytest.fixture
def models(tmp_path):
    ref, good = conv_bn_pair()
    _, bad = conv_bn_pair(break_fold="channel")
    paths = {}
    for name, m in (("ref", ref), ("good", good), ("bad", bad)):
        paths[name] = tmp_path / f"{name}.onnx"
        onnx.save(m, paths[name])
    return paths


def run(*args):
    return runner.invoke(app, ["check", *map(str, args)])


def test_equivalent_exits_0_and_writes_json(models, tmp_path):
    res = run(models["ref"], models["good"], "--json", tmp_path / "r.json", "--calibrate")
    assert res.exit_code == 0, res.output
    assert "equivalent" in res.output and "pass" in res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is True and data["outputs"][0]["calibration"]["error_vs_noise"] >= 0


def test_broken_fold_exits_1_and_locate_names_node(models, tmp_path):
    res = run(models["ref"], models["bad"], "--locate", "--json", tmp_path / "r.json")
    assert res.exit_code == 1
    assert "NOT equivalent" in res.output and "FAIL" in res.output
    assert "'conv1'" in res.output and "conv+bn" in res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False and data["locate"]["candidate_node"]["name"] == "conv1"


def test_loose_tolerance_makes_broken_fold_pass(models):
    assert run(models["ref"], models["bad"], "--atol", "100").exit_code == 0
    assert run(models["ref"], models["bad"], "--output-tol", "y=0,10").exit_code == 0


def test_bad_input_exit_2_with_one_line_message(models, tmp_path):
    res = run(tmp_path / "nope.onnx", models["good"])
    assert res.exit_code == 2 and "nope.onnx: no such file" in res.output
    res = run(models["ref"], models["good"], "--shape", "nonsense")
    assert res.exit_code == 2 and "--shape 'nonsense'" in res.output
    res = run(models["ref"], models["good"], "--shape", "q=1")
    assert res.exit_code == 2 and "no input or symbolic dim" in res.output
    res = run(models["ref"], models["good"], "--opt-level", "max")
    assert res.exit_code == 2 and "--opt-level must be one of" in res.output
    res = run(models["ref"], models["good"], "--tolerance-mode", "loose")
    assert res.exit_code == 2 and "--tolerance-mode" in res.output
    res = run(models["ref"], models["good"], "--output-tol", "y=1")
    assert res.exit_code == 2 and "NAME=ATOL,RTOL" in res.output
    res = run(models["ref"], models["good"], "--samples", "0")
    assert res.exit_code == 2 and "no input sets" in res.output


def test_symbolic_batch_dim_defaults_to_1_with_a_note(tmp_path):
    ref, cand = gemm_bn_pair(batch="N")
    onnx.save(ref, tmp_path / "r.onnx")
    onnx.save(cand, tmp_path / "c.onnx")
    res = run(tmp_path / "r.onnx", tmp_path / "c.onnx", "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    assert "symbolic batch dim 'N' of input 'x' run at 1" in res.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["outputs"][0]["shapes"] == [[1, 8]] * 3
    assert run(tmp_path / "r.onnx", tmp_path / "c.onnx", "--shape", "N=3").exit_code == 0
    np.savez(tmp_path / "in.npz", x=np.ones((2, 16), np.float32))
    assert (
        run(
            tmp_path / "r.onnx",
            tmp_path / "c.onnx",
            "--inputs",
            tmp_path / "in.npz",
            "--samples",
            "0",
        ).exit_code
        == 0
    )


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available"
)
def test_cuda_unavailable_exits_2(models):
    res = run(models["ref"], models["good"], "--provider", "cuda")
    assert res.exit_code == 2 and "CUDAExecutionProvider is not available" in res.output

"""``bnfold quantize`` end to end on the zoo models: real onnxruntime, real files, no mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from bnfold.cli import app
from bnfold.digits import split_digits

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "models" / "zoo"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _top1(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0].argmax(axis=1)


# (sample, BN folded, direction of the folds, the agreement the proof asks for). The samples
# are trained one epoch: mlp_bn_after_act's int8 model agrees with fp32 on 98.9% of the test
# digits (445 of 450; 10-epoch training gives 100%, benchmarks/bench_quantize.py).
ZOO_CASES = [
    ("digits_cnn", 4, {"backward"}, 0.99),
    ("mlp", 3, {"backward"}, 0.99),
    ("mlp_bn_after_act", 3, {"through the activation"}, 0.98),
]


@pytest.mark.parametrize(("name", "folded", "directions", "agreement"), ZOO_CASES)
def test_quantize_zoo_model_end_to_end(tmp_path, name, folded, directions, agreement):
    out, report = tmp_path / f"{name}.int8.onnx", tmp_path / "r.json"
    res = invoke("quantize", ZOO / f"{name}.onnx", "-o", out, "--report", report,
                 "--min-agreement", agreement)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "verdict       passed" in res.stdout
    q = onnx.load(out)
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert ops.count("BatchNormalization") == 0
    d = json.loads(report.read_text())
    assert d["passed"] and d["output"] == str(out)
    assert d["fold"]["bn_folded"] == folded
    assert {f["direction"] for f in d["fold"]["folded"]} == directions
    assert d["calibration"]["samples"] == 200 and d["evaluation"]["samples"] == 450
    assert d["float_ops"]["between_by_op"] == {}
    assert d["types"]["weight"] == "int8" and "onnxruntime" in d["types"]["reason"]
    # the proof's agreement, recomputed here with plain onnxruntime sessions
    data = split_digits()
    agree = float((_top1(ZOO / f"{name}.onnx", data.x_test) == _top1(out, data.x_test)).mean())
    (o,) = d["proof"]["outputs"]
    assert o["agreement"] == agree >= agreement
    assert o["accuracy_int8"] == float((_top1(out, data.x_test) == data.y_test).mean())
    assert d["sizes"]["int8"] == out.stat().st_size < d["sizes"]["fp32"]


def test_dead_channels_reported(tmp_path):
    res = invoke("quantize", ZOO / "mlp_bn_after_act.onnx", "-o", tmp_path / "q.onnx", "--json", "-",
                 "--min-agreement", "0.98")  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    dead = d["dead_channels"]["/3/BatchNormalization"]
    (bn,) = [c for c in d["batchnorm_channels"] if c["node"] == "/3/BatchNormalization"]
    assert bn["dead"] == dead and len(dead) > 0 and set(bn["dead_values"]) == {0.0}
    assert "dead channels /3/BatchNormalization" not in res.stdout  # --json: JSON only


def test_verdict_exit_codes(tmp_path):
    model = ZOO / "mlp_bn_after_act.onnx"
    out = tmp_path / "q.onnx"
    res = invoke("quantize", model, "-o", out, "--min-agreement", "0", "--json", "-")
    measured = json.loads(res.stdout)["proof"]["outputs"][0]["agreement"]
    assert 0.98 < measured < 1.0
    out.unlink()
    res = invoke("quantize", model, "-o", out, "--min-agreement", "1.0")
    assert res.exit_code == 1
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bnfold: error:") and str(model) in lines[0]
    assert f"agreement {measured:.4f} < --min-agreement 1.0" in lines[0]
    assert "nothing written" in lines[0]
    assert "FAILED" in res.stdout
    assert _files(tmp_path) == []  # nothing written, no temporary left
    res = invoke("quantize", model, "-o", out, "--min-agreement", "1.0", "--force",
                 "--report", tmp_path / "r.json")  # fmt: skip
    assert res.exit_code == 1 and "written anyway (--force)" in res.stderr
    assert out.stat().st_size > 0 and json.loads((tmp_path / "r.json").read_text())["forced"]
    res = invoke(
        "quantize", model, "-o", out, "--min-agreement", "0.98", "--max-mean-error", "1e-4"
    )
    assert res.exit_code == 1 and "--max-mean-error" in res.stderr
    res = invoke("quantize", model, "-o", out, "--min-agreement", "0.98",
                 "--max-accuracy-drop", "0.01")  # fmt: skip
    assert res.exit_code == 0, res.output


def _digits_npz(path: Path, **overrides) -> Path:
    x = split_digits().x_train[:20]
    arrays = {"input": x, **overrides}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


BAD_DATA = {
    "wrong name": (
        {"input": None, "x": np.zeros((4, 1, 8, 8), np.float32)},
        "missing input(s) input",
    ),
    "wrong dtype": ({"input": np.zeros((4, 1, 8, 8), np.int64)}, "dtype int64"),
    "wrong shape": ({"input": np.zeros((4, 1, 7, 7), np.float32)}, "dim 2 is 7"),
    "wrong rank": ({"input": np.zeros((4, 64), np.float32)}, "rank 2"),
    "empty": ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "empty"),
    "nan": ({"input": np.full((4, 1, 8, 8), np.nan, np.float32)}, "NaN"),
    "bad labels": ({"labels": np.zeros(3, np.int64)}, "'labels' must be integer class ids"),
}


@pytest.mark.parametrize("case", [*BAD_DATA, "not npz", "empty folder"])
@pytest.mark.parametrize("flag", ["--calibration", "--eval"])
def test_bad_data_exit_2_one_line_nothing_written(tmp_path, case, flag):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if case == "not npz":
        bad = data_dir / "bad.npz"
        bad.write_bytes(b"not a zip")
        expect = "not a readable .npz"
    elif case == "empty folder":
        bad = data_dir
        expect = "folder holds no .npz files"
    else:
        arrays, expect = BAD_DATA[case]
        bad = _digits_npz(data_dir / "bad.npz", **arrays)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = invoke("quantize", ZOO / "mlp.onnx", "-o", out_dir / "q.onnx", flag, bad)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"bnfold: error: {bad}") and expect in lines[0], lines[0]
    assert _files(out_dir) == []


def test_non_zoo_model_needs_calibration_data(tmp_path):
    model = ROOT / "models" / "cnn.onnx"  # input (batch, 3, 16, 16): not a digits model
    res = invoke("quantize", model, "-o", tmp_path / "q.onnx")
    assert res.exit_code == 2 and "give --calibration DATA" in res.stderr
    rng = np.random.default_rng(0)
    for i in range(2):
        np.savez(tmp_path / f"c{i}.npz", input=rng.normal(size=(8, 3, 16, 16)).astype(np.float32))
    res = invoke("quantize", model, "-o", tmp_path / "q.onnx", "--calibration", tmp_path,
                 "--report", tmp_path / "r.json", "--min-agreement", "0")  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["calibration"]["samples"] == 16 and d["fold"]["bn_folded"] == 4
    assert any("proved on the calibration data" in n for n in d["notes"])


def test_eval_npz_with_labels_gives_accuracy(tmp_path):
    data = split_digits()
    np.savez(tmp_path / "held.npz", input=data.x_test[:100], labels=data.y_test[:100])
    res = invoke("quantize", ZOO / "digits_cnn.onnx", "-o", tmp_path / "q.onnx",
                 "--eval", tmp_path / "held.npz", "--calibration-samples", "50", "--json", "-")  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    (o,) = d["proof"]["outputs"]
    assert d["evaluation"]["samples"] == 100 and d["calibration"]["samples"] == 50
    top1 = _top1(tmp_path / "q.onnx", data.x_test[:100])
    assert o["accuracy_int8"] == float((top1 == data.y_test[:100]).mean())


def test_exclude_keeps_a_node_in_float(tmp_path):
    model, out = ZOO / "digits_cnn.onnx", tmp_path / "q.onnx"
    res = invoke("quantize", model, "-o", out, "--exclude", "/15/Gemm", "--json", "-")
    assert res.exit_code == 0, res.output
    float_ops = json.loads(res.stdout)["float_ops"]
    assert float_ops["tail"] == [{"op_type": "Gemm", "name": "/15/Gemm", "where": "tail"}]
    names = {t.name for t in onnx.load(out).graph.initializer}
    assert "15.weight" in names and "15.weight_quantized" not in names
    # a Conv excluded between quantized activations: onnxruntime's optimiser quantizes its
    # weight itself (WeightBiasQuantization), so nothing stays in float
    res = invoke("quantize", model, "-o", out, "--exclude", "/3/Conv", "--json", "-")
    assert res.exit_code == 0 and json.loads(res.stdout)["float_ops"]["between"] == []
    assert "/3/Conv" in {n.name for n in onnx.load(out).graph.node if n.op_type == "Conv"}
    res = invoke("quantize", model, "-o", out, "--exclude", "/1/BatchNormalization")
    assert res.exit_code == 2 and "folded away" in res.stderr
    res = invoke("quantize", model, "-o", out, "--exclude", "nope")
    assert res.exit_code == 2 and "no node of that name" in res.stderr


def test_method_and_type_options(tmp_path):
    out = tmp_path / "q.onnx"
    res = invoke("quantize", ZOO / "mlp.onnx", "-o", out, "--method", "percentile",
                 "--weight-type", "uint8", "--reduce-range", "on", "--json", "-")  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["types"]["weight"] == "uint8" and d["types"]["reduce_range"]
    assert d["types"]["reason"].startswith("set by the user")
    weights = [t for t in onnx.load(out).graph.initializer if t.name.endswith("weight_quantized")]
    assert weights
    for t in weights:
        q = numpy_helper.to_array(t)
        # reduced range: the scale spans (0, 127) around zero point 64; r_max lands on 127.5,
        # which onnxruntime rounds to 128 (it clips only to the type's range)
        assert q.dtype == np.uint8 and q.max() <= 128 and q.min() >= 0
    res = invoke("quantize", ZOO / "mlp.onnx", "-o", out, "--method", "kl")
    assert res.exit_code == 2 and "--method must be one of" in res.stderr


def test_output_may_not_overwrite_the_input(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes((ZOO / "mlp.onnx").read_bytes())
    res = invoke("quantize", model, "-o", model)
    assert res.exit_code == 2 and "-o would overwrite the input model" in res.stderr
    assert "--in-place" not in res.stderr  # quantize has no such option
    assert model.read_bytes() == (ZOO / "mlp.onnx").read_bytes()


def test_forward_option(tmp_path):
    res = invoke("quantize", ZOO / "mlp.onnx", "-o", tmp_path / "q.onnx", "--forward", "exact",
                 "--json", "-")  # fmt: skip
    assert res.exit_code == 0 and json.loads(res.stdout)["forward"] == "exact"
    res = invoke("quantize", ZOO / "mlp.onnx", "-o", tmp_path / "q.onnx", "--forward", "sideways")
    assert res.exit_code == 2 and "--forward must be one of off, exact, int8-safe" in res.stderr
    res = invoke(
        "quantize", ZOO / "mlp.onnx", "-o", tmp_path / "q.onnx", "--forward", "off", "--json", "-"
    )
    assert res.exit_code == 0 and json.loads(res.stdout)["forward"] == "off"


def test_bench_in_one_paired_run(tmp_path):
    res = invoke("quantize", ZOO / "digits_cnn.onnx", "-o", tmp_path / "q.onnx", "--json", "-", "--bench",
                 "--bench-batch", "1", "--rounds", "2", "--iters", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    bench = json.loads(res.stdout)["bench"]
    labels = [v["label"] for v in bench["variants"]]
    assert labels == ["fp32", "int8 ort", "int8 ort+preprocess", "int8 bnfold"]
    float_ops = {
        v["label"]: v["float_ops"] and len(v["float_ops"]["between"]) for v in bench["variants"]
    }
    assert float_ops["int8 ort"] == 4 and float_ops["int8 ort+preprocess"] == 1  # Gemm+BN
    assert float_ops["int8 bnfold"] == 0
    (level,) = bench["bench"]["1"]["levels"]
    assert level["level"] == "all" and set(level["sides"]) == set(labels)
    assert {(s["reference"], s["candidate"]) for s in level["speedups"]} == {
        (label, "int8 bnfold") for label in labels[:3]
    }
    assert all(len(s["round_medians_ms"]) == 2 for s in level["sides"].values())


def test_quantize_does_not_import_torch(tmp_path):
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom bnfold.cli import app\n"
        f"r = CliRunner().invoke(app, ['quantize', {str(ZOO / 'mlp.onnx')!r}, '-o', "
        f"{str(tmp_path / 'q.onnx')!r}, '-q'])\n"
        "assert r.exit_code == 0, r.output\nprint('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "q.onnx").stat().st_size > 0

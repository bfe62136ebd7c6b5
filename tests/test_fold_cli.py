"""`bnfold fold` and `bnfold inspect` through typer's CliRunner, on real files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx_helpers import assert_close, bn_stats, make_model, op_types, run
from typer.testing import CliRunner

from bnfold.cli import app

runner = CliRunner()


def _model(rng, var=None, opset=17):
    p = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32),
         "B": rng.normal(0, 0.5, 6).astype(np.float32), **bn_stats(rng, 6)}  # fmt: skip
    if var is not None:
        p["var"][1] = var
    return make_model(
        f"""<ir_version: 8, opset_import: ["" : {opset}]>
        g (float[1,4,6,6] x) => (float[1,6,4,4] y) {{
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }}""",
        p,
        check=opset <= 23,
    )


@pytest.fixture
def model_path(tmp_path, rng):
    path = tmp_path / "net.onnx"
    onnx.save(_model(rng), path)
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_default_output_name(model_path, rng):
    before = model_path.read_bytes()
    result = invoke("fold", model_path)
    assert result.exit_code == 0, result.output
    out = model_path.with_name("net.folded.onnx")
    assert out.exists() and model_path.read_bytes() == before
    assert op_types(out.read_bytes()) == ["Conv"]
    feeds = {"x": rng.normal(0, 1, (1, 4, 6, 6)).astype(np.float32)}
    assert_close(run(before, feeds)[0], run(out.read_bytes(), feeds)[0], 3e-5, 1e-6)
    assert "folded 1 of 1 BatchNormalization" in result.output


def test_output_option_and_report(model_path, tmp_path):
    out, report = tmp_path / "sub" / "o.onnx", tmp_path / "r.json"
    result = invoke("fold", model_path, "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    assert out.exists() and not model_path.with_name("net.folded.onnx").exists()
    data = json.loads(report.read_text())
    assert len(data["folded"]) == 1 and data["skipped"] == []
    assert data["folded"][0]["fold"] == "conv+bn"
    assert (data["bn_before"], data["bn_after"], data["bn_folded"]) == (1, 0, 1)
    assert (data["nodes_before"], data["nodes_after"]) == (2, 1)
    assert {"load", "fold", "save"} <= set(data["timings"])
    assert data["output"] == str(out)


def test_json_and_quiet(model_path, tmp_path):
    result = invoke("fold", model_path, "-o", tmp_path / "a.onnx", "--json", "-")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["bn_folded"] == 1 and "summary" in data
    quiet = invoke("fold", model_path, "-o", tmp_path / "b.onnx", "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == ""
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_skipped_reason_in_report(tmp_path, rng):
    model = _model(rng)
    model.graph.node[1].attribute.append(onnx.helper.make_attribute("training_mode", 1))
    model.graph.node[1].output.extend(["rm", "rv"])
    path = tmp_path / "t.onnx"
    onnx.save(model, path)
    result = invoke("fold", path, "--json", "-")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["folded"] == [] and "training_mode=1" in data["skipped"][0]["reason"]


def test_inspect_writes_nothing(model_path):
    before = _files(model_path.parent)
    result = invoke("inspect", model_path, "--json", "-")
    assert result.exit_code == 0 and json.loads(result.stdout)["bn_folded"] == 1
    assert _files(model_path.parent) == before


def _bad_inputs(tmp_path, rng):
    cases = {}
    p = tmp_path / "text.onnx"
    p.write_text("this is not a protobuf\n" * 20)
    cases["not onnx"] = p
    good = _model(rng).SerializeToString()
    p = tmp_path / "truncated.onnx"
    p.write_bytes(good[: len(good) // 2])
    cases["truncated"] = p
    cases["missing"] = tmp_path / "missing.onnx"
    p = tmp_path / "nan.onnx"
    onnx.save(_model(rng, var=np.nan), p)
    cases["nan variance"] = p
    p = tmp_path / "opset99.onnx"
    onnx.save(_model(rng, opset=99), p)
    cases["opset 99"] = p
    return cases


@pytest.mark.parametrize("case", ["not onnx", "truncated", "missing", "nan variance", "opset 99"])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, rng, case):
    path = _bad_inputs(tmp_path, rng)[case]
    before = path.read_bytes() if path.exists() else None
    listing = _files(tmp_path)
    result = invoke("fold", path, "--report", tmp_path / "r.json")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bnfold: error:") and str(path) in lines[0]
    assert _files(tmp_path) == listing  # nothing written, no temporary left behind
    if before is not None:
        assert path.read_bytes() == before
    if case == "nan variance":
        assert "NaN" in lines[0]
    if case == "opset 99":
        assert "opset 99" in lines[0]

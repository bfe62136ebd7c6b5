"""One shape rule for fold, check, bench and the API (issue 9 item 1), on real files through
typer's CliRunner.

Symbolic batch (first) dims default to 1 and a note says so; ``--shape`` for some dims keeps
that default for the others; a dim nothing resolves names the input, the dim and both
``--shape`` forms, and the API's error speaks of the API's ``shapes`` argument.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import MODELS
from cli_helpers import invoke as cli
from onnx_helpers import bn_stats, make_model

import bnfold
from bnfold.errors import UsageError
from bnfold.verify import CheckOptions, check_models


@pytest.fixture(scope="module")
def nhw(tmp_path_factory) -> Path:
    """Conv -> BN on an input of shape (N, 3, H, W), all three symbolic."""
    rng = np.random.default_rng(5)
    params = {"W": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), **bn_stats(rng, 4)}
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3,H,W] x) => (float[N,4,H,W] y) {
          z = Conv <pads = [1, 1, 1, 1]> (x, W)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }""",
        params,
    )
    path = tmp_path_factory.mktemp("nhw") / "nhw.onnx"
    onnx.save(model, path)
    return path


def test_check_and_bench_run_the_samples_at_batch_1(tmp_path):
    folded = tmp_path / "cnn.folded.onnx"
    assert cli("fold", MODELS / "cnn.onnx", "-o", folded, "-q").returncode == 0
    note = "symbolic batch dim 'batch' of input 'input' run at 1"
    check = cli("check", MODELS / "cnn.onnx", folded, "--json", tmp_path / "c.json")
    assert check.returncode == 0, check.stderr
    assert note in check.stdout
    shapes = json.loads((tmp_path / "c.json").read_text())["outputs"][0]["shapes"]
    assert shapes == [[1, 10]] * 3
    bench = cli(
        "bench", MODELS / "cnn.onnx", folded, "--rounds", "2", "--iters", "1", "--warmup", "0",
        "--no-memory", "--opt-level", "disable", "--json", "-",
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    data = json.loads(bench.stdout)
    assert data["input_shapes"] == {"input": [1, 3, 16, 16]}
    assert any(note in n for n in data["notes"])


def test_shape_for_some_dims_keeps_the_batch_default(nhw, tmp_path):
    out = tmp_path / "nhw.folded.onnx"
    fold = cli("fold", nhw, "-o", out, "--shape", "H=16", "--shape", "W=12", "--json", "-")
    assert fold.returncode == 0, fold.stderr
    verify = json.loads(fold.stdout)["verify"]
    assert verify["outputs"][0]["shapes"] == [[1, 4, 16, 12]] * 3
    assert any("'N' of input 'x' run at 1" in n for n in verify["notes"])
    check = cli(
        "check", nhw, out, "--shape", "H=5", "--shape", "W=7", "--batch", "2", "--json", "-"
    )
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["outputs"][0]["shapes"] == [[2, 4, 5, 7]] * 3


def test_unresolved_dim_names_input_dim_and_both_shape_forms(nhw, tmp_path):
    for args in (
        ["fold", nhw, "-o", tmp_path / "o.onnx"],
        ["check", nhw, nhw],
        ["bench", nhw, nhw, "--no-memory"],
    ):
        res = cli(*args)
        assert res.returncode == 2, res.stderr
        assert res.stdout == "" and len(res.stderr.splitlines()) == 1, res.stderr
        line = res.stderr.strip()
        assert line.startswith(f"bnfold: error: {nhw}: input 'x' dim 2 ('H')"), line
        assert "--shape H=N (that dim)" in line and "--shape x=1x3x1x1 (the whole input)" in line
    assert not (tmp_path / "o.onnx").exists()


def test_shape_typo_lists_inputs_and_symbolic_dims(nhw):
    res = cli("check", nhw, nhw, "--shape", "h=16")
    assert res.returncode == 2
    assert "(inputs: x; symbolic dims: H, N, W)" in res.stderr


def test_api_error_speaks_of_the_api_argument(nhw):
    with pytest.raises(UsageError) as caught:
        check_models(nhw, nhw)
    message = str(caught.value)
    assert "shapes={'H': (N,)} or shapes={'x': (1, 3, 1, 1)}" in message
    assert "--shape" not in message
    result = check_models(nhw, nhw, CheckOptions(shapes={"H": (4,), "W": (4,)}, samples=1))
    assert result.passed and result.outputs[0].shapes == [(1, 4, 4, 4)]
    with pytest.raises(UsageError, match=r"shapes=\{'H'"):
        bnfold.fold_file(nhw, nhw.with_name("api.onnx"), verify=CheckOptions())
    assert not nhw.with_name("api.onnx").exists()


def test_bench_takes_real_inputs_like_check(nhw, tmp_path):
    np.savez(tmp_path / "x.npz", x=np.ones((3, 3, 5, 6), np.float32))
    res = cli("bench", nhw, nhw, "--inputs", tmp_path / "x.npz", "--rounds", "2", "--iters", "1",
              "--warmup", "0", "--no-memory", "--opt-level", "disable", "--json", "-")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["input_shapes"] == {"x": [3, 3, 5, 6]}

"""`bnfold fold`'s fold options (README, the option table): --no-affine and
--refuse-initializer-inputs, through the real CLI on real files."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx_helpers import assert_close, bn_stats, make_model, op_types, run
from typer.testing import CliRunner

from bnfold.cli import app

runner = CliRunner()


def _fold_json(path, *options: str) -> tuple[dict, bytes]:
    out = path.with_name("out.onnx")
    result = runner.invoke(app, ["fold", str(path), "-o", str(out), "--json", "-", *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out.read_bytes()


def test_no_affine_leaves_a_standalone_mul(tmp_path, rng):
    p = {"W": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
         "c": rng.uniform(0.5, 2.0, (1, 4, 1, 1)).astype(np.float32), **bn_stats(rng, 4)}  # fmt: skip
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,6,6] x) => (float[1,4,4,4] y) {
          a = Conv (x, W)
          b = BatchNormalization (a, gamma, beta, mean, var)
          y = Mul (b, c)
        }""",
        p,
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    feeds = {"x": rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float32)}
    for options, folds, ops in [
        ((), ["conv+bn", "conv+mul"], ["Conv"]),
        (("--no-affine",), ["conv+bn"], ["Conv", "Mul"]),
    ]:
        report, folded = _fold_json(path, *options)
        assert [f["fold"] for f in report["folded"]] == folds
        assert op_types(folded) == ops
        assert_close(run(model, feeds)[0], run(folded, feeds)[0], 3e-5, 1e-6)


def test_refuse_initializer_inputs(tmp_path, rng):
    """IR 3: parameters that are initializers and graph inputs fold as constants by default;
    --refuse-initializer-inputs refuses them and the BN stays."""
    p = {"W": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
         "B": rng.normal(0, 0.5, 4).astype(np.float32), **bn_stats(rng, 4)}  # fmt: skip
    model = make_model(
        """<ir_version: 3, opset_import: ["" : 7]>
        g (float[1,3,6,6] x, float[4,3,3,3] W, float[4] B, float[4] gamma, float[4] beta,
           float[4] mean, float[4] var) => (float[1,4,4,4] y) {
          z = Conv (x, W, B)
          y = BatchNormalization (z, gamma, beta, mean, var)
        }""",
        p,
    )
    path = tmp_path / "ir3.onnx"
    onnx.save(model, path)
    report, folded = _fold_json(path)
    assert [f["fold"] for f in report["folded"]] == ["conv+bn"] and op_types(folded) == ["Conv"]
    report, folded = _fold_json(path, "--refuse-initializer-inputs")
    assert report["folded"] == []
    (skipped,) = report["skipped"]
    assert "refused by --refuse-initializer-inputs" in skipped["reason"]
    assert op_types(folded) == ["Conv", "BatchNormalization"]

"""Input sets sized from declared dims are capped before allocation (``--max-input-mib``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import safety_models as sm
from typer.testing import CliRunner

from bnfold.cli import app
from bnfold.errors import BadInputError
from bnfold.verify import CheckOptions, check_models

runner = CliRunner()


def _one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def wide(tmp_path):
    """Conv -> BN on a 1x3x1024x1024 float32 input: 12 MiB per input set."""
    model = sm.conv_bn(x_dims=[1, 3, 1024, 1024])
    return sm.save(model, tmp_path / "wide.onnx")


@pytest.fixture
def symbolic(tmp_path):
    return sm.save(sm.conv_bn(x_dims=["N", 3, 8, 8]), tmp_path / "sym.onnx")


def test_fixed_dims_over_the_budget_say_how_much_to_allow(wide):
    res = runner.invoke(app, ["check", str(wide), str(wide), "--max-input-mib", "8"])
    assert res.exit_code == 2
    assert _one_line(res) == (
        f"bnfold: error: {wide}: one input set would take 12 MiB, over the 8 MiB budget: input "
        "'x' is 1x3x1024x1024 float32 (12 MiB); its dims are fixed in the model, so raise the "
        "budget with --max-input-mib 12"
    )
    assert (
        runner.invoke(app, ["check", str(wide), str(wide), "--max-input-mib", "12"]).exit_code == 0
    )
    assert (
        runner.invoke(app, ["check", str(wide), str(wide), "--samples", "1"]).exit_code == 0
    )  # 1 GiB


def test_symbolic_dims_suggest_a_shape(symbolic):
    res = runner.invoke(app, ["check", str(symbolic), str(symbolic), "--batch", "2000000"])
    line = _one_line(res)
    assert res.exit_code == 2 and "input 'x' is 2000000x3x8x8 float32 (1.43 GiB)" in line
    assert (
        "give smaller dims, e.g. --shape x=1x3x8x8, or raise it with --max-input-mib 1465" in line
    )


def test_fold_and_bench_take_the_flag(wide, tmp_path):
    res = runner.invoke(
        app, ["fold", str(wide), "-o", str(tmp_path / "o.onnx"), "--max-input-mib", "4"]
    )
    assert res.exit_code == 2 and "over the 4 MiB budget" in _one_line(res)
    assert not (tmp_path / "o.onnx").exists()
    bench = ["bench", str(wide), str(wide), "--rounds", "1", "--iters", "1", "--no-memory"]
    res = runner.invoke(app, [*bench, "--max-input-mib", "4"])
    assert res.exit_code == 2 and "over the 4 MiB budget" in _one_line(res)


def test_npz_arrays_are_sized_from_their_headers_before_reading(wide, tmp_path):
    npz = tmp_path / "real.npz"
    np.savez(npz, x=np.zeros((1, 3, 1024, 1024), np.float32))
    options = CheckOptions(samples=0, inputs=[npz], max_input_bytes=4 << 20)
    with pytest.raises(BadInputError) as err:
        check_models(wide, wide, options)
    assert err.value.path == str(npz)
    assert "array 'x' is 1x3x1024x1024 float32" in err.value.problem
    options.max_input_bytes = 16 << 20
    assert check_models(wide, wide, options).passed


def test_a_corrupt_npz_is_bad_input(wide, tmp_path):
    npz = tmp_path / "bad.npz"
    npz.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BadInputError, match="not a readable .npz file"):
        check_models(wide, wide, CheckOptions(samples=0, inputs=[npz]))


def test_sequential_sessions_give_the_same_result(tmp_path):
    """The reference runs to completion before the candidate exists; the comparison is as
    before (names paired, outputs compared per input set)."""
    from _verify_models import conv_bn_pair

    ref, cand = conv_bn_pair()
    result = check_models(ref, cand, CheckOptions(samples=2))
    assert result.passed and result.input_sets == ["random #0 (seed 0)", "random #1 (seed 0)"]
    _, bad = conv_bn_pair(break_fold="channel")
    assert not check_models(ref, bad, CheckOptions(samples=2)).passed
    onnx.checker.check_model(ref)

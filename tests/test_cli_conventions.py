"""The CLI conventions the README promises, each once broken (found by a review as a new user):
usage errors on one line, no empty input sets, finite tolerances, ``--force`` still exit 1,
every written file confirmed, errors naming the file, no empty folder left by ``-j``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import MODELS, cli
from cli_helpers import invoke as run
from safety_models import external

import bnfold
from bnfold.errors import UsageError
from bnfold.verify import CheckOptions, check_models

CNN = MODELS / "cnn.onnx"


def _one_error_line(result, *parts: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bnfold: error: "), lines[0]
    assert all(p in lines[0] for p in parts), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["fold"], ["Missing argument", "'bnfold fold --help'"]),
        (["fold", CNN, "--bogus"], ["No such option: --bogus", "'bnfold fold --help'"]),
        (["fold", CNN, "--batch", "0"], ["'--batch'", "greater than or equal to 1"]),
        (["check", CNN, CNN, "--threads", "x"], ["'--threads'", "'bnfold check --help'"]),
        (["bench", CNN, CNN, "--rounds", "0"], ["'--rounds'"]),
        (["nosuchcommand"], ["No such command", "'bnfold --help'"]),
    ],
)
def test_usage_errors_are_one_line_exit_2(tmp_path, args, parts):
    """click drew a five-line box without the ``bnfold: error:`` prefix."""
    _one_error_line(cli(*args), *parts)
    assert not list(tmp_path.iterdir())


def test_bare_command_still_shows_the_help():
    result = cli()
    assert result.returncode == 2
    assert "Usage: bnfold" in result.stdout + result.stderr
    assert "fold" in result.stdout + result.stderr


@pytest.mark.parametrize("shape", ["input=0x3x16x16", "batch=0"])
def test_a_zero_dim_is_refused_not_an_empty_pass(tmp_path, shape):
    """``--shape batch=0`` made empty inputs: verification "passed" comparing nothing."""
    out = tmp_path / "o.onnx"
    _one_error_line(run("fold", CNN, "-o", out, "--shape", shape), "every dim must be >= 1")
    assert not out.exists()
    _one_error_line(run("check", CNN, CNN, "--shape", shape), "every dim must be >= 1")


def test_the_api_refuses_a_zero_dim_too():
    with pytest.raises(UsageError, match="every dim must be >= 1"):
        check_models(CNN, CNN, CheckOptions(shapes={"batch": (0,)}))


def test_a_shape_given_twice_is_refused():
    _one_error_line(
        run("check", CNN, CNN, "--shape", "batch=2", "--shape", "batch=3"), "given twice"
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["--atol", "nan"],
        ["--rtol", "inf"],
        ["--output-tol", "bn_fc_out=nan,0"],
        ["--output-tol", "bn_fc_out=0,inf"],
    ],
)
def test_tolerances_must_be_finite(tmp_path, flags):
    """``--rtol inf`` passed any candidate; ``--atol nan`` failed every one with exit 1."""
    out = tmp_path / "o.onnx"
    _one_error_line(run("fold", CNN, "-o", out, *flags), "finite")
    assert not out.exists()


def test_the_api_refuses_a_non_finite_per_output_tolerance():
    with pytest.raises(UsageError, match="finite"):
        check_models(CNN, CNN, CheckOptions(per_output={"bn_fc_out": (float("nan"), 0.0)}))


def test_force_writes_a_failing_fold_and_still_exits_1(tmp_path):
    """``fold --force`` exited 0 on a failed verification: CI read it as a pass."""
    out = tmp_path / "o.onnx"
    result = cli("fold", CNN, "-o", out, "--atol", "0", "--rtol", "0", "--force", "-q")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"bnfold: error: {CNN}: the folded model differs beyond tolerance; written anyway (--force)"
    ]
    assert bnfold.fold(out).report.bn_before == 0  # written, folded


def test_force_in_many_mode_exits_1_and_names_what_was_written(tmp_path):
    out = tmp_path / "out"
    result = cli(
        "fold", CNN, MODELS / "mlp.onnx", "--output-dir", out, "--atol", "0", "--rtol", "0",
        "--force", "--json", "-",
    )  # fmt: skip
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert sorted(data["failed"]) == sorted([str(CNN), str(MODELS / "mlp.onnx")])
    for entry in data["models"]:
        assert entry["exit_code"] == 1
        assert Path(entry["output"]).is_file()


def test_every_written_file_is_confirmed_external_data_included(tmp_path):
    """Only the model file was named; its external-data file was written silently."""
    model = external(tmp_path)
    out = tmp_path / "folded.onnx"
    result = cli("fold", model, "-o", out)
    assert result.returncode == 0, result.stderr
    wrote = [line for line in result.stderr.splitlines() if line.startswith("wrote ")]
    assert wrote == [f"wrote {out}", f"wrote {out}.data"]
    assert Path(f"{out}.data").is_file()


def test_many_mode_confirms_each_file_and_leaves_output_null_on_failure(tmp_path):
    """A failed model's JSON entry named an output path that was never written."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CNN, folder / "cnn.onnx")
    (folder / "garbage.onnx").write_bytes(b"not a model")
    out = tmp_path / "out"
    result = cli("fold", folder, "--output-dir", out, "--json", "-")
    assert result.returncode == 2
    entries = {Path(e["model"]).name: e for e in json.loads(result.stdout)["models"]}
    assert entries["garbage.onnx"]["output"] is None
    written = Path(entries["cnn.onnx"]["output"])
    assert written.is_file()
    assert f"wrote {written}" in result.stderr.splitlines()
    assert not (out / "garbage.folded.onnx").exists()


def test_parallel_failures_leave_no_empty_output_folder(tmp_path):
    """With ``-j 2`` the output folder created by one worker was left when all failed."""
    models = [MODELS / n for n in ("cnn.onnx", "mlp.onnx", "legacy_constants.onnx", "fp16.onnx")]
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        result = cli(
            "fold", *models, "-j", "2", "--output-dir", out, "--atol", "0", "--rtol", "0", "-q"
        )
        assert result.returncode == 1
        assert result.stdout == ""
        assert not out.exists()


def test_check_failure_names_the_model_and_keeps_onnxruntime_detail():
    """The error named no file and cut onnxruntime's message at its first line."""
    line = _one_error_line(
        run("check", CNN, MODELS / "mlp.onnx"), f"{MODELS / 'mlp.onnx'}: ", "onnxruntime failed"
    )
    assert "Got: 4 Expected: 2" in line


def test_bench_failure_names_the_model():
    line = _one_error_line(run("bench", CNN, MODELS / "mlp.onnx", "--rounds", "1"))
    assert str(MODELS / "mlp.onnx") in line or str(CNN) in line


def test_labels_outside_the_classes_are_bad_input(tmp_path):
    """Labels 100..199 for a 10-class model gave accuracy 0 and exit 0."""
    from bnfold.train.data import split_digits

    data = split_digits(0.2, 0)
    npz = tmp_path / "eval.npz"
    x = data.x_test[:20].astype(np.float32).reshape(-1, 1, 8, 8)
    np.savez(npz, input=x, labels=np.arange(100, 120))
    out = tmp_path / "q.onnx"
    result = cli(
        "quantize", MODELS / "zoo" / "digits_cnn.onnx", "-o", out, "--eval", npz,
        "--min-agreement", "0",
    )  # fmt: skip
    _one_error_line(result, f"{npz}: labels must be class ids 0..9", "got 100..119")
    assert not out.exists()


def test_labels_need_fit_one_classifier_output_only(tmp_path):
    """After the fix above, a second classifier-shaped output (3 columns) made labels 0..9
    bad input although the 10-class head takes them: the labels must fit one output, and
    accuracy is given for the outputs they fit."""
    import onnx
    from onnx import helper, numpy_helper

    from bnfold.train.data import split_digits

    model = onnx.load(MODELS / "zoo" / "digits_cnn.onnx")
    for name, values in (("s0", [0]), ("s3", [3]), ("axis1", [1])):
        model.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
    model.graph.node.append(helper.make_node("Slice", ["output", "s0", "s3", "axis1"], ["head3"]))
    model.graph.output.append(
        helper.make_tensor_value_info("head3", onnx.TensorProto.FLOAT, ["batch", 3])
    )
    path = tmp_path / "two_heads.onnx"
    onnx.save(model, path)
    data = split_digits(0.2, 0)
    npz = tmp_path / "eval.npz"
    x = data.x_test[:64].astype(np.float32).reshape(-1, 1, 8, 8)
    np.savez(npz, input=x, labels=data.y_test[:64])
    result = cli(
        "quantize", path, "-o", tmp_path / "q.onnx", "--eval", npz, "--min-agreement", "0.9",
        "--json", "-",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outputs = {o["name"]: o for o in json.loads(result.stdout)["proof"]["outputs"]}
    assert outputs["output"]["accuracy_fp32"] > 0.9
    assert outputs["head3"]["accuracy_fp32"] is None

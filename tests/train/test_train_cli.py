"""``bnfold train``, ``export`` and ``demo`` end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import onnx  # noqa: E402
from cli_helpers import cli  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from bnfold.cli import app  # noqa: E402

pytestmark = pytest.mark.train
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, bnfold, bnfold.cli, bnfold.cli.train; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_then_export(tmp_path):
    res = invoke(
        "train", "--model", "mlp", "--epochs", "2", "--activation", "sigmoid", "--out", tmp_path
    )
    assert res.exit_code == 0, res.output
    stem = "mlp-sigmoid"
    for suffix in (".pt", ".metrics.json", ".curve.png"):
        assert (tmp_path / f"{stem}{suffix}").stat().st_size > 0
    metrics = json.loads((tmp_path / f"{stem}.metrics.json").read_text())
    assert metrics["config"]["activation"] == "sigmoid" and len(metrics["history"]) == 2
    onnx_path = tmp_path / "mlp.onnx"
    res = invoke(
        "export", tmp_path / f"{stem}.pt", "-o", onnx_path, "--dynamic-batch", "--opset", "18"
    )
    assert res.exit_code == 0, res.output
    model = onnx.load(onnx_path)
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 3
    assert model.opset_import[0].version == 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    res = invoke("export", tmp_path / f"{stem}.pt", "-o", tmp_path / "b.onnx", "--json", "-")
    assert res.exit_code == 0 and json.loads(res.stdout)["bn_nodes"] == 3  # stdout is the JSON
    assert f"wrote {tmp_path / 'b.onnx'}" in res.stderr


def test_train_no_bn_writes_its_own_name(tmp_path):
    res = invoke(
        "train",
        "--model",
        "digits_cnn",
        "--no-bn",
        "--epochs",
        "1",
        "--lr",
        "0.05",
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "digits_cnn-nobn.metrics.json").read_text())
    assert metrics["config"]["bn"] is False and metrics["config"]["lr"] == 0.05


def test_train_compare_writes_table_and_plot(tmp_path):
    res = invoke("train", "--compare", "--epochs", "1", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "| sigmoid | 0.05 |" in res.output
    data = json.loads((tmp_path / "compare.json").read_text())
    assert len(data["runs"]) == 2 * 4 * 2
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert (tmp_path / "compare.md").read_text().startswith("| activation |")


def test_bad_options_and_files_exit_2(tmp_path):
    assert invoke("train", "--model", "vgg", "--out", tmp_path).exit_code == 2
    assert invoke("train", "--compare", "--lr", "0.1", "--out", tmp_path).exit_code == 2
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert invoke("export", bogus, "-o", tmp_path / "x.onnx").exit_code == 2
    assert not (tmp_path / "x.onnx").exists()


def test_train_confirms_each_file_on_stderr(tmp_path):
    res = invoke("train", "--model", "mlp", "--epochs", "1", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    wrote = [line for line in res.stderr.splitlines() if line.startswith("wrote ")]
    assert wrote == [
        f"wrote {tmp_path / f'mlp{s}'}" for s in (".pt", ".metrics.json", ".curve.png")
    ]
    assert "wrote" not in res.stdout


@pytest.mark.parametrize(
    ("command", "blocked"),
    [
        (["train", "--model", "mlp", "--epochs", "1"], "mlp.pt"),
        (["train", "--model", "mlp", "--epochs", "1"], "mlp.curve.png"),
        (["train", "--compare", "--epochs", "1"], "compare.json"),
        (["demo", "--quick"], "bench.png"),
        (["demo", "--quick"], "digits_cnn.folded.onnx"),
    ],
)
def test_every_file_is_checked_before_training(tmp_path, command, blocked):
    """Only the folder was checked: training ran, then the write failed naming a temp file."""
    out = tmp_path / "out"
    (out / blocked).mkdir(parents=True)
    res = cli(*command, "--out", out)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"bnfold: error: {out / blocked}: --out names a folder, not a file"
    ]
    assert [p.name for p in out.iterdir()] == [blocked]


def test_export_over_its_checkpoint_does_not_suggest_in_place(tmp_path):
    """export has no --in-place, yet its error told the user to pass it."""
    res = invoke("train", "--model", "mlp", "--epochs", "1", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    ckpt = tmp_path / "mlp.pt"
    before = ckpt.read_bytes()
    res = invoke("export", ckpt, "-o", ckpt)
    assert res.exit_code == 2
    assert "would overwrite an input file" in res.stderr
    assert "--in-place" not in res.stderr
    assert ckpt.read_bytes() == before


def test_demo_quick_end_to_end(tmp_path):
    res = invoke("demo", "--quick", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "demo_report.json").read_text())
    assert report["passed"] is True
    summary = report["summary"]
    assert summary["bn_nodes_before"] == 4 and summary["bn_nodes_after"] == 0
    assert summary["test_accuracy"] > 0.8
    assert summary["onnx_accuracy_after"] == summary["onnx_accuracy_before"]
    assert summary["max_abs_error"] < 1e-4
    assert set(summary["speedup_original_over_folded"]) == {"disable", "all"}
    assert summary["folds_by_direction"] == {"backward": 4}
    for path in report["files"].values():
        assert (tmp_path / path.rsplit("/", 1)[-1]).stat().st_size > 0
    assert "BatchNorm     4 -> 0 nodes; folded: 4 backward" in res.output
    long = [ln for ln in res.stdout.splitlines() if len(ln) > 80 and str(tmp_path) not in ln]
    assert not long, long
    # the int8 leg: quantized after folding, proved against fp32, timed against onnxruntime's own
    assert summary["int8_passed"] is True
    assert summary["int8_float_ops_left"] == {
        "fp32": None, "int8 ort": 4, "int8 ort+preprocess": 1, "int8 bnfold": 0
    }  # fmt: skip
    assert summary["int8_agreement"]["int8 bnfold"] >= 0.99
    assert set(summary["int8_latency_ms"]["int8 bnfold"]) == {"1", "64"}
    assert summary["int8_size_bytes"]["int8 bnfold"] < summary["int8_size_bytes"]["fp32"]
    assert report["quantize"]["fold"]["bn_folded"] == 4
    assert "int8 latency" in res.output and "bnfold int8 speed-up against" in res.output


def test_compare_refuses_bn_impl_it_would_ignore(tmp_path):
    """Regression: ``--compare --bn-impl torch`` silently ran the grid with the reference BN."""
    res = invoke("train", "--compare", "--bn-impl", "torch", "--epochs", "1", "--out", tmp_path)
    assert res.exit_code == 2
    assert not (tmp_path / "compare.json").exists()


def test_cli_model_names_match_the_zoo():
    """The CLI keeps its own copy of the names so that ``--help`` needs no torch."""
    from bnfold.cli.train import MODEL_NAMES
    from bnfold.train import MODEL_NAMES as ZOO_NAMES

    assert MODEL_NAMES == ZOO_NAMES


def test_demo_with_bn_after_the_activation_folds_it_through(tmp_path):
    """``--bn-position after``: the MLP's BNs after ReLU are folded end to end (through the
    activation), and the summary says which folds ran."""
    res = invoke("demo", "--quick", "--bn-position", "after", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "demo_report.json").read_text())
    summary = report["summary"]
    assert (summary["model"], summary["bn_position"]) == ("mlp", "after")
    assert summary["bn_nodes_before"] == 3 and summary["bn_nodes_after"] == 0
    assert summary["folds_by_direction"] == {"through the activation": 3}
    assert report["passed"] is True and summary["max_abs_error"] < 1e-4
    assert "mlp, BN after the activation" in res.output
    assert "folded: 3 through the activation" in res.output


def test_demo_reports_bns_that_stay(tmp_path):
    """digits_cnn with BN after ReLU: a padded 3x3 Conv follows two of them, so they stay; the
    summary names them with their reason and the demo exits 1 saying so."""
    res = invoke("demo", "--quick", "--bn-position", "after", "--model", "digits_cnn",
                 "--out", tmp_path)  # fmt: skip
    assert res.exit_code == 1
    assert "/2/BatchNormalization stays: next Conv pads" in res.stdout
    assert "bnfold: error: demo: 2 BatchNormalization node(s) stay" in res.stderr

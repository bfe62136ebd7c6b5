"""What the commands print (issue 9 items 2-4, 8 and issue 12's report on fold), on real files
through typer's CliRunner (output captured as when piped): tables within the width, nothing forced;
``--quiet`` silent; every written file confirmed; ``--json PATH|-`` on every command; what was
done said beside the BN table; the function a fold happened in named, never a staging path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import MODELS, ZOO
from cli_helpers import invoke as cli
from onnx_helpers import make_model

from bnfold.report import FoldReport, Skipped, short_reason


@pytest.fixture(scope="module")
def folded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("folded") / "cnn.folded.onnx"
    assert cli("fold", MODELS / "cnn.onnx", "-o", out, "-q").returncode == 0
    return out


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]


@pytest.mark.parametrize(
    "args",
    [
        ["fold", MODELS / "forward.onnx", "-o", "{tmp}/f.onnx"],
        ["inspect", MODELS / "refused.onnx"],
        ["check", MODELS / "cnn.onnx", "{folded}", "--calibrate"],
        ["bench", MODELS / "cnn.onnx", "{folded}", "--rounds", "2", "--iters", "1"],
    ],
    ids=["fold", "inspect", "check", "bench"],
)
def test_tables_fit_80_columns_and_widen_when_allowed(args, tmp_path, folded):
    args = [str(a).format(tmp=tmp_path, folded=folded) for a in args]
    narrow = cli(*args, columns=80)
    assert narrow.returncode == 0, narrow.stderr
    rows = _table_lines(narrow.stdout)
    assert rows and all(len(line) <= 80 for line in rows), narrow.stdout
    assert all(line[-1] in "┓┃┩│┘" for line in rows), narrow.stdout  # right edge not cropped
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80, narrow.stdout
    wide = cli(*args, columns=250)
    assert wide.returncode == 0, wide.stderr
    assert "left out to fit" not in wide.stdout
    if args[0] == "check":  # every figure at 250 columns, the lowest-priority ones dropped at 80
        header = [line for line in _table_lines(wide.stdout) if "output" in line][0]
        assert "cosine" in header and "cosine" not in _table_lines(narrow.stdout)[1]
        assert "left out to fit 80 columns: dtype" in narrow.stdout
    if args[0] == "bench":
        assert "create ms ref/cand" in wide.stdout


def test_numbers_never_break_over_lines(folded):
    res = cli("check", MODELS / "cnn.onnx", folded, columns=80)
    (row,) = [line for line in _table_lines(res.stdout) if "bn_fc_out" in line]
    assert "8.34e-07" in row and "pass" in row


def test_quiet_prints_nothing_and_one_error_line(tmp_path, folded):
    ok = cli("fold", MODELS / "cnn.onnx", "-o", tmp_path / "a.onnx", "--quiet")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    failed = cli("fold", MODELS / "cnn.onnx", "-o", tmp_path / "b.onnx", "--atol", "0",
                 "--rtol", "0", "--quiet")  # fmt: skip
    assert failed.returncode == 1 and failed.stdout == ""
    assert len(failed.stderr.splitlines()) == 1 and "differs beyond tolerance" in failed.stderr
    assert not (tmp_path / "b.onnx").exists()
    differs = cli("check", MODELS / "cnn.onnx", folded, "--atol", "0", "--rtol", "0", "-q")
    assert differs.returncode == 1 and differs.stdout == ""
    assert differs.stderr.splitlines() == [
        f"bnfold: error: {folded}: not equivalent to {MODELS / 'cnn.onnx'} (bn_fc_out beyond "
        "tolerance)"
    ]
    for args in (
        ["check", MODELS / "cnn.onnx", folded, "--json", tmp_path / "c.json"],
        ["bench", MODELS / "cnn.onnx", folded, "--rounds", "2", "--iters", "1", "--no-memory"],
        ["inspect", MODELS / "cnn.onnx"],
    ):
        res = cli(*args, "-q")
        assert (res.returncode, res.stdout, res.stderr) == (0, "", ""), args


def test_every_written_file_is_confirmed(tmp_path, folded):
    fold = cli(
        "fold", MODELS / "cnn.onnx", "-o", tmp_path / "m.onnx", "--json", tmp_path / "r.json"
    )
    assert f"wrote {tmp_path / 'm.onnx'}" in fold.stderr
    assert f"wrote {tmp_path / 'r.json'}" in fold.stderr
    check = cli("check", MODELS / "cnn.onnx", folded, "--json", tmp_path / "c.json")
    assert check.stderr.strip() == f"wrote {tmp_path / 'c.json'}"
    bench = cli("bench", MODELS / "cnn.onnx", folded, "--rounds", "2", "--iters", "1",
                "--no-memory", "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png")  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    assert f"wrote {tmp_path / 'b.json'}" in bench.stderr
    assert f"wrote {tmp_path / 'b.png'}" in bench.stderr
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args",
    [
        ["fold", MODELS / "cnn.onnx", "-o", "{tmp}/f.onnx"],
        ["inspect", MODELS / "cnn.onnx"],
        ["check", MODELS / "cnn.onnx", "{folded}"],
        ["bench", MODELS / "cnn.onnx", "{folded}", "--rounds", "2", "--iters", "1", "--no-memory"],
        ["quantize", ZOO / "mlp.onnx", "-o", "{tmp}/q.onnx", "--calibration-samples", "40",
         "--eval-samples", "40"],
    ],
    ids=["fold", "inspect", "check", "bench", "quantize"],
)  # fmt: skip
def test_json_dash_is_stdout_and_nothing_else(args, tmp_path, folded):
    args = [str(a).format(tmp=tmp_path, folded=folded) for a in args]
    res = cli(*args, "--json", "-")
    assert res.returncode == 0, res.stderr
    assert isinstance(json.loads(res.stdout), dict)  # the whole of stdout is the JSON


def test_unknown_output_tol_name_is_an_error(folded, tmp_path):
    res = cli("check", MODELS / "cnn.onnx", folded, "--output-tol", "nosuch=1e-7,0")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == (
        "bnfold: error: --output-tol nosuch=...: the reference has no output of that name "
        "(outputs: bn_fc_out)"
    )
    res = cli("fold", MODELS / "cnn.onnx", "-o", tmp_path / "o.onnx", "--output-tol", "y=0,0")
    assert res.returncode == 2 and "--output-tol y=..." in res.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_fold_says_what_changed_besides_the_bns(tmp_path):
    res = cli("fold", MODELS / "paddle_style.onnx", "-o", tmp_path / "p.onnx")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "ops    Add 1 -> 0, BatchNormalization 1 -> 0" in out
    assert "nodes  3 -> 1" in out
    assert "KiB on disk (weights" in out and "time " in out
    assert "verify: passed" in out
    assert "also folded 1 Add" in out
    data = json.loads(cli("fold", MODELS / "paddle_style.onnx", "-o", tmp_path / "q.onnx",
                          "--json", "-").stdout)  # fmt: skip
    assert data["ops_before"]["Conv"] == data["ops_after"]["Conv"] == 1
    assert data["file_bytes_after"] == (tmp_path / "q.onnx").stat().st_size
    assert set(data["timings"]) == {"load", "fold", "save", "verify"}


def test_inspect_lists_inputs_and_outputs():
    res = cli("inspect", MODELS / "cnn.onnx")
    assert "inputs   input float32 [batch, 3, 16, 16]" in res.stdout
    assert "outputs  bn_fc_out float32 [batch, 10]" in res.stdout
    ir3 = cli("inspect", MODELS / "ir3_initializer_inputs.onnx")
    assert "initializer inputs, IR < 4" in ir3.stdout


def test_nothing_folded_is_said_and_fail_if_unfolded_gates(tmp_path):
    res = cli("fold", MODELS / "refused.onnx", "-o", tmp_path / "r.onnx")
    assert res.returncode == 0
    assert "nothing folded: all 3 BatchNormalization node(s) stay" in res.stdout
    gate = cli("fold", MODELS / "refused.onnx", "-o", tmp_path / "g.onnx", "--fail-if-unfolded")
    assert gate.returncode == 1
    errors = [line for line in gate.stderr.splitlines() if line.startswith("bnfold: error:")]
    assert errors == [
        f"bnfold: error: {MODELS / 'refused.onnx'}: 3 BatchNormalization node(s) left "
        "(--fail-if-unfolded): training mode 1, layer output shared 1, no linear layer beside "
        "it 1; the folded model was written"
    ]
    inspect = cli("inspect", MODELS / "forward.onnx", "--fail-if-unfolded", "-q")
    assert inspect.returncode == 1 and inspect.stdout == ""
    assert len(inspect.stderr.splitlines()) == 1
    assert cli("inspect", MODELS / "cnn.onnx", "--fail-if-unfolded").returncode == 0


def test_model_without_batchnorm_says_nothing_to_fold(tmp_path):
    w = np.ones((2, 3, 1, 1), np.float32)
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,4,4] x) => (float[1,2,4,4] y) { y = Conv (x, W) }""",
        {"W": w},
    )
    onnx.save(model, tmp_path / "plain.onnx")
    res = cli("fold", tmp_path / "plain.onnx")
    assert res.returncode == 0
    assert "nothing to fold: the model has no BatchNormalization node" in res.stdout
    assert f"wrote {tmp_path / 'plain.folded.onnx'}" in res.stderr


def test_forward_option_and_its_figures(tmp_path):
    exact = cli("inspect", MODELS / "forward.onnx", "--forward", "exact", columns=200)
    row = next(line for line in exact.stdout.splitlines() if "bn_input" in line)
    assert "forward" in row and "bn+conv" in row
    assert "scale spread 1.26; int8 zeros 0.0% -> 0.0%" in exact.stdout
    off = json.loads(
        cli("inspect", MODELS / "forward.onnx", "--forward", "off", "--json", "-").stdout
    )
    assert off["forward"] == "off" and off["bn_folded"] == 0
    safe = cli("fold", MODELS / "forward.onnx", "-o", tmp_path / "s.onnx", "--forward", "int8-safe")
    assert safe.returncode == 0, safe.stderr
    bad = cli("fold", MODELS / "forward.onnx", "--forward", "sideways")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "bnfold: error: --forward must be one of off, exact, int8-safe, not 'sideways'"
    )


def test_function_named_and_no_staging_path(tmp_path):
    res = cli("fold", MODELS / "local_function.onnx", "-o", tmp_path / "l.onnx", columns=120)
    assert "(in function ConvBn)" in res.stdout
    failed = cli("fold", MODELS / "cnn.onnx", "-o", tmp_path / "c.onnx", "--atol", "0",
                 "--rtol", "0", columns=120)  # fmt: skip
    assert failed.returncode == 1
    assert ".bnfold-" not in failed.stdout + failed.stderr
    assert f"bnfold check: {tmp_path / 'c.onnx'} vs" in failed.stdout


def test_summary_is_short_with_the_reasons_counted():
    report = FoldReport(bn_before=4, nodes_before=15, nodes_after=12)
    reason = (
        "backward: its input comes from Relu, not a linear layer (Conv, ConvTranspose, Gemm, "
        "MatMul); through the activation: 3 channel(s) have a negative scale (gamma < 0): s * "
        "Relu(z) = Relu(s * z) only for s >= 0; forward: the Conv 'conv4' pads its input"
    )
    report.skipped = [Skipped(f"bn{i}", reason, "main") for i in range(3)]
    report.skipped.append(Skipped("bnx", "training_mode=1: the node normalises", "main"))
    assert report.summary() == (
        "folded 0 of 4 BatchNormalization nodes; 4 skipped (next Conv pads 3, training "
        "mode 1); nodes 15 -> 12"
    )
    assert short_reason("its output 'y' is a graph output") == "no linear layer beside it"
    both = (
        "backward: its input 'x' is a graph input, not a linear layer; forward: the Conv 'c' pads"
    )
    assert short_reason(both + " its input (pads [1])") == "next Conv pads"
    assert short_reason("something 'odd' happened here: detail") == "something happened here"


def test_rows_stack_when_even_the_kept_columns_do_not_fit():
    """Long node names (the zoo ResNet's) do not fit 80 columns beside the result: the rows are
    stacked, a name on a line of its own, never cut."""
    res = cli("inspect", ZOO / "resnet.onnx", columns=80)
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert "BN /3/branch/branch.1/BatchNormalization" in lines
    assert any(line.split() == ["into", "/", "reason", "/3/branch/branch.0/Conv"] for line in lines)
    assert max(len(line) for line in lines) <= 80
    wide = cli("inspect", ZOO / "resnet.onnx", columns=200)
    assert any("/3/branch/branch.1/BatchNormalization" in r for r in _table_lines(wide.stdout))


@pytest.mark.parametrize("width", [80, 100])
def test_a_wrapping_column_at_its_least_width_does_not_crop_the_table(width):
    """Bug: a wrapping column whose longest word is its whole width (a BN name) made rich's
    shrinking come out one column wider than the console, which cropped the right border.
    Fixed in FitTable: it sets the column widths itself."""
    from rich.console import Console
    from rich.text import Text

    from bnfold.tables import Column, FitTable

    table = FitTable(
        [Column("BN", wrap=True), Column("result"), Column("fold", drop=1),
         Column("into / reason", wrap=True)]
    )  # fmt: skip
    reason = "backward: the BN has 5 channels, but a single one reaches the MatMul"
    table.add_row(Text("BatchNormalization(bn_output)"), Text("skipped"), Text(""), Text(reason))
    console = Console(width=width, file=open(os.devnull, "w"))  # noqa: SIM115
    with console.capture() as captured:
        console.print(table)
    lines = [line for line in captured.get().splitlines() if line[:1] in "┏┃┡│└"]
    assert lines and all(len(line) <= width and line[-1] in "┓┃┩│┘" for line in lines)
    cells = [line.split("│")[-2] for line in lines if line.startswith("│")]
    assert " ".join(" ".join(cells).split()) == reason  # every word of it, none cut

"""Several models at once (issue 9 item 5): ``bnfold fold A B DIR/ -j N --output-dir OUT``.

Real files, real worker processes, the CLI run as a child process. Each model is folded and
verified in a process of its own; a failing model is named while the others are written.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import MODELS, ZOO, cli

SAMPLES = sorted(p.name for p in MODELS.glob("*.onnx"))
ZOO_MODELS = sorted(p.name for p in ZOO.glob("*.onnx"))


def test_folder_and_files_into_an_output_dir(tmp_path):
    out = tmp_path / "out"
    res = cli("fold", MODELS / "cnn.onnx", MODELS / "decoder.onnx", ZOO, "-j", "2",
              "--output-dir", out, "--json", tmp_path / "all.json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.onnx"))
    expected = ["cnn.folded.onnx", "decoder.folded.onnx"]  # and the folder's files below OUT
    expected += [f"{n.removesuffix('.onnx')}.folded.onnx" for n in ZOO_MODELS]
    assert written == sorted(expected)
    data = json.loads((tmp_path / "all.json").read_text())
    assert data["failed"] == [] and len(data["models"]) == 2 + len(ZOO_MODELS)
    pids = {m["pid"] for m in data["models"]}
    assert len(pids) == len(data["models"])  # every model in a worker process of its own
    assert all(m["report"]["verify"]["passed"] for m in data["models"])
    lines = [line for line in res.stdout.splitlines() if line.startswith(("ok ", "FAIL"))]
    assert len(lines) == len(data["models"])  # one result line per model
    assert f"bnfold fold: {len(data['models'])} models" in res.stdout  # then the summary table
    assert f"wrote {tmp_path / 'all.json'}" in res.stderr


def test_a_failing_model_is_named_and_the_others_still_written(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(MODELS / "cnn.onnx", src)
    shutil.copy(MODELS / "mlp.onnx", src / "sub")
    (src / "broken.onnx").write_bytes(b"not a model")
    shutil.copy(MODELS / "cnn.onnx", src / "cnn.folded.onnx")  # an earlier output: not an input
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    res = cli("fold", src, "--output-dir", out, "-j", "2")
    assert res.returncode == 2, res.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.onnx")) == [
        "cnn.folded.onnx",
        "sub/mlp.folded.onnx",
    ]
    errors = [line for line in res.stderr.splitlines() if line.startswith("bnfold: error:")]
    assert errors[0].startswith(f"bnfold: error: {src / 'broken.onnx'}: not a readable ONNX")
    assert errors[-1] == f"bnfold: error: 1 of 3 models failed: {src / 'broken.onnx'} (exit 2)"
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before
    assert not list(out.rglob(".bnfold-*"))


def test_verification_failures_exit_1_naming_each_model(tmp_path):
    res = cli("fold", MODELS / "cnn.onnx", MODELS / "mlp.onnx", MODELS / "refused.onnx",
              "--output-dir", tmp_path, "--atol", "0", "--rtol", "0", "--json", "-")  # fmt: skip
    assert res.returncode == 1
    data = json.loads(res.stdout)
    assert data["failed"] == [str(MODELS / "cnn.onnx"), str(MODELS / "mlp.onnx")]
    assert [p.name for p in tmp_path.iterdir()] == ["refused.folded.onnx"]  # nothing to verify


def test_inspect_several_models(tmp_path):
    res = cli("inspect", *(MODELS / n for n in SAMPLES), "-j", "2", "--json", "-")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [Path(m["model"]).name for m in data["models"]] == SAMPLES
    by_name = {Path(m["model"]).name: m["report"] for m in data["models"]}
    assert by_name["refused.onnx"]["bn_folded"] == 0 and by_name["cnn.onnx"]["bn_folded"] == 4
    assert list(tmp_path.iterdir()) == []  # inspect writes nothing


@pytest.mark.parametrize(
    "args, text",
    [
        (["{a}", "{b}", "-o", "{tmp}/x.onnx"], "-o names one output; with several models use"),
        (["{a}", "{zoo}/mlp.onnx", "--output-dir", "{tmp}"], "would both be written to"),
        (["{a}", "{tmp}/missing.onnx"], "missing.onnx: no such file or folder"),
        (["{a}", "{b}", "--in-place", "--output-dir", "{tmp}"], "drop --output-dir"),
    ],
    ids=["-o", "same output", "missing", "in-place"],
)
def test_usage_errors_are_one_line_and_write_nothing(args, text, tmp_path):
    args = [
        a.format(a=MODELS / "mlp.onnx", b=MODELS / "cnn.onnx", zoo=ZOO, tmp=tmp_path) for a in args
    ]
    res = cli("fold", *args)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and text in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_stops_the_workers_and_removes_what_they_staged(tmp_path):
    from test_safety_writes import _make

    src = tmp_path / "in"
    big = _make(src)
    for i in range(2):  # three ~75 MB external-data models
        copy = src / f"copy{i}"
        copy.mkdir()
        shutil.copy(big, copy / big.name)
        shutil.copy(big.with_name(big.name + ".data"), copy)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnfold", "fold", str(src), "--output-dir", str(out), "-j", "2",
         "--no-verify", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(out.rglob(".bnfold-*/*.data")):
        assert proc.poll() is None, f"finished before it was caught: {proc.communicate()}"
        assert time.monotonic() < deadline, "never started writing"
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err
    time.sleep(0.5)  # a worker still running would go on writing
    assert not list(out.rglob(".bnfold-*")) and not list(out.rglob(".*.tmp*"))
    for model in out.rglob("*.folded.onnx"):  # whatever was committed is whole
        assert model.with_name(model.name + ".data").exists()

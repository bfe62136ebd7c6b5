"""Every command on bad input: exit 2, one line naming the file and the problem, nothing written,
every input byte for byte as it was (issue 8's matrix, run through the real CLI on real files).

The model faults (``safety_models.FAULTS``) run through inspect, fold, check and bench; the
output faults (aliasing, unusable paths) through every command that writes. Each case snapshots
its whole folder (names, link targets, sizes, sha256, mtimes) before and after.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import safety_models as sm
from typer.testing import CliRunner

from bnfold.cli import app

runner = CliRunner()
FAST_BENCH = ["--rounds", "1", "--iters", "1", "--warmup", "0", "--no-memory"]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Everything in ``folder``: symlink targets, folders, and each file's size, hash, mtime."""
    state: dict[str, tuple] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                state[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                state[rel] = ("dir",)
            else:
                st = p.stat()
                state[rel] = ("file", st.st_size, st.st_mtime_ns, _digest(p))
    return state


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(args: list) -> tuple[int, list[str], str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.exit_code, lines, result.stdout


def assert_refused(tmp_path: Path, args: list, *texts: str, code: int = 2) -> str:
    """Run ``args``; it must exit ``code`` with one stderr line holding ``texts``, writing nothing."""
    before = snapshot(tmp_path)
    rc, lines, _ = invoke(args)
    assert rc == code, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("bnfold: error: "), lines
    for text in texts:
        assert text in lines[0], (text, lines[0])
    assert snapshot(tmp_path) == before, "files were written or changed"
    return lines[0]


# --------------------------------------------------------------------------- model faults

MODEL_COMMANDS = ("inspect", "fold", "check", "bench")

# what check/bench (onnxruntime loads the file) do where it differs from "exit 2"
ORT_OUTCOMES = {
    ("check", "data_hard_link"): 0,  # onnxruntime reads hard-linked data; onnx-ir does not
    ("bench", "data_hard_link"): 0,
    ("check", "bn_nan"): 1,  # a NaN variance runs; its outputs differ from the good model's
    ("bench", "bn_nan"): 0,
    ("inspect", "huge_input"): 0,  # inspect allocates no inputs
}
ALL_FAULTS = {**sm.FAULTS, "huge_input": (sm.huge_input, "--max-input-mib")}


def _model_args(command: str, model: Path, good: Path, out: Path) -> list:
    return {
        "inspect": ["inspect", model],
        "fold": ["fold", model, "-o", out],
        "check": ["check", model, good],
        "bench": ["bench", model, good, *FAST_BENCH],
    }[command]


@pytest.mark.parametrize("fault", list(ALL_FAULTS))
@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_model_fault(tmp_path, command, fault):
    build, text = ALL_FAULTS[fault]
    model, good = build(tmp_path / "bad"), sm.good(tmp_path / "good")
    args = _model_args(command, model, good, tmp_path / "out" / "o.onnx")
    expected = ORT_OUTCOMES.get((command, fault), 2)
    if expected != 2:
        before = snapshot(tmp_path)
        rc, lines, _ = invoke(args)
        assert rc == expected, lines
        assert snapshot(tmp_path) == before
        return
    # inspect and fold check the file themselves and say what is wrong; check and bench
    # pass onnxruntime's one-line reason on (the budget check is bnfold's in all of them)
    own = command in ("inspect", "fold") or fault in ("missing", "directory", "huge_input")
    assert_refused(tmp_path, args, *((text,) if own else (str(model),)))


# --------------------------------------------------------------------------- output faults


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits: /sys)."""
    if os.geteuid() == 0:
        return Path("/sys/kernel")
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


Case = Callable[[Path, dict[str, Path]], list]
# name -> (arguments from (tmp_path, files), texts the error line holds)
OUTPUT_CASES: dict[str, tuple[Case, tuple[str, ...]]] = {
    "fold -o the input": (lambda t, f: ["fold", f["m"], "-o", f["m"]], ("--in-place",)),
    "fold -o the input's data file": (
        lambda t, f: ["fold", f["ext"], "-o", f["ext_data"]],
        ("external data of input model",),
    ),
    "fold -o whose data file is the input": (
        lambda t, f: ["fold", f["dotdata"], "-o", t / "x.onnx"],
        ("the external-data file of -o", "the input model"),
    ),
    "fold --report the input": (
        lambda t, f: ["fold", f["m"], "--report", f["m"]],
        ("--report", "input model"),
    ),
    "fold --report the input's data file": (
        lambda t, f: ["fold", f["ext"], "--report", f["ext_data"]],
        ("--report", "external data"),
    ),
    "fold --report equal to -o": (
        lambda t, f: ["fold", f["m"], "-o", t / "o.onnx", "--report", t / "o.onnx"],
        ("-o and --report name the same file",),
    ),
    "fold --report equal to -o's data file": (
        lambda t, f: ["fold", f["m"], "-o", t / "o.onnx", "--report", t / "o.onnx.data"],
        ("the external-data file of -o and --report",),
    ),
    "fold -o a hard link to the input": (
        lambda t, f: ["fold", f["m"], "-o", f["hardlink"]],
        ("input model",),
    ),
    "fold -o a symlink to the input": (
        lambda t, f: ["fold", f["m"], "-o", f["symlink"]],
        ("input model",),
    ),
    "fold -o through a symlinked folder": (
        lambda t, f: ["fold", f["m"], "-o", t / "linked" / "m.onnx"],
        ("input model",),
    ),
    "fold --in-place with another -o": (
        lambda t, f: ["fold", f["m"], "--in-place", "-o", t / "other.onnx"],
        ("--in-place",),
    ),
    "fold -o a folder": (lambda t, f: ["fold", f["m"], "-o", t / "sub"], ("names a folder",)),
    "fold --report a folder": (
        lambda t, f: ["fold", f["m"], "--report", t / "sub"],
        ("--report names a folder",),
    ),
    "fold --report through a file": (
        lambda t, f: ["fold", f["m"], "--report", t / "notes.txt" / "r.json"],
        ("is a file, not a folder",),
    ),
    "fold -o through a file": (
        lambda t, f: ["fold", f["m"], "-o", t / "notes.txt" / "o.onnx"],
        ("is a file, not a folder",),
    ),
    "fold --report in an unwritable folder": (
        lambda t, f: ["fold", f["m"], "--report", _unwritable(t) / "r.json"],
        ("cannot write in",),
    ),
    "fold -o in an unwritable folder": (
        lambda t, f: ["fold", f["m"], "-o", _unwritable(t) / "o.onnx"],
        ("cannot write in",),
    ),
    "check --json the reference": (
        lambda t, f: ["check", f["m"], f["m2"], "--json", f["m"]],
        ("--json", "input model"),
    ),
    "check --json the candidate": (
        lambda t, f: ["check", f["m"], f["m2"], "--json", f["m2"]],
        ("--json", "input model"),
    ),
    "check --json the candidate's data file": (
        lambda t, f: ["check", f["m"], f["ext"], "--json", f["ext_data"]],
        ("--json", "external data"),
    ),
    "check --json an --inputs file": (
        lambda t, f: ["check", f["m"], f["m2"], "--inputs", f["npz"], "--json", f["npz"]],
        ("--json", "an input file"),
    ),
    "check --json a folder": (
        lambda t, f: ["check", f["m"], f["m2"], "--json", t / "sub"],
        ("names a folder",),
    ),
    "check --json through a file": (
        lambda t, f: ["check", f["m"], f["m2"], "--json", t / "notes.txt" / "r.json"],
        ("is a file, not a folder",),
    ),
    "check --json in an unwritable folder": (
        lambda t, f: ["check", f["m"], f["m2"], "--json", _unwritable(t) / "r.json"],
        ("cannot write in",),
    ),
    "bench --json the reference": (
        lambda t, f: ["bench", f["m"], f["m2"], *FAST_BENCH, "--json", f["m"]],
        ("--json", "input model"),
    ),
    "bench --plot the candidate": (
        lambda t, f: ["bench", f["m"], f["m2png"], *FAST_BENCH, "--plot", f["m2png"]],
        ("--plot", "input model"),
    ),
    "bench --plot x.xyz": (
        lambda t, f: ["bench", f["m"], f["m2"], *FAST_BENCH, "--plot", t / "x.xyz"],
        ("'.xyz' is not an image format", ".png"),
    ),
    "bench --plot without extension": (
        lambda t, f: ["bench", f["m"], f["m2"], *FAST_BENCH, "--plot", t / "plot"],
        ("no extension",),
    ),
    "bench --json equal to --plot": (
        lambda t, f: [
            "bench",
            f["m"],
            f["m2"],
            *FAST_BENCH,
            "--json",
            t / "a.png",
            "--plot",
            t / "a.png",
        ],
        ("--json and --plot name the same file",),
    ),
    "bench --plot a folder": (
        lambda t, f: ["bench", f["m"], f["m2"], *FAST_BENCH, "--plot", t / "sub.png"],
        ("names a folder",),
    ),
    "bench --json in an unwritable folder": (
        lambda t, f: ["bench", f["m"], f["m2"], *FAST_BENCH, "--json", _unwritable(t) / "b.json"],
        ("cannot write in",),
    ),
}


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    m = sm.good(tmp_path)
    m2 = sm.save(sm.conv_bn(), tmp_path / "m2.onnx")
    ext = sm.save(sm.conv_bn(), tmp_path / "e" / "ext.onnx", external=True)
    dotdata = sm.save(sm.conv_bn(), tmp_path / "x.onnx.data")  # a model named like a data file
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    os.link(m, tmp_path / "hard.onnx")
    os.symlink(m.name, tmp_path / "link.onnx")
    os.symlink(".", tmp_path / "linked")
    m2png = tmp_path / "m2.png"  # a model file whose name looks like a plot
    m2png.write_bytes(m2.read_bytes())
    import numpy as np

    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.zeros((1, 3, 8, 8), np.float32))
    return {
        "m": m, "m2": m2, "ext": ext, "ext_data": ext.with_name("ext.onnx.data"),
        "dotdata": dotdata, "hardlink": tmp_path / "hard.onnx", "symlink": tmp_path / "link.onnx",
        "m2png": m2png, "npz": npz,
    }  # fmt: skip


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_output_fault(tmp_path, files, case):
    make, texts = OUTPUT_CASES[case]
    assert_refused(tmp_path, make(tmp_path, files), *texts)


def test_in_place_writes_over_the_model(tmp_path, files):
    m = files["m"]
    before = m.read_bytes()
    rc, lines, out = invoke(["fold", m, "--in-place"])
    assert rc == 0, lines
    assert m.read_bytes() != before and "verify: passed" in out
    import onnx

    assert [n.op_type for n in onnx.load(m).graph.node] == ["Conv", "Relu"]
    assert not list(tmp_path.glob(".bnfold-*")) and not m.with_name("m.folded.onnx").exists()


def test_in_place_with_external_data_replaces_its_data_file(tmp_path):
    m = sm.save(sm.conv_bn(), tmp_path / "big.onnx", external=True)
    rc, lines, _ = invoke(["fold", m, "--in-place", "-o", m])
    assert rc == 0, lines
    import onnx

    folded = onnx.load(m)  # loads its (new) data file
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]


# --------------------------------------------------------------------------- training side

torch_cases = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None, reason="needs the train extra"
)

TRAIN_CASES: dict[str, tuple[Case, tuple[str, ...]]] = {
    "export -o the checkpoint": (
        lambda t, f: ["export", f["ckpt"], "-o", f["ckpt"]],
        ("-o", "an input file"),
    ),
    "export --json the checkpoint": (
        lambda t, f: ["export", f["ckpt"], "-o", t / "e.onnx", "--json", f["ckpt"]],
        ("--json", "an input file"),
    ),
    "export --json equal to -o": (
        lambda t, f: ["export", f["ckpt"], "-o", t / "e.onnx", "--json", t / "e.onnx"],
        ("-o and --json name the same file",),
    ),
    "export -o a folder": (
        lambda t, f: ["export", f["ckpt"], "-o", t / "sub"],
        ("names a folder",),
    ),
    "export -o through a file": (
        lambda t, f: ["export", f["ckpt"], "-o", t / "notes.txt" / "e.onnx"],
        ("is a file, not a folder",),
    ),
    "export a corrupt checkpoint": (
        lambda t, f: ["export", f["ckpt"], "-o", t / "e.onnx"],
        ("not a readable checkpoint",),
    ),
    "export a missing checkpoint": (
        lambda t, f: ["export", t / "nope.pt", "-o", t / "e.onnx"],
        ("no such checkpoint",),
    ),
    "train --out a file": (lambda t, f: ["train", "--out", t / "notes.txt"], ("names a file",)),
    "train --out through a file": (
        lambda t, f: ["train", "--out", t / "notes.txt" / "run"],
        ("is a file, not a folder",),
    ),
    "train --out unwritable": (
        lambda t, f: ["train", "--out", _unwritable(t) / "run"],
        ("cannot write in",),
    ),
    "train --compare --out a file": (
        lambda t, f: ["train", "--compare", "--out", t / "notes.txt"],
        ("names a file",),
    ),
    "demo --out a file": (lambda t, f: ["demo", "--out", t / "notes.txt"], ("names a file",)),
    "demo --out unwritable": (
        lambda t, f: ["demo", "--quick", "--out", _unwritable(t) / "demo"],
        ("cannot write in",),
    ),
}


@torch_cases
@pytest.mark.train
@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_training_output_fault(tmp_path, case):
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not a torch checkpoint")
    make, texts = TRAIN_CASES[case]
    assert_refused(tmp_path, make(tmp_path, {"ckpt": ckpt}), *texts)


@torch_cases
@pytest.mark.train
def test_export_opset_the_exporter_cannot_write(tmp_path):
    """torch's RuntimeError "Unsupported onnx_opset_version: 99" was a traceback (exit 1)."""
    rc, lines, _ = invoke(["train", "--model", "mlp", "--epochs", "1", "--out", tmp_path / "run"])
    assert rc == 0, lines
    before = snapshot(tmp_path)
    rc, lines, _ = invoke(
        ["export", tmp_path / "run" / "mlp.pt", "-o", tmp_path / "e.onnx", "--opset", "99"]
    )
    assert rc == 2 and len(lines) == 1 and "supports (up to 20)" in lines[0], lines
    assert snapshot(tmp_path) == before

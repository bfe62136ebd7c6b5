"""Writes survive faults: real signals to a real ``bnfold fold`` child mid-write, a file-size
limit, a full disk. Every staged file must go, the exit code must say what happened, and a
previous output must stay as it was.

The child folds a 75 MB external-data model. The test polls its output folder until the staging
folder holds the data file being written, freezes the child there (SIGSTOP), checks it really
is mid-write, then sends the signal and lets it continue: the moment is exact, not a sleep.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.slow

LAYERS, C = 8, 512  # 8 x 512x512x3x3 float32 = 75 MB of weights


def _make(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nodes, inits, x = [], [], "x"
    weight = ((np.arange(C * C * 9, dtype=np.float32) % 7 - 3) * np.float32(0.01)).reshape(
        C, C, 3, 3
    )
    for i in range(LAYERS):
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        for p, v in (("g", 1.1), ("b", 0.1), ("m", 0.05), ("v", 0.9)):
            inits.append(numpy_helper.from_array(np.full(C, v, np.float32), f"{p}{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1] * 4))
        nodes.append(
            helper.make_node(
                "BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"y{i}"]
            )
        )
        x = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 2, 2])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "big.onnx"
    onnx.save(
        model, path, save_as_external_data=True, location="big.onnx.data", size_threshold=1024
    )
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("signals") / "in")


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _staged(out_dir: Path, name: str) -> Path | None:
    for folder in out_dir.glob(".bnfold-*"):
        if (folder / name).exists():
            return folder
    return None


def _fold(model: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bnfold", "fold", str(model), "-o", str(out), "-q", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _interrupt_when_staged(
    proc: subprocess.Popen, out: Path, staged_name: str, sig: int
) -> tuple[int, str]:
    deadline = time.monotonic() + 60
    while _staged(out.parent, staged_name) is None:
        assert proc.poll() is None, f"finished before it was caught: {proc.communicate()}"
        assert time.monotonic() < deadline, "never started writing"
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)
    try:
        assert _staged(out.parent, staged_name) is not None, "not mid-write when frozen"
        proc.send_signal(sig)
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_signal_mid_write_removes_staged_files(big, tmp_path, sig):
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    before = _state(big.parent)
    proc = _fold(big, out, "--no-verify")
    rc, err = _interrupt_when_staged(proc, out, "folded.onnx.data", sig)
    assert rc == 128 + sig, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        f"bnfold: error: interrupted by {signal.Signals(sig).name}; removed 1 staged file(s)"
    ]
    assert list(out.parent.iterdir()) == [], "staged or partial files left behind"
    assert _state(big.parent) == before


def test_sigterm_during_verification_keeps_the_previous_output(big, tmp_path):
    out = tmp_path / "folded.onnx"
    first = _fold(big, out, "--no-verify")
    assert first.wait(timeout=120) == 0, first.communicate()
    previous = _state(tmp_path)
    assert set(previous) == {"folded.onnx", "folded.onnx.data"}
    # the staged model file is written after its data: from then on, fsync and verification run
    proc = _fold(big, out, "--samples", "20")
    rc, err = _interrupt_when_staged(proc, out, "folded.onnx", signal.SIGTERM)
    assert rc == 143, err
    assert _state(tmp_path) == previous, "the previous output was touched"


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _unmeasured() -> dict[str, str]:
    """The environment without coverage's subprocess switch: under a file-size limit the
    child could not write its coverage data, and would leave a truncated data file."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
    }


def test_file_size_limit_leaves_no_partial_file(big, tmp_path):
    out = tmp_path / "folded.onnx"
    out.write_bytes(b"previous output")
    proc = _fold(big, out, "--no-verify", preexec_fn=_limit_file_size(8 << 20), env=_unmeasured())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "folded.onnx: cannot write (File too large)" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folded.onnx"]
    assert out.read_bytes() == b"previous output"


def test_file_size_limit_on_an_inline_model(tmp_path):
    import safety_models as sm

    model = sm.save(sm.conv_bn(), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    proc = _fold(model, out, "--no-verify", preexec_fn=_limit_file_size(256), env=_unmeasured())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "o.onnx: cannot write (File too large)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 16 MiB tmpfs (needs permission to mount; skipped where there is none)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_leaves_no_partial_file(big, small_tmpfs):
    out = small_tmpfs / "folded.onnx"
    out.write_bytes(b"previous output")
    proc = _fold(big, out, "--no-verify")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "cannot write (No space left on device)" in err, err
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["folded.onnx"]
    assert out.read_bytes() == b"previous output"


def test_failed_verification_leaves_no_folder_it_created(tmp_path):
    """Exit 1: the model is not written, and the folders made for it are removed again (the
    report, which holds the comparison, is written)."""
    import safety_models as sm

    model = sm.good(tmp_path)
    out = tmp_path / "new" / "sub" / "o.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "bnfold", "fold", str(model), "-o", str(out), "--atol", "0",
         "--rtol", "0", "--report", str(tmp_path / "r.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "nothing written" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.json"]

"""``bnfold.paths`` (outputs checked before any work) and ``bnfold.proto_scan`` (external-data
locations found without parsing the model whole)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import safety_models as sm
from onnx import TensorProto, helper, numpy_helper

from bnfold.errors import BadInputError
from bnfold.paths import Output, check_output, guard, model_files, same_file
from bnfold.proto_scan import external_locations

MODELS = Path(__file__).resolve().parent.parent / "models"


def _onnx_locations(path: Path) -> list[str]:
    """What onnx itself lists (the reference for the scanner)."""
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(path, load_external_data=False)
    seen: dict[str, None] = {}
    for tensor in _get_all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    seen.setdefault(entry.value, None)
    return list(seen)


def _nested_external_model(tmp_path: Path) -> Path:
    """External tensors in an initializer, an If branch, a Constant node and a function body,
    each in its own file."""
    rng = np.random.default_rng(0)

    def t(name):
        return numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), name)

    then = helper.make_graph(
        [helper.make_node("Add", ["x", "bw"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [64])], [t("bw")],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["e"], value=t("cv"))], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [64])],
    )  # fmt: skip
    function = helper.make_function(
        "local", "F", ["fx"], ["fy"],
        [helper.make_node("Constant", [], ["fk"], value=t("fv")), helper.make_node("Mul", ["fx", "fk"], ["fy"])],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=helper.make_tensor("b", TensorProto.BOOL, [], [True])),
            helper.make_node("If", ["c"], ["i"], then_branch=then, else_branch=other),
            helper.make_node("Add", ["i", "w"], ["a"]),
            helper.make_node("F", ["a"], ["y"], domain="local"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
        [t("w")],
    )  # fmt: skip
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    from onnx.external_data_helper import _get_all_tensors, set_external_data

    for tensor in _get_all_tensors(model):
        if tensor.data_type == TensorProto.FLOAT and tensor.dims == [64]:
            set_external_data(tensor, location=f"{tensor.name}.bin")
    path = tmp_path / "nested.onnx"
    onnx.save(model, path)  # writes each tensor to its own location
    return path


def test_scanner_finds_what_onnx_finds(tmp_path):
    nested = _nested_external_model(tmp_path)
    assert sorted(external_locations(nested)) == sorted(_onnx_locations(nested))
    assert sorted(external_locations(nested)) == ["bw.bin", "cv.bin", "fv.bin", "w.bin"]
    ext = sm.external(tmp_path / "e")
    assert external_locations(ext) == ["m.onnx.data"] == _onnx_locations(ext)
    for sample in sorted(MODELS.glob("*.onnx")):
        assert external_locations(sample) == [] == _onnx_locations(sample), sample


def test_scanner_survives_malformed_files(tmp_path, rng):
    """Truncations and random bytes end the walk; they never raise or hang."""
    data = sm.external(tmp_path).read_bytes()
    path = tmp_path / "bad.onnx"
    for cut in range(0, len(data), 7):
        path.write_bytes(data[:cut])
        assert external_locations(path) in ([], ["m.onnx.data"])
    for _ in range(200):
        path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes())
        assert isinstance(external_locations(path), list)
    deep = b""
    for _ in range(500):  # subgraphs nested 500 deep: graph -> node -> attribute -> graph
        deep = _field(1, _field(5, _field(6, deep)))
    path.write_bytes(_field(7, deep))
    assert external_locations(path) == []
    assert external_locations(tmp_path / "missing.onnx") == []


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_model_files_lists_the_data_beside_the_model(tmp_path):
    ext = sm.external(tmp_path)
    assert model_files(ext) == [ext, tmp_path / "m.onnx.data"]


def test_same_file_sees_hard_links_symlinks_and_linked_folders(tmp_path):
    a = tmp_path / "a.onnx"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "hard")
    os.symlink("a.onnx", tmp_path / "soft")
    os.symlink(".", tmp_path / "here")
    assert same_file(a, tmp_path / "hard") and same_file(tmp_path / "soft", a)
    assert same_file(tmp_path / "here" / "a.onnx", a)
    assert same_file(tmp_path / "x" / ".." / "a.onnx", a)
    assert not same_file(a, tmp_path / "b.onnx")


def test_guard_allows_in_place_only_for_the_model_output(tmp_path):
    ext = sm.external(tmp_path)
    guard([Output("-o", ext, "model")], models=[ext], in_place=ext)  # model and its data file
    with pytest.raises(BadInputError, match="--report would overwrite the input model"):
        guard([Output("-o", ext, "model"), Output("--report", ext)], models=[ext], in_place=ext)


def test_guard_refuses_aliasing_of_an_input_in_another_folder(tmp_path):
    """A hard link elsewhere to the input's data file is the same file."""
    ext = sm.external(tmp_path / "in")
    (tmp_path / "out").mkdir()
    os.link(tmp_path / "in" / "m.onnx.data", tmp_path / "out" / "r.json")
    with pytest.raises(BadInputError, match="external data of input model"):
        guard([Output("--report", tmp_path / "out" / "r.json")], models=[ext])


def test_output_checks_write_nothing(tmp_path):
    check_output(Output("--report", tmp_path / "new" / "deeper" / "r.json"))
    check_output(Output("--plot", tmp_path / "p.svg", "plot"))
    check_output(Output("--out", tmp_path / "run", "folder"))
    assert list(tmp_path.iterdir()) == []


def test_plot_formats_come_from_matplotlib(tmp_path):
    for ok in ("p.png", "p.PDF", "p.svg", "p.jpg"):
        check_output(Output("--plot", tmp_path / ok, "plot"))
    with pytest.raises(BadInputError, match=r"'\.xyz' is not an image format"):
        check_output(Output("--plot", tmp_path / "p.xyz", "plot"))


# ---------------------------------------------------------------- found by the final review


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *map(str, args)], capture_output=True, text=True
    )


def _cnn_inputs(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, input=rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("-o", "{out}", "--inputs", "{npz}", "--json", "{npz}"),  # the report over an --inputs file
        ("-o", "{npz}", "--inputs", "{npz}"),  # the folded model over an --inputs file
    ],
)
def test_fold_never_writes_over_its_verification_inputs(tmp_path, args):
    """Bug: fold's guard did not know the --inputs files: both commands exited 0 and replaced
    the .npz (check and bench knew them)."""
    npz = _cnn_inputs(tmp_path / "x.npz")
    before = npz.read_bytes()
    filled = [a.format(out=tmp_path / "f.onnx", npz=npz) for a in args]
    res = _cli("fold", MODELS / "cnn.onnx", *filled)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "would overwrite an input file" in res.stderr
    assert npz.read_bytes() == before and not (tmp_path / "f.onnx").exists()


def test_quantize_never_writes_over_its_calibration_data_or_the_models_data(tmp_path):
    """Bug: quantize guarded --json against the model only, and -o with a plain path equality
    of its own: --json over the calibration file, and -o over the model's external-data file,
    both exited 0 and replaced the input. Now one paths.guard covers every output."""
    zoo = MODELS / "zoo" / "mlp.onnx"
    calib = tmp_path / "cal.npz"
    x = np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32)
    np.savez(calib, input=x)
    before = calib.read_bytes()
    res = _cli("quantize", zoo, "-o", tmp_path / "q.onnx", "--calibration", calib,
               "--json", calib)  # fmt: skip
    assert res.returncode == 2 and "would overwrite an input file" in res.stderr, res.stderr
    assert calib.read_bytes() == before
    external = tmp_path / "ext.onnx"
    onnx.save(onnx.load(zoo), external, save_as_external_data=True, location="ext.weights",
              size_threshold=0)  # fmt: skip
    data = (tmp_path / "ext.weights").read_bytes()
    res = _cli("quantize", external, "-o", tmp_path / "ext.weights")
    assert res.returncode == 2 and "would overwrite" in res.stderr, res.stderr
    assert (tmp_path / "ext.weights").read_bytes() == data

"""Bad model files for the safety tests: each builder writes one fault into a folder.

Every builder starts from the same valid Conv -> BatchNormalization -> Relu model (4 channels,
input 1x3x8x8) and breaks one thing, the way a corrupt download, a hostile file or a buggy
exporter would. ``FAULTS`` maps a fault name to (builder, what the error must mention).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

C = 4


def conv_bn(
    lengths: tuple[int, int, int, int] = (C, C, C, C),
    *,
    x_dims: list[int | str] | None = None,
    scale_shape: tuple[int, ...] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """A valid Conv -> BN -> Relu model (BN parameter lengths and the scale's shape adjustable)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (C, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.5, C).astype(np.float32), "Bc"),
    ]
    for i, name in enumerate(("gamma", "beta", "mean", "var")):
        shape = scale_shape if (i == 0 and scale_shape is not None) else (lengths[i],)
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, shape).astype(np.float32), name))
    nodes = [
        helper.make_node("Conv", ["x", "W", "Bc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"], name="bn"),
        helper.make_node("Relu", ["b"], ["y"], name="relu"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims or [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path, external: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save(
            model, path, save_as_external_data=True, location=path.name + ".data",
            size_threshold=0, all_tensors_to_one_file=True,
        )  # fmt: skip
    else:
        onnx.save(model, path)
    return path


def good(folder: Path) -> Path:
    return save(conv_bn(), folder / "m.onnx")


def external(folder: Path) -> Path:
    return save(conv_bn(), folder / "m.onnx", external=True)


def _relocate(path: Path, location: str) -> Path:
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(model, path)
    return path


def _edit(folder: Path, change: Callable[[onnx.ModelProto], None]) -> Path:
    model = conv_bn()
    change(model)
    path = folder / "m.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())  # no checks: the fault must reach bnfold
    return path


# --- not a model ------------------------------------------------------------------------------


def missing(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "m.onnx"


def directory(folder: Path) -> Path:
    (folder / "m.onnx").mkdir(parents=True)
    return folder / "m.onnx"


def empty(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.onnx").write_bytes(b"")
    return folder / "m.onnx"


def garbage(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.onnx").write_bytes(b"\xff\xfe this is not a protobuf \x00\x01" * 10)
    return folder / "m.onnx"


def truncated(folder: Path) -> Path:
    path = good(folder)
    path.write_bytes(path.read_bytes()[:-40])
    return path


def bad_opset(folder: Path) -> Path:
    return _edit(folder, lambda m: m.opset_import[0].__setattr__("version", 999))


# --- external data ------------------------------------------------------------------------------


def data_missing(folder: Path) -> Path:
    path = external(folder)
    (folder / "m.onnx.data").unlink()
    return path


def data_short(folder: Path) -> Path:
    path = external(folder)
    with open(folder / "m.onnx.data", "r+b") as f:
        f.truncate(100)
    return path


def data_absolute(folder: Path) -> Path:
    path = external(folder)
    return _relocate(path, str((folder / "m.onnx.data").resolve()))


def data_dotdot(folder: Path) -> Path:
    path = external(folder / "inner")
    shutil.move(folder / "inner" / "m.onnx.data", folder / "outside.data")
    return _relocate(path, "../outside.data")


def data_symlink_outside(folder: Path) -> Path:
    path = external(folder / "inner")
    shutil.move(folder / "inner" / "m.onnx.data", folder / "outside.data")
    os.symlink("../outside.data", folder / "inner" / "link.data")
    return _relocate(path, "link.data")


def data_hard_link(folder: Path) -> Path:
    path = external(folder / "inner")
    os.link(folder / "inner" / "m.onnx.data", folder / "copy.data")
    return path


# --- declared sizes ---------------------------------------------------------------------------


def _add_unused(model: onnx.ModelProto, tensor: onnx.TensorProto) -> None:
    model.graph.initializer.append(tensor)
    model.graph.node.append(helper.make_node("Identity", [tensor.name], ["h"], name="keep"))
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, None))


def huge_raw(folder: Path) -> Path:
    return _edit(
        folder,
        lambda m: _add_unused(
            m, TensorProto(name="H", data_type=TensorProto.FLOAT, dims=[10**12], raw_data=b"\0" * 4)
        ),
    )


def huge_typed(folder: Path) -> Path:
    return _edit(
        folder,
        lambda m: _add_unused(
            m, TensorProto(name="H", data_type=TensorProto.FLOAT, dims=[10**12], float_data=[1.0])
        ),
    )


def short_raw(folder: Path) -> Path:
    return _edit(folder, lambda m: m.graph.initializer[0].dims.__setitem__(0, 8))


def huge_input(folder: Path) -> Path:
    def change(m: onnx.ModelProto) -> None:
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_value = dims[3].dim_value = 100000

    return _edit(folder, change)


# --- topology ---------------------------------------------------------------------------------


def cycle(folder: Path) -> Path:
    def change(m: onnx.ModelProto) -> None:
        m.graph.node[0].input[0] = "y"  # conv reads relu's output

    return _edit(folder, change)


def undefined_input(folder: Path) -> Path:
    return _edit(folder, lambda m: m.graph.node[2].input.__setitem__(0, "nowhere"))


def duplicate_output(folder: Path) -> Path:
    return _edit(folder, lambda m: m.graph.node[2].output.__setitem__(0, "c"))


def output_not_produced(folder: Path) -> Path:
    return _edit(folder, lambda m: m.graph.output[0].__setattr__("name", "ghost"))


# --- BatchNormalization parameters ------------------------------------------------------------


def bn_scale_one(folder: Path) -> Path:
    return save(conv_bn((1, C, C, C)), folder / "m.onnx")


def bn_lengths_disagree(folder: Path) -> Path:
    return save(conv_bn((C, C, 3, C)), folder / "m.onnx")


def bn_channels(folder: Path) -> Path:
    return save(conv_bn((5, 5, 5, 5)), folder / "m.onnx")


def bn_rank2(folder: Path) -> Path:
    return save(conv_bn(scale_shape=(1, C)), folder / "m.onnx")


def bn_nan(folder: Path) -> Path:
    def change(m: onnx.ModelProto) -> None:
        var = numpy_helper.to_array(m.graph.initializer[5]).copy()
        var[1] = np.nan
        m.graph.initializer[5].CopyFrom(numpy_helper.from_array(var, "var"))

    return _edit(folder, change)


# fault -> (builder, text the one-line error must contain)
FAULTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (missing, "no such file"),
    "directory": (directory, "directory"),
    "empty": (empty, "empty file"),
    "garbage": (garbage, "m.onnx"),
    "truncated": (truncated, "m.onnx"),
    "bad_opset": (bad_opset, "opset 999"),
    "data_missing": (data_missing, "m.onnx.data"),
    "data_short": (data_short, "m.onnx.data"),
    "data_absolute": (data_absolute, "absolute"),
    "data_dotdot": (data_dotdot, ".."),
    "data_symlink_outside": (data_symlink_outside, "link.data"),
    "data_hard_link": (data_hard_link, "hard link"),
    "huge_raw": (huge_raw, "tensor 'H'"),
    "huge_typed": (huge_typed, "tensor 'H'"),
    "short_raw": (short_raw, "tensor 'W'"),
    "cycle": (cycle, "cycle"),
    "undefined_input": (undefined_input, "nowhere"),
    "duplicate_output": (duplicate_output, "'c'"),
    "output_not_produced": (output_not_produced, "ghost"),
    "bn_scale_one": (bn_scale_one, "scale"),
    "bn_lengths_disagree": (bn_lengths_disagree, "mean 3"),
    "bn_channels": (bn_channels, "4 channels"),
    "bn_rank2": (bn_rank2, "(1, 4)"),
    "bn_nan": (bn_nan, "NaN"),
}

"""Folding a model with external data: lazy weights, streamed saves, untouched inputs.

A ~50 MB Conv/Gemm + BN chain saved with external data stands in for a multi-GB model (CI has
two cores): the fold must compute folded weights only when writing them, write them beside the
output (never into the input's data file), leave the input byte for byte as it was, and keep
external references valid wherever the output goes.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold.arithmetic import WeightLayout, release_pages, scale_weight, scaled_weight_problem
from bnfold.model_io import write_inline

pytestmark = pytest.mark.slow

CHANNELS = 512  # 512x512x3x3 float32 = 9.4 MB per Conv weight
CONVS = 5
GEMM = 1024  # (K, M) = 1024x1024 float32 = 4 MB, transB=0: the output channel is axis 1


def _bn(nodes, inits, rng, x: str, c: int, tag: str) -> str:
    for p, arr in (
        ("g", rng.uniform(0.5, 1.5, c)),
        ("b", rng.normal(0, 0.1, c)),
        ("m", rng.normal(0, 0.1, c)),
        ("v", rng.uniform(0.5, 1.5, c)),
    ):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), f"{tag}_{p}"))
    out = f"{tag}_bn"
    nodes.append(
        helper.make_node(
            "BatchNormalization",
            [x, f"{tag}_g", f"{tag}_b", f"{tag}_m", f"{tag}_v"],
            [out],
            name=out,
        )
    )
    return out


def _make_model(folder: Path) -> Path:
    rng = np.random.default_rng(7)
    nodes, inits = [], []
    x = "input"
    for i in range(CONVS):
        w = rng.standard_normal((CHANNELS, CHANNELS, 3, 3), dtype=np.float32) * np.float32(0.02)
        inits.append(numpy_helper.from_array(w, f"conv{i}_w"))
        nodes.append(
            helper.make_node(
                "Conv", [x, f"conv{i}_w"], [f"conv{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]
            )
        )
        x = _bn(nodes, inits, rng, f"conv{i}", CHANNELS, f"c{i}")
        nodes.append(helper.make_node("Relu", [x], [f"relu{i}"]))
        x = f"relu{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(
        numpy_helper.from_array(
            rng.standard_normal((CHANNELS, GEMM), dtype=np.float32) * np.float32(0.05), "fc0_w"
        )
    )
    nodes.append(helper.make_node("Gemm", ["flat", "fc0_w"], ["fc0"], name="fc0"))
    x = _bn(nodes, inits, rng, "fc0", GEMM, "f0")
    inits.append(
        numpy_helper.from_array(
            rng.standard_normal((GEMM, GEMM), dtype=np.float32) * np.float32(0.03), "fc1_w"
        )
    )
    nodes.append(helper.make_node("Gemm", [x, "fc1_w"], ["fc1"], name="fc1"))
    x = _bn(nodes, inits, rng, "fc1", GEMM, "f1")
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, CHANNELS, 4, 4])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, GEMM])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "large.onnx"
    onnx.save_model(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True,
        location="large.onnx.data", size_threshold=1024,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def large_model(tmp_path_factory) -> Path:
    return _make_model(tmp_path_factory.mktemp("large") / "in")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _snapshot(path: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (_digest(p), p.stat().st_mtime_ns)
        for p in sorted(path.parent.iterdir())
        if p.is_file()
    }


def _run(path: Path) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, CHANNELS, 4, 4)).astype(np.float32)
    return sess.run(None, {"input": x})[0]


def _external_locations(path: Path) -> set[str]:
    model = onnx.load(path, load_external_data=False)
    return {
        e.value
        for t in model.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }


def test_fold_writes_external_data_beside_output_and_leaves_input(large_model, tmp_path):
    before = _snapshot(large_model)
    result = bnfold.fold(large_model)
    assert result.report.bn_after == 0 and len(result.report.folded) == CONVS + 2
    folded = [
        v.const_value
        for v in result.model.graph.initializers.values()
        if v.name and "folded_weight" in v.name
    ]
    assert len(folded) == CONVS + 2
    assert all(isinstance(t, ir.LazyTensor) for t in folded), "folded weights must be lazy"

    out = tmp_path / "out" / "folded.onnx"
    files = result.save(out)
    assert sorted(f.name for f in files) == ["folded.onnx", "folded.onnx.data"]
    assert _external_locations(out) == {"folded.onnx.data"}
    assert (out.parent / "folded.onnx.data").stat().st_size > 40 << 20
    assert _snapshot(large_model) == before, "the input files were modified"
    assert not any(p.name.startswith(".bnfold-") for p in out.parent.iterdir())
    np.testing.assert_allclose(_run(out), _run(large_model), rtol=1e-4, atol=1e-5)


def test_save_into_the_input_folder_never_touches_its_data_file(large_model):
    before = _snapshot(large_model)
    out = large_model.parent / "large.folded.onnx"
    try:
        bnfold.fold(large_model).save(out)
        assert _external_locations(out) == {"large.folded.onnx.data"}
        after = _snapshot(large_model)
        assert {k: after[k] for k in before} == before
        np.testing.assert_allclose(_run(out), _run(large_model), rtol=1e-4, atol=1e-5)
    finally:
        for p in (out, Path(str(out) + ".data")):
            p.unlink(missing_ok=True)


def test_save_into_another_folder_keeps_references_valid(large_model, tmp_path):
    out = tmp_path / "elsewhere" / "deeper" / "model.onnx"
    bnfold.fold(large_model).save(out)
    # move the whole output folder: the references are relative to the model file
    moved = tmp_path / "moved"
    out.parent.rename(moved)
    model = moved / "model.onnx"
    assert _external_locations(model) == {"model.onnx.data"}
    onnx.checker.check_model(str(model))  # by path: checks external data files exist
    np.testing.assert_allclose(_run(model), _run(large_model), rtol=1e-4, atol=1e-5)
    # unfolded tensors (copied from the input's data file) and folded ones both read back
    loaded = ir.load(model)
    assert all(
        isinstance(v.const_value, ir.ExternalTensor)
        for v in loaded.graph.initializers.values()
        if v.const_value.nbytes > 1024
    )


def test_inline_save_streams_tensors_and_matches_to_proto(large_model, tmp_path):
    result = bnfold.fold(large_model)
    out = tmp_path / "inline.onnx"
    result.save(out, external_data=False)
    # every tensor is in the one file: the unfolded ones were copied out of the input's data
    assert not Path(str(out) + ".data").exists() and _external_locations(out) == set()
    np.testing.assert_allclose(_run(out), _run(large_model), rtol=1e-4, atol=1e-5)
    # on an in-memory model the streamed file is exactly what to_proto serializes
    small = ir.from_proto(onnx.load(out))
    again = tmp_path / "again.onnx"
    write_inline(small, again)
    assert onnx.load(again).SerializeToString(deterministic=True) == ir.to_proto(
        small
    ).SerializeToString(deterministic=True)


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    raise OSError("no RssFile")


@pytest.mark.skipif(
    not (os.path.exists("/proc/self/status") and hasattr(mmap, "MADV_DONTNEED")),
    reason="needs Linux /proc and madvise",
)
def test_reading_mapped_weights_releases_their_pages(tmp_path):
    path = tmp_path / "w.bin"
    w = np.random.default_rng(1).standard_normal((256, 64, 32, 32), dtype=np.float32)  # 64 MB
    w.tofile(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        mapped = np.frombuffer(mm, dtype=np.float32).reshape(w.shape)  # as onnx-ir maps it
        scale = np.linspace(0.5, 1.5, w.shape[0])
        start = _rss_file_kib()
        assert scaled_weight_problem(mapped, scale, WeightLayout.AXIS0) is None
        got = scale_weight(mapped, scale, WeightLayout.AXIS0)
        grew_mib = (_rss_file_kib() - start) / 1024
        assert grew_mib < 16, f"{grew_mib:.0f} MiB of the 64 MiB mapping stayed resident"
        np.testing.assert_array_equal(got, scale_weight(w, scale, WeightLayout.AXIS0))
        # anonymous memory is never released (MADV_DONTNEED would zero it)
        copy = w.copy()
        release_pages(copy)
        np.testing.assert_array_equal(copy, w)
        del mapped
    finally:
        mm.close()


def test_writable_and_empty_memory_is_never_released():
    """MADV_DONTNEED on anonymous or writable memory zeroes it: only read-only file maps are
    released; views of writable maps, empty arrays and non-contiguous scans keep their data."""
    from bnfold.pages import max_abs

    w = np.random.default_rng(2).standard_normal(4096).astype(np.float32)
    anon = mmap.mmap(-1, w.nbytes)  # anonymous, writable
    try:
        view = np.frombuffer(anon, dtype=np.float32)
        view[:] = w
        release_pages(view)
        np.testing.assert_array_equal(view, w)
        release_pages(view[:0])
        del view
    finally:
        anon.close()
    strided = w.reshape(64, 64)[:, ::2]
    assert max_abs(strided) == float(np.max(np.abs(strided)))


@pytest.mark.parametrize(
    ("layout", "groups", "shape"),
    [(WeightLayout.AXIS0, 1, (6, 4, 3, 3)), (WeightLayout.GROUPED_AXIS1, 2, (4, 3, 3, 3))],
    ids=["streamed", "grouped-whole"],
)
def test_folded_weight_writes_and_computes_the_scaled_weight(tmp_path, layout, groups, shape):
    """A FoldedWeight's bytes, written block by block (or whole where the layout's chunks are
    not consecutive: a grouped ConvTranspose), and its numpy(), are scale_weight's."""
    from bnfold.folded_weight import FoldedWeight

    rng = np.random.default_rng(4)
    w = rng.standard_normal(shape).astype(np.float32)
    channels = shape[0] if layout is WeightLayout.AXIS0 else shape[1] * groups
    s = rng.uniform(0.5, 2.0, channels)
    expected = scale_weight(w, s, layout, groups)
    tensor = FoldedWeight(w, s, layout, groups, name="w")
    with open(tmp_path / "w.bin", "wb") as f:
        tensor.tofile(f)
    assert (tmp_path / "w.bin").read_bytes() == expected.tobytes()
    np.testing.assert_array_equal(tensor.numpy(), expected)

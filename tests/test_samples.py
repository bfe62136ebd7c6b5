"""The sample models in models/: what the README's table says bnfold does to each, verified,
and the generator reproduces every file byte for byte."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import bnfold
from bnfold.verify import CheckOptions, check_models

MODELS = Path(__file__).resolve().parent.parent / "models"

# sample: (BN folded, BN in the model, directions of the folds)
EXPECTED = {
    "cnn": (4, 4, {"backward"}),
    "decoder": (2, 2, {"backward"}),
    "mlp": (3, 3, {"backward"}),
    "paddle_style": (1, 1, {"backward"}),
    "legacy_constants": (1, 1, {"backward"}),
    "ir3_initializer_inputs": (1, 1, {"backward"}),
    "fp16": (2, 2, {"backward"}),
    "subgraph_if": (2, 2, {"backward"}),
    "local_function": (1, 1, {"backward"}),
    "refused": (0, 3, set()),
    "forward": (3, 4, {"forward", "through the activation"}),
}


def test_every_sample_is_listed():
    assert sorted(p.stem for p in MODELS.glob("*.onnx")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_folds_as_documented(tmp_path, name):
    folded_bn, total, directions = EXPECTED[name]
    path = MODELS / f"{name}.onnx"
    result = bnfold.fold(path)
    assert (result.report.bn_folded, result.report.bn_before) == (folded_bn, total)
    assert {f.direction for f in result.report.folded if f.op == "BatchNormalization"} == directions
    assert len(result.report.skipped) == total - folded_bn
    out = tmp_path / "folded.onnx"
    result.save(out)
    assert check_models(path, out, CheckOptions(batch=2, samples=4)).passed


def test_samples_regenerate_byte_for_byte(tmp_path):
    spec = importlib.util.spec_from_file_location("make_samples", MODELS / "make_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.write_all(tmp_path):
        assert path.read_bytes() == (MODELS / path.name).read_bytes(), path.name

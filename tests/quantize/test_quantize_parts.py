"""The pieces behind ``bnfold quantize``: types, data, dead channels, float ops, proof, bench."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_helpers import bn_stats, make_model

from bnfold.bench import BenchOptions, bench_many
from bnfold.errors import BadInputError, UsageError
from bnfold.quantize import (
    Batch,
    Dataset,
    ProofThresholds,
    bn_channels,
    digits_dataset,
    float_ops_in_graph,
    load_dataset,
    prove_int8,
    quantize_file,
    recommended_types,
)
from bnfold.quantize.types import cpu_flags
from bnfold.verify.inputs import InputInfo

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def test_recommended_types_follow_onnxruntimes_rule(tmp_path):
    no_vnni = recommended_types("x86_64", {"avx2", "avx512f"})
    assert (no_vnni.activation, no_vnni.weight, no_vnni.reduce_range) == ("uint8", "int8", True)
    vnni = recommended_types("x86_64", {"avx2", "avx512_vnni"})
    assert (vnni.activation, vnni.weight, vnni.reduce_range) == ("uint8", "int8", False)
    assert "avx512_vnni" in vnni.reason and "quantize_static" in vnni.reason
    assert recommended_types("AMD64", None).reduce_range  # flags unknown: the safe side
    arm = recommended_types("aarch64", None)
    assert (arm.activation, arm.weight, arm.reduce_range) == ("int8", "int8", False)
    other = recommended_types("riscv64", None)
    assert (other.activation, other.weight) == ("int8", "int8")
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx_vnni\n")
    assert cpu_flags(info) == {"fpu", "sse", "avx_vnni"}
    assert cpu_flags(tmp_path / "missing") is None


def _dead_model(rng) -> onnx.ModelProto:
    """Gemm -> Relu -> BN -> Gemm where units 2 and 5 can never fire on inputs >= 0."""
    w = rng.uniform(0.1, 1.0, (8, 64)).astype(np.float32)
    b = np.zeros(8, np.float32)
    w[[2, 5]] *= -1.0
    b[[2, 5]] = -1.0
    return make_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[N,1,8,8] input) => (float[N,10] output) {
          f = Flatten (input)
          h = Gemm <transB: int = 1> (f, W, B)
          r = Relu (h)
          n = BatchNormalization (r, gamma, beta, mean, var)
          output = Gemm <transB: int = 1> (n, W2, B2)
        }""",
        {"W": w, "B": b, **bn_stats(rng, 8),
         "W2": rng.normal(0, 0.3, (10, 8)).astype(np.float32), "B2": np.zeros(10, np.float32)},
    )  # fmt: skip


def test_bn_channels_finds_units_that_never_fire(rng, tmp_path):
    path = tmp_path / "dead.onnx"
    onnx.save(_dead_model(rng), path)
    (ch,) = bn_channels(path, digits_dataset("train", limit=100).feeds()).values()
    assert np.flatnonzero(ch.dead()).tolist() == [2, 5]
    assert ch.range.min[[2, 5]].tolist() == [0.0, 0.0] and ch.range.samples == 100
    d = ch.to_dict()
    assert d["dead"] == [2, 5] and len(d["dead_scale"]) == 2
    # the quantize flow reports them (and quantizes the model; BN after Relu stays)
    result = quantize_file(path, tmp_path / "q.onnx", _options(min_agreement=0.0))
    assert result.dead_channels == {"n": [2, 5]}  # an unnamed node goes by its output


def _options(**thresholds):
    from bnfold.quantize import QuantizeOptions

    return QuantizeOptions(thresholds=ProofThresholds(**thresholds))


def test_float_ops_between_and_tail():
    graph = onnx.parser.parse_graph(
        """g (uint8[4] a) => (float[4] y, float[4] z) {
          d = DequantizeLinear (a, s, zp)
          b = BatchNormalization (d, g, bb, m, v)
          m2 = Mul (b, c)
          q = QuantizeLinear (m2, s, zp)
          d2 = DequantizeLinear (q, s, zp)
          y = Softmax (d2)
          sh = Shape (d2)
          z = Identity (d2)
        }"""
    )
    ops = float_ops_in_graph(graph)
    assert [(o.op_type, o.where) for o in ops.between] == [
        ("BatchNormalization", "between"),
        ("Mul", "between"),
    ]
    assert sorted(o.op_type for o in ops.ops if o.where == "tail") == ["Identity", "Softmax"]
    assert ops.summary().startswith("2 between DequantizeLinear and QuantizeLinear")
    assert "2 after the last DequantizeLinear" in ops.summary()
    assert ops.op_counts["DequantizeLinear"] == 2


def test_dataset_batches_limits_and_labels(tmp_path):
    infos = [InputInfo("input", "tensor(float)", ("batch", 1, 8, 8))]
    x = np.zeros((150, 1, 8, 8), np.float32)
    np.savez(tmp_path / "a.npz", input=x, labels=np.arange(150) % 10)
    data = load_dataset([tmp_path / "a.npz"], infos, limit=130, batch=64)
    assert [b.samples for b in data.batches] == [64, 64, 2] and data.has_labels
    assert data.merged().feeds["input"].shape == (130, 1, 8, 8)
    fixed = [InputInfo("input", "tensor(float)", (150, 1, 8, 8))]
    assert [b.samples for b in load_dataset([tmp_path], fixed).batches] == [150]  # not cut
    np.savez(tmp_path / "b.npz", input=x[:5], labels=np.zeros(5))  # float labels
    with pytest.raises(BadInputError, match="b.npz.*'labels' must be integer"):
        load_dataset([tmp_path / "b.npz"], infos)
    with pytest.raises(UsageError, match="sample limit"):
        load_dataset([tmp_path / "a.npz"], infos, limit=0)
    train, test = digits_dataset("train"), digits_dataset("test")
    assert (train.samples, test.samples) == (1347, 450) and test.has_labels


def test_proof_without_a_classifier_output(tmp_path):
    model = ZOO / "autoencoder.onnx"  # reconstructs the image: (N, 1, 8, 8), no classes
    result = quantize_file(model, tmp_path / "q.onnx", _options())
    assert result.passed and result.proof is not None
    (o,) = result.proof.outputs
    assert o.agreement is None and o.classifier is False and o.mean_abs > 0
    assert any("no classifier output" in n for n in result.proof.notes)
    strict = prove_int8(model, tmp_path / "q.onnx", digits_dataset("test"),
                        ProofThresholds(max_mean_error=o.mean_abs / 2))  # fmt: skip
    assert not strict.passed and "--max-mean-error" in strict.failures[0]
    with pytest.raises(UsageError, match="--min-agreement"):
        ProofThresholds(min_agreement=1.5).validate()


def test_bench_many_pairs_any_two_models():
    from _verify_models import gemm_bn_pair

    ref, cand = gemm_bn_pair(batch=4)
    options = BenchOptions(levels=("disable",), rounds=3, iters=2, warmup=1, creation_repeats=1,
                           memory=False, resamples=100)  # fmt: skip
    result = bench_many({"a": ref, "b": cand, "c": ref}, options)
    (lv,) = result.levels
    assert set(lv.sides) == {"a", "b", "c"}
    assert all(len(t.round_medians_ms) == 3 for t in lv.sides.values())
    sp = result.speedup("disable", "a", "c")
    assert sp.rounds == 3 and sp.ci_low <= sp.ratio <= sp.ci_high
    d = result.to_dict([("a", "b")])
    assert d["levels"][0]["speedups"][0]["reference"] == "a"
    with pytest.raises(UsageError, match="at least two"):
        bench_many({"a": ref}, options)


def test_single_batch_dataset():
    b = Batch("x", {"input": np.zeros((3, 2), np.float32)})
    d = Dataset("mem", [b])
    assert d.samples == 3 and not d.has_labels and d.to_dict()["batches"] == 1

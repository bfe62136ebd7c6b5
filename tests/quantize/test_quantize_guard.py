"""The int8 guard on a trained model: a forward fold fed by dead ReLU channels is refused, the
harmless ones are kept (the judgement the int8-safe forward folds make)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bnfold.quantize import bn_channels, digits_dataset, forward_fold_effect, int8_forward_refusal

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train


def test_guard_refuses_the_fold_fed_by_dead_channels_and_keeps_the_others(tmp_path):
    from bnfold.train import TrainConfig, export_model, train

    result = train(TrainConfig(model="mlp", bn_position="after", epochs=5, seed=0))
    path = tmp_path / "mlp_after.onnx"
    export_model(result.model, path, dynamic_batch=True)
    graph = onnx.load(path).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    channels = bn_channels(path, digits_dataset("train", limit=200).feeds())
    verdicts = {}
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        (gemm,) = [n for n in graph.node if bn.output[0] in n.input]
        ch = channels[bn.name]
        dead = ch.dead()
        assert ch.scale is not None
        effect = forward_fold_effect(inits[gemm.input[1]], ch.scale, 0, 1, live=~dead)
        verdicts[bn.name] = (int(dead.sum()), effect, int8_forward_refusal(effect))
        if dead.any():  # a ReLU unit that never fires: var -> ~0, s -> gamma/sqrt(eps) ~ 316
            assert 250 < np.median(np.abs(ch.scale[dead])) < 320
            assert np.median(np.abs(ch.scale[~dead])) < 10
    dead, effect, reason = verdicts["/3/BatchNormalization"]  # after the first hidden layer
    assert dead > 0 and reason is not None
    assert f"{dead} of 100 input channels dead" in reason and effect.error_ratio > 5
    for name in ("/6/BatchNormalization", "/9/BatchNormalization"):
        dead, effect, reason = verdicts[name]
        assert dead == 0 and reason is None and effect.error_ratio < 1.5

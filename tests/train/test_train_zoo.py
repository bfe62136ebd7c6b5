"""The zoo: every model trains a few steps on the digits, exports with BN kept, folds, checks equal."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import bnfold  # noqa: E402
from bnfold.errors import BadInputError, UsageError  # noqa: E402
from bnfold.model_io import save_model  # noqa: E402
from bnfold.train import (  # noqa: E402
    MODEL_NAMES,
    ExportError,
    TrainConfig,
    count_batchnorms,
    export_model,
    load_checkpoint,
    save_checkpoint,
    split_digits,
    train,
)
from bnfold.train.demo import DemoOptions  # noqa: E402
from bnfold.train.zoo import build_model  # noqa: E402
from bnfold.verify import CheckOptions, check_models  # noqa: E402

pytestmark = pytest.mark.train


def few_steps(model: str, **kwargs) -> TrainConfig:
    return TrainConfig(model=model, epochs=1, max_steps_per_epoch=4, batch_size=16, **kwargs)


def bn_nodes(path) -> int:
    return sum(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node)


def assert_running_stats_moved(model: torch.nn.Module) -> None:
    for m in model.modules():
        if getattr(m, "running_var", None) is not None:
            assert m.num_batches_tracked.item() == 4
            assert not torch.allclose(m.running_var, torch.ones_like(m.running_var))


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("bn_impl", ["reference", "torch"])
def test_zoo_model_trains_exports_folds_to_zero_bn_and_checks_equal(tmp_path, name, bn_impl):
    result = train(few_steps(name, bn_impl=bn_impl))
    assert count_batchnorms(result.model) >= 3
    assert_running_stats_moved(result.model)
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    exported = export_model(result.model, before, dynamic_batch=True)
    assert exported.bn_nodes == count_batchnorms(result.model)
    assert exported.max_abs_error < 1e-4
    folded = bnfold.fold(before)
    save_model(folded.model, after)
    assert bn_nodes(after) == 0
    assert folded.report.bn_before == exported.bn_nodes
    check = check_models(before, after, CheckOptions(batch=4))
    assert check.passed, check.to_dict()


# BN left after folding a zoo model whose BN follows its activation, by the reason: feeding a
# padded 3x3 Conv ("pads") or a ConvTranspose ("spreads"), where neither its shift nor the whole
# BN folds exactly.
BN_AFTER_ACT_LEFT = {
    "mlp": {},
    "digits_cnn": {"pads": 2},
    "resnet": {"pads": 3},
    "mobilenet": {"pads": 3},
    "autoencoder": {"pads": 1, "spreads": 2},
}
_WHY = {"pads": "pads its input", "spreads": "spreads a constant input unevenly"}


@pytest.mark.parametrize(
    ("name", "activation"), [*((n, "relu") for n in MODEL_NAMES), ("mlp", "sigmoid")]
)
def test_bn_after_activation_folds_forward(tmp_path, name, activation):
    result = train(few_steps(name, bn_position="after", activation=activation))
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    exported = export_model(result.model, before, dynamic_batch=True)
    assert exported.bn_nodes == count_batchnorms(result.model)
    folded = bnfold.fold(before)
    save_model(folded.model, after)
    left = sum(BN_AFTER_ACT_LEFT[name].values())
    assert bn_nodes(after) == folded.report.bn_after == left
    assert folded.report.bn_folded == exported.bn_nodes - left
    wanted = {"relu": {"through the activation"}, "sigmoid": {"forward"}}[activation]
    if name == "autoencoder":  # every BN feeds a padded Conv or a ConvTranspose
        wanted = set()
    assert {f.direction for f in folded.report.folded} - {"backward"} == wanted
    why = {k: sum(_WHY[k] in s.reason for s in folded.report.skipped) for k in _WHY}
    assert why == {k: BN_AFTER_ACT_LEFT[name].get(k, 0) for k in _WHY}, folded.report.skipped
    assert check_models(before, after, CheckOptions(batch=4)).passed


def test_bn_position_changes_the_layer_order():
    before = [type(m).__name__ for m in build_model("mlp", bn_position="before")]
    after = [type(m).__name__ for m in build_model("mlp", bn_position="after")]
    assert before[1:4] == ["Linear", "BatchNorm1d", "ReLU"]
    assert after[1:4] == ["Linear", "ReLU", "BatchNorm1d"]
    assert count_batchnorms(build_model("resnet", bn=False)) == 0
    resnet_convs = [m for m in build_model("resnet").modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None for c in resnet_convs)
    mobilenet = build_model("mobilenet")
    assert any(m.groups > 1 for m in mobilenet.modules() if isinstance(m, torch.nn.Conv2d))
    autoencoder = build_model("autoencoder")
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in autoencoder.modules())


def test_split_is_stratified_and_seeded():
    a, b, c = split_digits(seed=0), split_digits(seed=0), split_digits(seed=1)
    assert a.x_train.shape == (1347, 1, 8, 8) and a.x_test.shape == (450, 1, 8, 8)
    assert a.x_train.dtype == np.float32 and a.x_train.min() >= 0.0 and a.x_train.max() == 1.0
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_train, c.y_train)
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46


def test_training_is_deterministic_and_learns():
    config = TrainConfig(model="mlp", epochs=2, lr=0.1)
    r1, r2 = train(config), train(config)
    assert [s.test_loss for s in r1.history] == [s.test_loss for s in r2.history]
    for p1, p2 in zip(r1.model.parameters(), r2.model.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert r1.final_accuracy > 0.9
    assert r1.epochs_to(0.9) in (1, 2)


def test_autoencoder_reconstructs():
    result = train(TrainConfig(model="autoencoder", epochs=2))
    assert result.final_accuracy is None
    assert result.history[-1].test_loss < result.history[0].train_loss


def test_checkpoint_round_trip(tmp_path):
    result = train(few_steps("digits_cnn"))
    path = save_checkpoint(result, tmp_path / "m.pt")
    model, config, metrics = load_checkpoint(path)
    assert config == result.config
    assert not model.training
    assert metrics["history"][0]["epoch"] == 1
    x = torch.from_numpy(split_digits().x_test[:5])
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model(x), rtol=0, atol=0)


def test_load_checkpoint_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(BadInputError, match="not a bnfold checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(BadInputError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")


def test_export_fails_loudly_when_bn_nodes_are_lost(tmp_path):
    """A BN module the graph never reaches exports no BatchNormalization node: refused."""

    class Unused(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = build_model("mlp", bn=False)
            self.spare = torch.nn.BatchNorm1d(10)

        def forward(self, x):
            return self.body(x)

    with pytest.raises(ExportError, match="0 BatchNormalization nodes for 1 BatchNorm"):
        export_model(Unused(), tmp_path / "m.onnx")
    # regression: a failed export used to leave the bad file at the destination
    assert list(tmp_path.iterdir()) == []


def test_training_refuses_settings_that_would_train_nothing():
    """Regression: a batch larger than the training set (or max_steps_per_epoch=0) ran no step
    at all and reported a train loss of 0.0; DemoOptions(epochs=0) silently trained 20 epochs."""
    with pytest.raises(UsageError, match="exceeds the 1347 training images"):
        train(TrainConfig(model="mlp", epochs=1, batch_size=2000))
    with pytest.raises(UsageError, match="max_steps_per_epoch"):
        TrainConfig(max_steps_per_epoch=0)
    with pytest.raises(UsageError, match="epochs must be >= 1"):
        DemoOptions(epochs=0)

"""Models exported from torch with BatchNormalization kept, folded, compared with torch eager
and with onnxruntime on the unfolded model. BN statistics are random, never near-identity."""

from __future__ import annotations

import warnings

import onnx
import pytest
from onnx_helpers import assert_close, checker_ok, fold_bytes, node_count, run

torch = pytest.importorskip("torch")
nn = torch.nn


def _randomise(model, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                sign = torch.randint(0, 2, (c,), generator=gen) * 2 - 1
                m.weight.copy_(sign * (0.5 + 1.5 * torch.rand(c, generator=gen)))
                m.bias.copy_(torch.randn(c, generator=gen))
                m.running_mean.copy_(torch.randn(c, generator=gen) * 2)
                m.running_var.copy_(0.1 + 4 * torch.rand(c, generator=gen))
    return model.eval()


def _models():
    torch.manual_seed(0)
    return {
        "conv2d": (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
                   (2, 3, 8, 8)),
        "conv_transpose2d_groups2": (
            nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, output_padding=1),
                          nn.BatchNorm2d(6)),
            (2, 4, 5, 5),
        ),
        "linear": (nn.Sequential(nn.Linear(10, 7), nn.BatchNorm1d(7), nn.ReLU()), (4, 10)),
        "conv1d": (nn.Sequential(nn.Conv1d(3, 5, 3, bias=False), nn.BatchNorm1d(5)), (2, 3, 9)),
    }  # fmt: skip


def _check(path, module, x):
    data = path.read_bytes()
    model = onnx.load_from_string(data)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" in ops, ops
    folded, result = fold_bytes(data)
    assert result.report.bn_folded == ops.count("BatchNormalization")
    assert result.report.bn_after == 0, result.report.summary()
    folded_proto = onnx.load_from_string(folded)
    assert node_count(folded_proto) < node_count(model)
    if checker_ok(model):
        onnx.checker.check_model(folded_proto, full_check=True)
    with torch.no_grad():
        eager = module(x).numpy()
    feeds = {model.graph.input[0].name: x.numpy()}
    unfolded = run(data, feeds)[0]
    got = run(folded, feeds)[0]
    assert_close(eager, unfolded, 3e-5, 1e-6, what="unfolded vs eager")
    assert_close(eager, got, 3e-5, 1e-6, what="folded vs eager")
    assert_close(unfolded, got, 3e-5, 1e-6, what="folded vs unfolded")
    assert fold_bytes(folded)[0] == folded


@pytest.mark.parametrize("name", list(_models()))
def test_torchscript_export(tmp_path, name):
    module, shape = _models()[name]
    module = _randomise(module, seed=len(name))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(path),
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=["x"],
            opset_version=17,
        )
    _check(path, module, x)


def test_dynamo_export(tmp_path):
    """dynamo exporter with optimize=False keeps BN and builds the Conv's zero bias at run time
    (Shape -> Expand -> CastLike): bnfold resolves it."""
    pytest.importorskip("onnxscript")
    module = _randomise(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)), seed=3)
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), dynamo=True, optimize=False, verbose=False)
    program.save(str(path))
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "Expand" in ops and "CastLike" in ops, ops  # the run-time zero bias
    _check(path, module, x)
    folded, _ = fold_bytes(path.read_bytes())
    assert [n.op_type for n in onnx.load_from_string(folded).graph.node] == ["Conv"]

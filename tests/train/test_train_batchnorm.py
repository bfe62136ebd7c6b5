"""The reference BatchNorm against torch.nn.BatchNorm1d/2d/3d, in every mode."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bnfold.train import BatchNorm1d, BatchNorm2d, BatchNorm3d, batch_norm_train  # noqa: E402

pytestmark = pytest.mark.train

# (reference class, torch class, input shape)
CASES = [
    (BatchNorm1d, torch.nn.BatchNorm1d, (16, 5)),
    (BatchNorm1d, torch.nn.BatchNorm1d, (6, 5, 7)),
    (BatchNorm2d, torch.nn.BatchNorm2d, (4, 5, 6, 7)),
    (BatchNorm3d, torch.nn.BatchNorm3d, (3, 5, 4, 3, 5)),
]
IDS = ["NC", "NCL", "NCHW", "NCDHW"]
RTOL = {torch.float32: 1e-6, torch.float64: 1e-10}


def assert_close(got, want, dtype) -> None:
    """Relative to the largest magnitude of ``want``: |got - want| <= rtol * (|want| + max|want|)."""
    rtol = RTOL[dtype]
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale)


def make_pair(ref_cls, torch_cls, dtype, seed=0, **kwargs):
    """A reference module and a torch module with the same random gamma/beta."""
    ref = ref_cls(5, dtype=dtype, **kwargs)
    tm = torch_cls(5, dtype=dtype, **kwargs)
    if ref.affine:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name in ("weight", "bias"):
                value = torch.randn(5, generator=g, dtype=dtype)
                getattr(ref, name).copy_(value)
                getattr(tm, name).copy_(value)
    return ref, tm


def batch(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype) * 3.0 + 1.5


def step(ref, tm, x, dtype):
    """One forward+backward through both modules; compare outputs and all gradients."""
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ref(x1), tm(x2)
    assert_close(y1, y2, dtype)
    g = torch.randn_like(y2)
    y1.backward(g)
    y2.backward(g)
    assert_close(x1.grad, x2.grad, dtype)
    if ref.affine:
        assert_close(ref.weight.grad, tm.weight.grad, dtype)
        assert_close(ref.bias.grad, tm.bias.grad, dtype)
        for m in (ref, tm):
            m.weight.grad = m.bias.grad = None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("ref_cls", "torch_cls", "shape"), CASES, ids=IDS)
@pytest.mark.parametrize("momentum", [0.1, None, 0.37], ids=["m0.1", "cumulative", "m0.37"])
def test_train_steps_then_eval_match_torch(ref_cls, torch_cls, shape, dtype, momentum):
    ref, tm = make_pair(ref_cls, torch_cls, dtype, momentum=momentum)
    for i in range(25):
        step(ref, tm, batch(shape, dtype, seed=i), dtype)
    assert ref.num_batches_tracked.item() == tm.num_batches_tracked.item() == 25
    assert_close(ref.running_mean, tm.running_mean, dtype)
    assert_close(ref.running_var, tm.running_var, dtype)
    ref.eval()
    tm.eval()
    step(ref, tm, batch(shape, dtype, seed=99), dtype)
    assert ref.num_batches_tracked.item() == 25


def test_cumulative_average_is_the_papers_population_statistics():
    """momentum=None: mean of batch means, m/(m-1) times the mean of batch variances."""
    ref = BatchNorm2d(3, momentum=None, dtype=torch.float64)
    xs = [batch((4, 3, 5, 5), torch.float64, seed=i) for i in range(7)]
    for x in xs:
        ref(x)
    m = 4 * 5 * 5
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs])
    variances = torch.stack([x.var(dim=(0, 2, 3), unbiased=False) for x in xs])
    torch.testing.assert_close(ref.running_mean, means.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        ref.running_var, m / (m - 1) * variances.mean(0), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("ref_cls", "torch_cls", "shape"), CASES, ids=IDS)
def test_affine_false_matches_torch(ref_cls, torch_cls, shape, dtype):
    ref, tm = make_pair(ref_cls, torch_cls, dtype, affine=False)
    assert ref.weight is None and ref.bias is None
    for i in range(3):
        step(ref, tm, batch(shape, dtype, seed=i), dtype)
    assert_close(ref.running_var, tm.running_var, dtype)
    ref.eval()
    tm.eval()
    step(ref, tm, batch(shape, dtype, seed=5), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("ref_cls", "torch_cls", "shape"), CASES, ids=IDS)
def test_no_running_stats_uses_batch_statistics_in_eval_too(ref_cls, torch_cls, shape, dtype):
    ref, tm = make_pair(ref_cls, torch_cls, dtype, track_running_stats=False)
    assert ref.running_mean is None and ref.num_batches_tracked is None
    step(ref, tm, batch(shape, dtype, seed=0), dtype)
    ref.eval()
    tm.eval()
    step(ref, tm, batch(shape, dtype, seed=1), dtype)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 4), (2, 3, 3, 2), (2, 2, 2, 2, 3)])
def test_gradcheck_float64(shape, affine):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_()
    c = shape[1]
    gamma = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_() if affine else None
    beta = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_() if affine else None

    def f(x, gamma, beta):
        return batch_norm_train(x, gamma, beta, 1e-5)[0]

    assert torch.autograd.gradcheck(f, (x, gamma, beta), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize(
    "wanted", [(True, False, False), (False, True, True), (False, True, False)], ids=str
)
def test_gradcheck_float64_when_only_some_inputs_need_grad(wanted):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 4, 2, 3, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(
        wanted[0]
    )
    gamma = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_(wanted[1])
    beta = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_(wanted[2])

    def f(x, gamma, beta):
        return batch_norm_train(x, gamma, beta, 1e-5)[0]

    assert torch.autograd.gradcheck(f, (x, gamma, beta), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_strided_input_and_expanded_gradient_match_torch(dtype):
    """channels_last and sliced inputs, and an expanded (stride-0) upstream gradient."""
    base = batch((6, 5, 8, 9), dtype, seed=3)
    inputs = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "sliced": base[:, :, ::2, 1:],
    }
    for name, x in inputs.items():
        ref, tm = make_pair(BatchNorm2d, torch.nn.BatchNorm2d, dtype)
        step(ref, tm, x, dtype)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ref(x1), tm(x2)
        g = batch((1, 1, *x.shape[2:]), dtype, seed=8).expand_as(y1)
        assert g.stride()[:2] == (0, 0)
        y1.backward(g)
        y2.backward(g)
        assert x1.grad.abs().max() > 0.1, name
        assert_close(x1.grad, x2.grad, dtype)
        assert_close(ref.weight.grad, tm.weight.grad, dtype)
        assert_close(ref.bias.grad, tm.bias.grad, dtype)
        assert_close(ref.running_var, tm.running_var, dtype)


def test_forward_and_backward_leave_the_input_untouched():
    x = batch((4, 5, 3, 3), torch.float32, seed=4)
    before = x.clone()
    xi = x.requires_grad_()
    BatchNorm2d(5)(xi).backward(torch.randn(4, 5, 3, 3))
    assert torch.equal(x.detach(), before)


def test_input_changed_in_place_before_backward_is_an_error():
    """The forward pass saves x itself; autograd must notice if it changes."""
    x = batch((4, 5, 3, 3), torch.float32, seed=5)
    leaf = x.clone().requires_grad_()
    xi = leaf * 1.0
    y = BatchNorm2d(5)(xi)
    with torch.no_grad():
        xi.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_double_backward_is_refused_not_silently_wrong():
    """Regression: the first-order backward is not itself differentiable through x."""
    x = batch((4, 3, 2, 2), torch.float64, seed=6).requires_grad_()
    y = BatchNorm2d(3, dtype=torch.float64)(x)
    (dx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dx.sum().backward()


def test_backward_is_hand_written_not_torch_batch_norm():
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    y = BatchNorm2d(3)(x)
    assert type(y.grad_fn).__name__ == "BatchNormFunctionBackward"


@pytest.mark.parametrize(("ref_cls", "torch_cls", "shape"), CASES, ids=IDS)
def test_state_dict_round_trips_with_torch(ref_cls, torch_cls, shape):
    ref, tm = make_pair(ref_cls, torch_cls, torch.float32)
    for i in range(3):
        tm(batch(shape, torch.float32, seed=i))
    fresh_ref = ref_cls(5)
    fresh_ref.load_state_dict(tm.state_dict(), strict=True)
    assert fresh_ref.state_dict().keys() == tm.state_dict().keys()
    for key, value in tm.state_dict().items():
        assert torch.equal(fresh_ref.state_dict()[key], value), key
    assert fresh_ref.num_batches_tracked.dtype == torch.long
    for i in range(3):
        fresh_ref(batch(shape, torch.float32, seed=10 + i))
    back = torch_cls(5)
    back.load_state_dict(fresh_ref.state_dict(), strict=True)
    for key, value in fresh_ref.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_old_state_dict_without_num_batches_tracked_loads():
    sd = torch.nn.BatchNorm2d(5).state_dict()
    del sd["num_batches_tracked"]
    sd._metadata[""]["version"] = 1
    ref = BatchNorm2d(5)
    ref.load_state_dict(sd, strict=True)
    assert ref.num_batches_tracked.item() == 0


def test_rejects_wrong_rank_and_single_value_batches():
    with pytest.raises(ValueError, match="expected 4D"):
        BatchNorm2d(3)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="expected 2D or 3D"):
        BatchNorm1d(3)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm1d(3)(torch.randn(1, 3))
    bn = BatchNorm1d(3).eval()
    assert bn(torch.randn(1, 3)).shape == (1, 3)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize(
    ("ref_cls", "shape"),
    [(BatchNorm1d, (2, 5, 7)), (BatchNorm2d, (2, 5, 6, 7)), (BatchNorm3d, (2, 5, 4, 3, 5))],
)
def test_exports_as_one_batchnormalization_node(tmp_path, ref_cls, shape):
    bn = ref_cls(5)
    for i in range(4):
        bn(batch(shape, torch.float32, seed=i))
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    bn.eval()
    x = batch(shape, torch.float32, seed=7)
    path = tmp_path / "bn.onnx"
    torch.onnx.export(
        bn,
        (x,),
        str(path),
        dynamo=False,
        opset_version=17,
        training=torch.onnx.TrainingMode.PRESERVE,
        input_names=["x"],
    )
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("BatchNormalization") == 1
    assert set(ops) <= {"BatchNormalization", "Identity"}
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )
    with torch.no_grad():
        np.testing.assert_allclose(got, bn(x).numpy(), rtol=1e-5, atol=1e-5)

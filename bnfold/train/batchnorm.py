"""A reference BatchNorm written from Algorithm 1 of Ioffe & Szegedy (2015).

Training mode normalises with the per-channel batch mean and biased variance, computed over the
batch axis and every spatial axis, and back-propagates through ``BatchNormFunction``, whose
backward pass is the paper's gradient equations written out by hand.

Running statistics follow PyTorch's convention, so the modules are drop-in (and state_dict)
compatible with ``torch.nn.BatchNorm1d/2d/3d``::

    running = (1 - momentum) * running + momentum * batch_statistic

with the running variance fed the unbiased batch variance ``m / (m - 1) * var``, where ``m`` is the
number of values per channel. ``momentum=None`` uses the cumulative average ``1 / n`` for the
``n``-th batch (``n`` = ``num_batches_tracked``), which yields the paper's population statistics:
the mean of the batch means and ``m / (m - 1)`` times the mean of the batch variances.

ONNX's ``BatchNormalization`` has a ``momentum`` attribute that weighs the *old* value
(default 0.9): ``running = momentum * running + (1 - momentum) * batch``. So ONNX momentum
``= 1 - `` PyTorch momentum (0.9 <-> 0.1). It only matters for training-mode graphs, which bnfold
never exports; note that ONNX's training mode feeds the biased batch variance to the running
variance, where PyTorch and these modules feed the unbiased one.

Eval mode (with running statistics) calls ``torch.nn.functional.batch_norm`` with
``training=False``: that is the inference formula ``(x - running_mean) / sqrt(running_var + eps)
* weight + bias``, and it is what makes the ONNX exporters emit one standard
``BatchNormalization`` node per module. Training mode never calls torch's batch norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormFunction",
    "batch_norm_train",
]


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    """Reshape a per-channel vector to broadcast against an (N, C, ...) tensor."""
    return t.reshape((1, -1) + (1,) * (ndim - 2))


class BatchNormFunction(torch.autograd.Function):
    """Algorithm 1 forward, with the paper's backward equations for x, gamma and beta.

    ``forward(x, gamma, beta, eps) -> (y, batch_mean, batch_var)``; ``gamma``/``beta`` may be
    ``None`` (affine=False). The batch statistics are returned for the running averages and carry
    no gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float):
        dims = [0, *range(2, x.ndim)]
        mean = x.mean(dim=dims, keepdim=True)  # mu_B
        xc = x - mean
        var = (xc * xc).mean(dim=dims, keepdim=True)  # sigma_B^2, biased
        invstd = torch.rsqrt(var + eps)
        xhat = xc * invstd
        y = xhat
        if gamma is not None:
            y = y * _channel_view(gamma, x.ndim)
        if beta is not None:
            y = y + _channel_view(beta, x.ndim)
        ctx.save_for_backward(xc, invstd, gamma)
        ctx.mark_non_differentiable(mean, var)
        return y, mean.reshape(-1), var.reshape(-1)

    @staticmethod
    def backward(ctx, dy: Tensor, _dmean: Tensor | None, _dvar: Tensor | None):
        xc, invstd, gamma = ctx.saved_tensors
        dims = [0, *range(2, dy.ndim)]
        m = dy.numel() // dy.shape[1]
        dxhat = dy if gamma is None else dy * _channel_view(gamma, dy.ndim)
        # dl/dsigma^2 = sum dxhat * (x - mu) * -1/2 * (sigma^2 + eps)^(-3/2)
        dvar = (dxhat * xc).sum(dim=dims, keepdim=True) * (-0.5 * invstd**3)
        # dl/dmu = sum dxhat * -1/sqrt(sigma^2 + eps) + dl/dsigma^2 * sum -2 (x - mu) / m
        dmean = (dxhat * -invstd).sum(dim=dims, keepdim=True) + dvar * (-2.0 * xc).sum(
            dim=dims, keepdim=True
        ) / m
        # dl/dx = dxhat / sqrt(sigma^2 + eps) + dl/dsigma^2 * 2 (x - mu) / m + dl/dmu / m
        dx = dxhat * invstd + dvar * (2.0 * xc / m) + dmean / m
        dgamma = dbeta = None
        if ctx.needs_input_grad[1]:
            dgamma = (dy * xc * invstd).sum(dim=dims)  # sum dy * xhat
        if ctx.needs_input_grad[2]:
            dbeta = dy.sum(dim=dims)
        return dx, dgamma, dbeta, None


def batch_norm_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5
) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode batch norm: ``(y, batch_mean, biased_batch_var)``."""
    return BatchNormFunction.apply(x, weight, bias, eps)


class _ReferenceBatchNorm(nn.Module):
    """Shared implementation; subclasses fix the accepted input ranks."""

    _version = 2
    _ranks: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """Zero mean, unit variance, no batches seen."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics and set gamma to 1, beta to 0."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim not in self._ranks:
            wanted = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"expected {wanted} input (got {x.ndim}D input)")
        if not torch.jit.is_tracing() and x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels, got {x.shape[1]}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.training and self.track_running_stats:
            # Inference formula; exports as one standard BatchNormalization node.
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        m = x.numel() // x.shape[1]
        if m <= 1:
            raise ValueError(
                f"expected more than 1 value per channel when training, got input size {tuple(x.shape)}"
            )
        y, mean, var = batch_norm_train(x, self.weight, self.bias, self.eps)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, m)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, m: int) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            factor = 1.0 / float(self.num_batches_tracked.item())
        else:
            factor = self.momentum
        unbiased = var * (m / (m - 1))
        self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # As torch: state dicts from before version 2 have no num_batches_tracked.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_ReferenceBatchNorm):
    """Reference BatchNorm over (N, C) or (N, C, L) input."""

    _ranks = (2, 3)


class BatchNorm2d(_ReferenceBatchNorm):
    """Reference BatchNorm over (N, C, H, W) input."""

    _ranks = (4,)


class BatchNorm3d(_ReferenceBatchNorm):
    """Reference BatchNorm over (N, C, D, H, W) input."""

    _ranks = (5,)

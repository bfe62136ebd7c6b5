"""Small networks that take the (N, 1, 8, 8) digits and place BatchNorm before or after activations.

Every model accepts ``bn`` (use BatchNorm at all), ``bn_position`` (``"before"`` the activation, as
the paper does, or ``"after"`` it), ``activation`` (``"relu"`` or ``"sigmoid"``) and ``bn_impl``
(``"reference"``: bnfold's hand-written BatchNorm, ``"torch"``: ``torch.nn.BatchNorm*``).

- ``digits_cnn``: Conv -> BN -> act blocks, max pooling, then Linear -> BatchNorm1d -> act -> Linear.
- ``mlp``: three hidden Linear(100) -> BatchNorm1d -> act layers (the paper's MNIST network).
- ``resnet``: bias-free convolutions, bottleneck residual blocks with projection shortcuts.
- ``mobilenet``: depthwise 3x3 and pointwise 1x1 convolutions.
- ``autoencoder``: strided Conv encoder, ConvTranspose decoder, reconstructs the image.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from bnfold.train import batchnorm as ref_bn

__all__ = ["MODEL_NAMES", "TASKS", "ZooOptions", "build_model", "count_batchnorms"]

MODEL_NAMES = ("digits_cnn", "mlp", "resnet", "mobilenet", "autoencoder")
TASKS = {name: "classify" for name in MODEL_NAMES} | {"autoencoder": "reconstruct"}
ACTIVATIONS = ("relu", "sigmoid")
BN_POSITIONS = ("before", "after")
BN_IMPLS = ("reference", "torch")

BN_TYPES = (
    ref_bn.BatchNorm1d,
    ref_bn.BatchNorm2d,
    ref_bn.BatchNorm3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)


class ZooOptions:
    """How a zoo model normalises: validated once, then builds norm/activation stacks."""

    def __init__(
        self,
        bn: bool = True,
        bn_position: str = "before",
        activation: str = "relu",
        bn_impl: str = "reference",
    ) -> None:
        for value, allowed, what in (
            (bn_position, BN_POSITIONS, "bn_position"),
            (activation, ACTIVATIONS, "activation"),
            (bn_impl, BN_IMPLS, "bn_impl"),
        ):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
        self.bn, self.bn_position, self.activation, self.bn_impl = (
            bn,
            bn_position,
            activation,
            bn_impl,
        )

    def act(self) -> nn.Module:
        return nn.ReLU() if self.activation == "relu" else nn.Sigmoid()

    def norm(self, channels: int, rank: int) -> nn.Module:
        """A BatchNorm for (N, C) / (N, C, H, W) tensors (``rank`` 2 or 4)."""
        if self.bn_impl == "reference":
            return ref_bn.BatchNorm1d(channels) if rank == 2 else ref_bn.BatchNorm2d(channels)
        return nn.BatchNorm1d(channels) if rank == 2 else nn.BatchNorm2d(channels)

    def norm_act(self, channels: int, rank: int = 4) -> list[nn.Module]:
        """``[BN, act]``, ``[act, BN]`` or ``[act]``."""
        if not self.bn:
            return [self.act()]
        if self.bn_position == "before":
            return [self.norm(channels, rank), self.act()]
        return [self.act(), self.norm(channels, rank)]

    def norm_only(self, channels: int) -> list[nn.Module]:
        return [self.norm(channels, 4)] if self.bn else []


def _conv(
    cin: int, cout: int, k: int, opts: ZooOptions, stride: int = 1, groups: int = 1
) -> nn.Conv2d:
    """Conv whose bias is dropped when a BatchNorm follows it directly (it would be redundant)."""
    bias = not (opts.bn and opts.bn_position == "before")
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias)


def digits_cnn(opts: ZooOptions) -> nn.Module:
    """Conv -> BN -> act (x3) with pooling; Linear -> BatchNorm1d -> act -> Linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        *opts.norm_act(16),
        nn.Conv2d(16, 32, 3, padding=1),
        *opts.norm_act(32),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        *opts.norm_act(32),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 64),
        *opts.norm_act(64, rank=2),
        nn.Linear(64, 10),
    )


def mlp(opts: ZooOptions, hidden: tuple[int, ...] = (100, 100, 100)) -> nn.Module:
    """Flatten, then Linear -> BatchNorm1d -> act per hidden layer, then Linear(10)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 64
    for h in hidden:
        layers += [nn.Linear(width, h), *opts.norm_act(h, rank=2)]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand, bias-free convolutions, added to a (projected) shortcut."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, opts: ZooOptions) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=not opts.bn),
            *opts.norm_act(mid),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=not opts.bn),
            *opts.norm_act(mid),
            nn.Conv2d(mid, cout, 1, bias=not opts.bn),
            *opts.norm_only(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=not opts.bn), *opts.norm_only(cout)
            )
        self.act = opts.act()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.branch(x) + self.shortcut(x))


def resnet(opts: ZooOptions) -> nn.Module:
    """Stem conv, three bottleneck blocks (one strided), global average pool, Linear."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=not opts.bn),
        *opts.norm_act(16),
        Bottleneck(16, 8, 32, 1, opts),
        Bottleneck(32, 8, 32, 1, opts),
        Bottleneck(32, 16, 64, 2, opts),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def mobilenet(opts: ZooOptions) -> nn.Module:
    """Stem conv, then depthwise 3x3 -> BN -> act -> pointwise 1x1 -> BN -> act blocks."""
    layers: list[nn.Module] = [_conv(1, 16, 3, opts), *opts.norm_act(16)]
    for cin, cout, stride in ((16, 32, 1), (32, 64, 2), (64, 64, 1)):
        layers += [
            _conv(cin, cin, 3, opts, stride=stride, groups=cin),
            *opts.norm_act(cin),
            _conv(cin, cout, 1, opts),
            *opts.norm_act(cout),
        ]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def autoencoder(opts: ZooOptions) -> nn.Module:
    """8x8 -> 4x4 -> 2x2 with strided convs, back with ConvTranspose; sigmoid output in [0, 1]."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1),
        *opts.norm_act(16),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        *opts.norm_act(32),
        nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
        *opts.norm_act(16),
        nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),
        nn.Sigmoid(),
    )


_BUILDERS: dict[str, Callable[[ZooOptions], nn.Module]] = {
    "digits_cnn": digits_cnn,
    "mlp": mlp,
    "resnet": resnet,
    "mobilenet": mobilenet,
    "autoencoder": autoencoder,
}


def build_model(
    name: str,
    *,
    bn: bool = True,
    bn_position: str = "before",
    activation: str = "relu",
    bn_impl: str = "reference",
) -> nn.Module:
    """Build zoo model ``name`` (one of ``MODEL_NAMES``) for (N, 1, 8, 8) input."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return _BUILDERS[name](ZooOptions(bn, bn_position, activation, bn_impl))


def count_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm modules (reference or torch) ``model`` holds."""
    return sum(isinstance(m, BN_TYPES) for m in model.modules())

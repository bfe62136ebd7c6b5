"""The torch models of ``bench_forward.py``, and their BatchNorms folded by hand (the limit).

Every model is seeded, has random non-identity BN statistics (signed gamma, as
tests/test_torch_export.py's ``_randomise``) and is in eval mode. ``fold_by_hand(model)``
returns a deep copy in which every BN that can be folded exactly is folded into its neighbour's
weights in float64 (rounded to float32 once) and replaced by ``nn.Identity``, so exporting it
gives the best graph an exact fold can reach. Each model class lists its own folds in
``hand_folds()``: (layer, bn) pairs fold backward (W'[o] = s[o] W[o], b' = s b + t), (bn, layer)
pairs forward (W' = W diag(s) on the input axis, b' = b + W t; only into a Linear or an unpadded,
ungrouped Conv). A BN that no exact fold can remove is left in place.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

BN = nn.modules.batchnorm._BatchNorm
Fold = tuple[nn.Module, nn.Module]  # (layer, bn): backward; (bn, layer): forward


def randomise(model: nn.Module, seed: int, signed: bool = True) -> nn.Module:
    """Random non-identity BN statistics (gamma of both signs unless ``signed`` is False, as
    in trained networks, whose gammas are nearly all positive), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BN):
                c = m.num_features
                sign = torch.randint(0, 2, (c,), generator=gen) * 2 - 1
                if not signed:
                    sign = torch.ones_like(sign)
                m.weight.copy_(sign * (0.5 + 1.5 * torch.rand(c, generator=gen)))
                m.bias.copy_(torch.randn(c, generator=gen))
                m.running_mean.copy_(torch.randn(c, generator=gen) * 2)
                m.running_var.copy_(0.1 + 4 * torch.rand(c, generator=gen))
    return model.eval()


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, BN) for m in model.modules())


def _scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(bn, BN) and bn.running_var is not None and bn.running_mean is not None
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return s, bn.bias.double() - s * bn.running_mean.double()


def _bias(layer: nn.Linear | nn.Conv2d) -> torch.Tensor:
    if layer.bias is None:
        return torch.zeros(layer.weight.shape[0], dtype=torch.float64)
    return layer.bias.double()


def _set(layer: nn.Linear | nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    layer.weight = nn.Parameter(weight.float())
    layer.bias = nn.Parameter(bias.float())


def fold_backward(layer: nn.Module, bn: nn.Module) -> None:
    """layer -> bn: scale the layer's output channels, shift its bias."""
    assert isinstance(layer, nn.Linear | nn.Conv2d)
    s, t = _scale_shift(bn)
    w = layer.weight.double()
    _set(layer, w * s.view(-1, *[1] * (w.dim() - 1)), s * _bias(layer) + t)


def fold_forward(bn: nn.Module, layer: nn.Module) -> None:
    """bn -> layer: scale the layer's input channels, add W t to its bias (no padding)."""
    if isinstance(layer, nn.Conv2d):
        assert layer.groups == 1 and all(p == 0 for p in layer.padding), "padding sees the shift"
    else:
        assert isinstance(layer, nn.Linear)
    s, t = _scale_shift(bn)
    w = layer.weight.double()
    summed = w.sum(dim=tuple(range(2, w.dim()))) if w.dim() > 2 else w
    _set(layer, w * s.view(1, -1, *[1] * (w.dim() - 2)), _bias(layer) + summed @ t)


def fold_by_hand(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy with every exactly foldable BN folded and replaced by Identity; (copy, BN left)."""
    folded = copy.deepcopy(model)
    done: set[int] = set()
    with torch.no_grad():
        for module in folded.modules():
            for a, b in getattr(module, "hand_folds", list)():
                bn = b if isinstance(b, BN) else a
                if isinstance(b, BN):
                    fold_backward(a, b)
                else:
                    fold_forward(a, b)
                done.add(id(bn))
    for module in folded.modules():
        for name, child in list(module.named_children()):
            if id(child) in done:
                setattr(module, name, nn.Identity())
    return folded.eval(), count_bn(folded)


# --------------------------------------------------------------------------- models


class MLP(nn.Module):
    """``depth`` x (Linear -> ReLU -> BatchNorm1d) ("after") or (Linear -> BatchNorm1d -> ReLU)
    ("before"), then Linear(width, 10)."""

    def __init__(self, order: str, width: int = 256, depth: int = 3, n_out: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            lin, bn = nn.Linear(width, width), nn.BatchNorm1d(width)
            layers += [lin, nn.ReLU(), bn] if order == "after" else [lin, bn, nn.ReLU()]
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def hand_folds(self) -> list[Fold]:
        mods = list(self.net)
        out: list[Fold] = []
        for i, m in enumerate(mods):
            if isinstance(m, BN):
                # after: ReLU -> BN -> Linear, all of it forward; before: Linear -> BN backward
                out.append((m, mods[i + 1]) if self.order == "after" else (mods[i - 1], m))
        return out


class DenseLayer(nn.Module):
    """DenseNet-B layer (Huang et al. 2017):
    BN -> ReLU -> Conv1x1(4k) -> BN -> ReLU -> Conv3x3(k, pad 1)."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.norm2(self.conv1(self.relu(self.norm1(x))))))

    def hand_folds(self) -> list[Fold]:
        # norm1 normalises the shared concatenation, then a ReLU: no exact fold exists
        return [(self.conv1, self.norm2)]


class DenseBlock(nn.Module):
    """A DenseNet-BC block: ``layers`` dense layers, each reading the concatenation of all
    earlier feature maps, then the transition as in the paper (torchvision adds a ReLU):
    BN -> Conv1x1 (compression 0.5, no padding) -> AvgPool2x2."""

    def __init__(self, cin: int = 64, growth: int = 32, layers: int = 6) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(layers))
        cout = cin + layers * growth
        self.norm = nn.BatchNorm2d(cout)
        self.conv = nn.Conv2d(cout, cout // 2, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return self.pool(self.conv(self.norm(torch.cat(feats, 1))))

    def hand_folds(self) -> list[Fold]:
        return [(self.norm, self.conv)]


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity mappings"):
    BN -> ReLU -> Conv3x3 -> BN -> ReLU -> Conv3x3, plus the shortcut (a 1x1 Conv of the
    pre-activated input where the shape changes, else the block input)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        return self.conv2(self.relu(self.bn2(self.conv1(out)))) + short

    def hand_folds(self) -> list[Fold]:
        return [(self.conv1, self.bn2)]  # bn1 reads a residual sum (or the stem) shared by two


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs: Conv3x3(3, 32), three stages of two blocks
    (32, 64, 128 channels), BN -> ReLU -> global average pool -> Linear(128, 10)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        mods: list[nn.Module] = []
        cin = widths[0]
        for stage, w in enumerate(widths):
            for i in range(blocks):
                mods.append(PreActBlock(cin, w, 2 if stage > 0 and i == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*mods)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck: Conv1x1 -> BN -> ReLU -> Conv3x3(stride) -> BN -> ReLU ->
    Conv1x1(4x) -> BN, plus the shortcut (Conv1x1 -> BN where the shape changes), ReLU."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (self.down(x) if self.down is not None else x))

    def hand_folds(self) -> list[Fold]:
        pairs: list[Fold] = [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]
        if self.down is not None:
            pairs.append((self.down[0], self.down[1]))
        return pairs


class ResNet50(nn.Module):
    """The ResNet-50 structure (He et al. 2016): Conv7x7/2 -> BN -> ReLU -> MaxPool3x3/2, 3-4-6-3
    bottlenecks of width 64-128-256-512, global average pool, Linear(2048, 1000); 53 BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        mods: list[nn.Module] = []
        cin = 64
        for stage, (width, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
            for i in range(n):
                mods.append(Bottleneck(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = 4 * width
        self.layers = nn.Sequential(*mods)
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(self.pool(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    def hand_folds(self) -> list[Fold]:
        return [(self.conv1, self.bn1)]


@dataclass(frozen=True)
class Spec:
    """One benchmark model: how to build it, its input (without batch) and its exporter."""

    title: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    exporter: (
        str  # "torchscript" (dynamo=False, TrainingMode.PRESERVE) or "dynamo" (optimize=False)
    )
    design: str
    signed_gamma: bool = True


MODELS: dict[str, Spec] = {
    "mlp_relu_bn": Spec(
        "MLP Linear→ReLU→BN→Linear, 256 wide",
        lambda: MLP("after"),
        (256,),
        "torchscript",
        "3 x (Linear(256, 256) -> ReLU -> BatchNorm1d(256)), Linear(256, 10)",
    ),
    "mlp_relu_bn_pos": Spec(
        "MLP Linear→ReLU→BN→Linear, 256 wide, gamma > 0",
        lambda: MLP("after"),
        (256,),
        "torchscript",
        "as mlp_relu_bn with every gamma positive (as trained): bnfold's fold through the ReLU "
        "(scale into the Linear before, shift into the Linear after) instead of the forward fold",
        signed_gamma=False,
    ),
    "mlp_bn_relu": Spec(
        "MLP Linear→BN→ReLU→Linear, 256 wide",
        lambda: MLP("before"),
        (256,),
        "torchscript",
        "3 x (Linear(256, 256) -> BatchNorm1d(256) -> ReLU), Linear(256, 10)",
    ),
    "densenet_block": Spec(
        "DenseNet-BC block + transition, 64ch 16×16",
        DenseBlock,
        (64, 16, 16),
        "torchscript",
        "6 dense layers (BN -> ReLU -> Conv1x1(128) -> BN -> ReLU -> Conv3x3(32, pad 1)) on the "
        "concatenation of all earlier maps, growth 32, 64 -> 256 channels; transition as in the "
        "DenseNet paper: BN -> Conv1x1(256 -> 128, no padding) -> AvgPool 2x2; 13 BN",
    ),
    "preact_resnet": Spec(
        "pre-activation ResNet, 3×32×32",
        PreActResNet,
        (3, 32, 32),
        "torchscript",
        "Conv3x3(3, 32); 3 stages x 2 pre-activation basic blocks (32, 64, 128 channels; "
        "BN -> ReLU -> Conv3x3 -> BN -> ReLU -> Conv3x3, 1x1 Conv shortcut on the pre-activated "
        "input where the shape changes); BN -> ReLU -> avg pool -> Linear(128, 10); 13 BN",
    ),
    "resnet50_dynamo": Spec(
        "ResNet-50-like, 3×112×112, dynamo export",
        ResNet50,
        (3, 112, 112),
        "dynamo",
        "the ResNet-50 structure (bias-free Conv -> BN, 3-4-6-3 bottlenecks, 25.6M parameters) "
        "at 112x112, exported by torch.onnx.export(dynamo=True, optimize=False); 53 BN",
    ),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The seeded model ``name`` with randomised BN statistics, in eval mode."""
    torch.manual_seed(seed)
    spec = MODELS[name]
    return randomise(spec.build(), seed + len(name), spec.signed_gamma)

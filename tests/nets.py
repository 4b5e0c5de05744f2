"""Reference CNN architectures for the tests, written in plain PyTorch (no torchvision).

Each factory returns a small eval-mode ``nn.Module`` with deterministic weights drawn
from a seeded ``torch.Generator`` (the global RNG is left untouched).  BatchNorm layers
get random, non-trivial running statistics and affine parameters, so BN is never the
identity.  The nets are small enough (at most a few hundred thousand parameters) to
export and run quickly at 64x64 input.

``REFERENCE_NETS`` maps a name to ``(factory, example_input_shape)`` (no batch dim);
``export_onnx`` exports a model with either the TorchScript or the dynamo exporter into
an in-memory ``onnx.ModelProto`` whose input is "input", output "logits", and whose batch
dimension is dynamic.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "vgg16_style",
    "resnet50_style",
    "densenet_style",
    "mobilenetv2_style",
    "silu_se_net",
    "cnn1d",
    "REFERENCE_NETS",
    "export_onnx",
    "init_deterministic",
    "num_parameters",
]


# --------------------------------------------------------------------------- weights


def init_deterministic(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter and BN buffer of `model` from a generator seeded with `seed`.

    Conv/Linear weights: He-normal (fan-in) so activations keep an O(1) scale through the
    depth; biases: uniform(-0.1, 0.1).  BatchNorm: weight uniform(0.5, 1.5), bias
    normal(0, 0.1), running_mean normal(0, 0.1), running_var uniform(0.5, 2.0).
    Returns the model in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                gain = 1.0 if isinstance(m, nn.Linear) else 2.0
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(gain / fan_in))
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) * 2 - 1) * 0.1)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    return model.eval()


def _build(cls: Callable[..., nn.Module], seed: int, *args, **kwargs) -> nn.Module:
    # PyTorch's default initialisers draw from the global RNG; fork it so that building a
    # reference net never changes the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        model = cls(*args, **kwargs)
    return init_deterministic(model, seed)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- VGG-16


class VGG16Style(nn.Module):
    """VGG-16 layout: 2,2,3,3,3 3x3 convs + ReLU with a 2x2 max pool after each stage."""

    def __init__(
        self,
        num_classes: int = 10,
        widths=(8, 16, 32, 32, 32),
        in_channels: int = 3,
        input_size: int = 64,
    ) -> None:
        super().__init__()
        layers = []
        c = in_channels
        for n_convs, w in zip((2, 2, 3, 3, 3), widths):
            for _ in range(n_convs):
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        spatial = input_size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(c * spatial * spatial, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(64, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg16_style(num_classes: int = 10) -> nn.Module:
    return _build(VGG16Style, 1601, num_classes)


# --------------------------------------------------------------------------- ResNet-50


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, mid: int, stride: int) -> None:
        super().__init__()
        out = mid * self.expansion
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50Style(nn.Module):
    """ResNet-50 layout with 2 bottleneck blocks per stage and narrow widths."""

    def __init__(
        self, num_classes: int = 10, stem: int = 16, mids=(8, 16, 32, 64), blocks=(2, 2, 2, 2)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = stem
        stages = []
        for i, (mid, n) in enumerate(zip(mids, blocks)):
            layer = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layer.append(Bottleneck(c, mid, stride))
                c = mid * Bottleneck.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50_style(num_classes: int = 10) -> nn.Module:
    return _build(ResNet50Style, 5002, num_classes)


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, output concatenated onto the input."""

    def __init__(self, in_ch: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        mid = bn_size * growth
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1-AvgPool2d(2): the pool sees the conv output, negatives included."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.norm(x))))


class DenseNetStyle(nn.Module):
    def __init__(
        self, num_classes: int = 10, stem: int = 16, growth: int = 8, layers=(3, 3, 3)
    ) -> None:
        super().__init__()
        feats = [nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False)]
        c = stem
        for i, n in enumerate(layers):
            for _ in range(n):
                feats.append(DenseLayer(c, growth))
                c += growth
            if i != len(layers) - 1:
                feats.append(Transition(c, c // 2))
                c //= 2
        feats += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def densenet_style(num_classes: int = 10) -> nn.Module:
    return _build(DenseNetStyle, 1210, num_classes)


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        layers = []
        if expand != 1:
            layers += [
                nn.Conv2d(in_ch, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2Style(nn.Module):
    # (expansion, out_channels, repeats, first stride)
    SETTINGS = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 2, 1))

    def __init__(self, num_classes: int = 10, stem: int = 16, head: int = 64) -> None:
        super().__init__()
        feats = [
            nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU6(inplace=True),
        ]
        c = stem
        for t, out, n, s in self.SETTINGS:
            for i in range(n):
                feats.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        feats += [nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(x)


def mobilenetv2_style(num_classes: int = 10) -> nn.Module:
    return _build(MobileNetV2Style, 2002, num_classes)


# --------------------------------------------------------------------------- SiLU + SE


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(ch, reduced, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(reduced, ch, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * s


class SiLUSENet(nn.Module):
    """Conv+BN+SiLU, squeeze-excitation, F.pad(asymmetric)+Conv s2+LeakyReLU, Conv+Hardswish."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.SiLU()
        self.se = SqueezeExcite(16, 4)
        self.conv2 = nn.Conv2d(16, 24, 3, stride=2, padding=0)
        self.act2 = nn.LeakyReLU(0.1)
        self.conv3 = nn.Conv2d(24, 32, 3, padding=1)
        self.act3 = nn.Hardswish()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.act1(self.bn1(self.conv1(x))))
        x = F.pad(x, (0, 1, 0, 1))  # TF-"SAME"-like: extra column right, extra row bottom
        x = self.act2(self.conv2(x))
        x = self.act3(self.conv3(x))
        return self.fc(self.pool(x).flatten(1))


def silu_se_net(num_classes: int = 10) -> nn.Module:
    return _build(SiLUSENet, 5151, num_classes)


# --------------------------------------------------------------------------- 1-D CNN


class CNN1D(nn.Module):
    """1-D CNN on [B, 4, L]: includes a Conv1d with stride 2 and dilation 2."""

    def __init__(self, num_classes: int = 5, in_channels: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, 16, 5, padding=2, bias=False),
            nn.BatchNorm1d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 3, stride=2, dilation=2, padding=2, bias=False),
            nn.BatchNorm1d(32),
            nn.ReLU(inplace=True),
            nn.Conv1d(32, 32, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def cnn1d(num_classes: int = 5) -> nn.Module:
    return _build(CNN1D, 1001, num_classes)


# --------------------------------------------------------------------------- registry

REFERENCE_NETS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "vgg16_style": (vgg16_style, (3, 64, 64)),
    "resnet50_style": (resnet50_style, (3, 64, 64)),
    "densenet_style": (densenet_style, (3, 64, 64)),
    "mobilenetv2_style": (mobilenetv2_style, (3, 64, 64)),
    "silu_se_net": (silu_se_net, (3, 64, 64)),
    "cnn1d": (cnn1d, (4, 64)),
}


# --------------------------------------------------------------------------- export


def export_onnx(model: nn.Module, example: torch.Tensor, dynamo: bool) -> onnx.ModelProto:
    """Export `model` to an in-memory ``ModelProto`` (input "input", output "logits", dynamic
    batch) with the TorchScript exporter (opset 17) or the dynamo one (opset 18)."""
    from tsgb_onnx.io.export import from_torch

    return from_torch(model, example, dynamo=dynamo)

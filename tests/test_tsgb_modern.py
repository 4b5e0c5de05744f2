"""TSGB on nets with LayerNorm, GELU and attention (ConvNeXt / MobileViT-style blocks).

What TSGB does there (README "What is supported", docs/methods_baselines.md): its rules
replace Conv (eq. 3-5), the final linear layer (eq. 1-2), BatchNorm-style normalisations
(eq. 6) and AveragePool; every other layer — LayerNormalization, Gelu/Erf, the attention's
MatMuls and Softmax, the token MLP's MatMuls — keeps the exact gradient, as the paper does for
"other layers". The oracle is tests/tsgb_reference.py in float64: its modules swap only Conv,
BN, AvgPool and the final Linear, so PyTorch's own autograd runs every other layer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from tsgb_reference import tsgb_saliency

from tsgb_onnx import Explainer
from tsgb_onnx.io.export import from_torch


class Attention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = dim**-0.5

    def forward(self, tokens):
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return self.proj(weights @ v)


class ModernNet(nn.Module):
    """Conv stem (BN, ReLU) → ConvNeXt block (depthwise conv, LayerNorm, GELU MLP, residual)
    → attention over the spatial tokens → token mean → LayerNorm → the final Linear."""

    def __init__(self, classes: int = 5, dim: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim))
        self.act = nn.ReLU()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.act(self.stem(x))
        y = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC, ConvNeXt-style
        x = x + self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, C]
        tokens = tokens + self.attn(self.attn_norm(tokens))
        return self.head(self.head_norm(tokens.mean(dim=1)))


@pytest.fixture(scope="module")
def modern():
    torch.manual_seed(0)
    model = ModernNet().eval()
    with torch.no_grad():
        bn = model.stem[1]
        bn.running_mean.copy_(torch.randn(8) * 0.1)
        bn.running_var.copy_(torch.rand(8) + 0.5)
        for norm in (model.norm, model.attn_norm, model.head_norm):
            norm.weight.copy_(1 + 0.2 * torch.randn(8))
            norm.bias.copy_(0.1 * torch.randn(8))
    return model, from_torch(model, torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
@pytest.mark.parametrize("alpha", [0.8, 1.0])
def test_tsgb_keeps_the_exact_gradient_outside_its_layers(modern, backend, alpha):
    model, proto = modern
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    target = [3, 0]
    result = Explainer(proto, method="tsgb", alpha=alpha, backend=backend).explain(x, target)
    expected, signal = tsgb_saliency(model.double(), x.astype(np.float64), target, alpha=alpha)
    model.float()
    assert np.abs(expected).max() > 0 and np.isfinite(result.saliency).all()
    assert np.abs(result.saliency - expected).max() <= 1e-4 * np.abs(expected).max()
    assert np.abs(result.signal - signal).max() <= 1e-4 * np.abs(signal).max()


def test_only_the_final_linear_layer_gets_tsgb_fc(modern):
    _, proto = modern
    program = Explainer(proto, method="tsgb").program()
    fc = [s.node.name for s in program.steps if s.rule.label == "tsgb._tsgb_fc"]
    linear = [s for s in program.steps if s.node.op_type in ("Gemm", "MatMul")]
    assert len(fc) == 1 and len(linear) > 1
    assert fc[0] == linear[0].node.name  # the step nearest the logits
    for step in program.steps:
        if step.node.op_type in ("LayerNormalization", "Softmax", "Erf", "Gelu"):
            assert step.rule.label.startswith("gradient."), step.rule.label

"""Independent references for the baseline rule sets.

* `modified_relu_saliency`: guided backprop / deconvnet in PyTorch, with the ReLU and ReLU6
  modules of a (deep-copied) model swapped for custom autograd functions.
* `small_mlp` / `small_convnet`: tiny ONNX classifiers built with `onnx.helper`, and
  `mlp_*` / `convnet_*` oracles computing EBP, contrastive EBP and LRP-epsilon on them with
  dense matrices in float64 NumPy (convolutions turned into matrices by PyTorch), one layer
  at a time, straight from the papers' formulas.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx_builders import make_model, node


# == guided backprop / deconvnet in PyTorch =====================================================
class _Rectifier(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, upper, mode):
        ctx.save_for_backward(x)
        ctx.upper, ctx.mode = upper, mode
        return x.clamp(min=0) if upper is None else x.clamp(0, upper)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        positive = g.clamp(min=0)
        if ctx.mode == "deconvnet":
            return positive, None, None
        inside = x > 0
        if ctx.upper is not None:
            inside = inside & (x < ctx.upper)
        return positive * inside.to(g.dtype), None, None


class _Swapped(nn.Module):
    def __init__(self, upper, mode):
        super().__init__()
        self.upper, self.mode = upper, mode

    def forward(self, x):
        return _Rectifier.apply(x, self.upper, self.mode)


def _swap(module: nn.Module, mode: str) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU6):
            setattr(module, name, _Swapped(6.0, mode))
        elif isinstance(child, nn.ReLU):
            setattr(module, name, _Swapped(None, mode))
        else:
            _swap(child, mode)


def modified_relu_saliency(model: nn.Module, x: np.ndarray, target, mode: str):
    """(saliency sum_c G*X, signal G) of guided backprop or deconvnet for each row."""
    model = copy.deepcopy(model).eval()
    _swap(model, mode)
    xt = torch.tensor(x, requires_grad=True)
    logits = model(xt)
    seed = torch.zeros_like(logits)
    seed[torch.arange(len(x)), torch.as_tensor(target)] = 1
    (grad,) = torch.autograd.grad(logits, xt, seed)
    return (grad * xt).sum(1).detach().numpy(), grad.numpy()


# == tiny hand-checked MLP ======================================================================
MLP = dict(
    w1=np.array([[1.0, -1.0], [0.5, 2.0], [-1.0, 1.0]], np.float32),
    b1=np.array([0.1, -0.2], np.float32),
    w2=np.array([[1.0, -2.0], [-1.0, 1.0]], np.float32),
    b2=np.array([0.0, 0.5], np.float32),
)


def small_mlp(matmul: bool = False):
    """x[1,3] -> Gemm(w1, b1) -> Relu -> Gemm(w2, b2) -> Y; with `matmul` each Gemm is a
    MatMul plus a bias Add."""
    if matmul:
        nodes = [
            node("MatMul", ["X", "w1"], ["m1"]),
            node("Add", ["m1", "b1"], ["h0"]),
            node("Relu", ["h0"], ["h"]),
            node("MatMul", ["h", "w2"], ["m2"]),
            node("Add", ["m2", "b2"], ["Y"]),
        ]
    else:
        nodes = [
            node("Gemm", ["X", "w1", "b1"], ["h0"]),
            node("Relu", ["h0"], ["h"]),
            node("Gemm", ["h", "w2", "b2"], ["Y"]),
        ]
    return make_model(nodes, (1, 3), MLP)


NORM = dict(mean=np.array([0.5, -1.0, 0.25], np.float32), std=np.array([2.0, 0.5, 1.0], np.float32))


def normalised_mlp():
    """`small_mlp` behind in-model input normalisation: (x - mean) / std."""
    nodes = [
        node("Sub", ["X", "mean"], ["xc"]),
        node("Div", ["xc", "std"], ["xn"]),
        node("Gemm", ["xn", "w1", "b1"], ["h0"]),
        node("Relu", ["h0"], ["h"]),
        node("Gemm", ["h", "w2", "b2"], ["Y"]),
    ]
    return make_model(nodes, (1, 3), {**MLP, **NORM})


# == a small conv net and its dense oracles =====================================================
def convnet_params(seed: int = 0, bias: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    p = dict(
        w1=rng.normal(size=(4, 2, 3, 3)),
        b1=rng.normal(size=4) * 0.3 * bias,
        scale=rng.uniform(0.5, 1.5, size=4),
        beta=rng.normal(size=4) * 0.3 * bias,
        mean=rng.normal(size=4) * 0.3 * bias,
        var=rng.uniform(0.5, 1.5, size=4),
        w2=rng.normal(size=(4, 4, 3, 3)) * 0.5,
        w3=rng.normal(size=(4, 5)),
        b3=rng.normal(size=5) * 0.3 * bias,
    )
    return {k: v.astype(np.float32) for k, v in p.items()}


def small_convnet(p: dict, batch: int = 2):
    """x[B,2,6,6] -> Conv(w1,b1) -> BN -> Relu =r1 -> Conv(w2) + r1 -> Relu -> AvgPool 2/2
    -> MaxPool 2/1 -> GlobalAveragePool -> Flatten -> Gemm(w3, b3) -> Y[B,5]."""
    nodes = [
        node("Conv", ["X", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        node("BatchNormalization", ["c1", "scale", "beta", "mean", "var"], ["n1"], epsilon=1e-5),
        node("Relu", ["n1"], ["r1"]),
        node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        node("Add", ["c2", "r1"], ["a"]),
        node("Relu", ["a"], ["r2"]),
        node("AveragePool", ["r2"], ["pl"], kernel_shape=[2, 2], strides=[2, 2]),
        node("MaxPool", ["pl"], ["mx"], kernel_shape=[2, 2], strides=[1, 1]),
        node("GlobalAveragePool", ["mx"], ["g"]),
        node("Flatten", ["g"], ["f"]),
        node("Gemm", ["f", "w3", "b3"], ["Y"]),
    ]
    return make_model(nodes, (batch, 2, 6, 6), p)


def _conv_matrix(w, shape, pad):
    """Dense [out, in] matrix of a Conv (no bias) on inputs of `shape` [C, H, W]."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape((n,) + tuple(shape))
    cols = F.conv2d(basis, torch.tensor(w, dtype=torch.float64), padding=pad)
    return cols.reshape(n, -1).T.numpy(), tuple(cols.shape[1:])


def _pool_matrix(channels, size, k, stride):
    """Dense matrix of an average pool (no padding) on [channels, size, size]."""
    out = (size - k) // stride + 1
    a = np.zeros((channels * out * out, channels * size * size))
    for c in range(channels):
        for i in range(out):
            for j in range(out):
                for di in range(k):
                    for dj in range(k):
                        a[
                            (c * out + i) * out + j,
                            (c * size + i * stride + di) * size + j * stride + dj,
                        ] = 1.0 / (k * k)
    return a, out


def _maxpool_winners(v, channels, size, k, stride):
    """Flat input index of each window's maximum (first on ties), and the pooled values."""
    out = (size - k) // stride + 1
    grid = v.reshape(channels, size, size)
    winners, values = [], []
    for c in range(channels):
        for i in range(out):
            for j in range(out):
                window = grid[c, i * stride : i * stride + k, j * stride : j * stride + k]
                di, dj = np.unravel_index(np.argmax(window), window.shape)
                winners.append((c * size + i * stride + di) * size + j * stride + dj)
                values.append(window[di, dj])
    return np.array(winners), np.array(values), out


def _convnet_forward(p, xrow):
    d = {k: v.astype(np.float64) for k, v in p.items()}
    a1, _ = _conv_matrix(d["w1"], (2, 6, 6), 1)
    a2, _ = _conv_matrix(d["w2"], (4, 6, 6), 1)
    per = 36
    f = dict(x=xrow.astype(np.float64).reshape(-1), a1=a1, a2=a2)
    f["b1"] = np.repeat(d["b1"], per)
    f["c1"] = a1 @ f["x"] + f["b1"]
    gain = d["scale"] / np.sqrt(d["var"] + 1e-5)
    f["gain"] = np.repeat(gain, per)
    f["n1"] = f["gain"] * (f["c1"] - np.repeat(d["mean"], per)) + np.repeat(d["beta"], per)
    f["r1"] = np.maximum(f["n1"], 0)
    f["c2"] = a2 @ f["r1"]
    f["a"] = f["c2"] + f["r1"]
    f["r2"] = np.maximum(f["a"], 0)
    f["apool"], size = _pool_matrix(4, 6, 2, 2)
    f["pl"] = f["apool"] @ f["r2"]
    f["win"], f["mx"], out = _maxpool_winners(f["pl"], 4, size, 2, 1)
    f["agap"], _ = _pool_matrix(4, out, out, 1)
    f["g"] = f["agap"] @ f["mx"]
    f["wt"], f["b3"] = d["w3"].T, d["b3"]
    f["y"] = f["wt"] @ f["g"] + f["b3"]
    return f


def _ebp_layer(a, x_in, p_out, negate=False):
    """P[x] = |x| * A+^T (P[y] / (A+ |x|)) (zero where the excitation is zero)."""
    a_pos = np.maximum(-a if negate else a, 0)
    z = a_pos @ np.abs(x_in)
    q = np.divide(p_out, z, out=np.zeros_like(z), where=z > 0)
    return np.abs(x_in) * (a_pos.T @ q)


def _winners_back(winners, size, r_out):
    r_in = np.zeros(size)
    np.add.at(r_in, winners, r_out)
    return r_in


def convnet_ebp(p, x, target, contrastive=False):
    """EBP (or contrastive EBP) probability at the input, [B, 2, 6, 6]."""
    rows = []
    for xrow, t in zip(x, target):
        f = _convnet_forward(p, xrow)
        seed = np.eye(5)[t]
        pg = _ebp_layer(f["wt"], f["g"], seed)
        if contrastive:
            pg = pg - _ebp_layer(f["wt"], f["g"], seed, negate=True)
        pmx = _ebp_layer(f["agap"], f["mx"], pg)
        ppl = _winners_back(f["win"], f["pl"].size, pmx)
        pa = _ebp_layer(f["apool"], f["r2"], ppl)  # Relu: the unit's probability passes
        both = np.abs(f["c2"]) + np.abs(f["r1"])
        share = np.divide(pa, both, out=np.zeros_like(both), where=both > 0)
        pc2, pr1 = np.abs(f["c2"]) * share, np.abs(f["r1"]) * share
        pr1 = pr1 + _ebp_layer(f["a2"], f["r1"], pc2)
        rows.append(_ebp_layer(f["a1"], f["x"], pr1))  # BN and Relu pass the unit's share
    return np.stack(rows).reshape(x.shape)


def _stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _lrp_layer(a, bias, x_in, r_out, eps):
    """R[x] = x * A^T (R[y] / (A x + b + eps sgn))."""
    return x_in * (a.T @ (r_out / _stab(a @ x_in + bias, eps)))


def convnet_lrp(p, x, target, eps):
    """LRP-epsilon relevance at the input, [B, 2, 6, 6]."""
    rows = []
    for xrow, t in zip(x, target):
        f = _convnet_forward(p, xrow)
        ry = np.eye(5)[t] * f["y"]
        rg = _lrp_layer(f["wt"], f["b3"], f["g"], ry, eps)
        rmx = _lrp_layer(f["agap"], 0.0, f["mx"], rg, eps)
        rpl = _winners_back(f["win"], f["pl"].size, rmx)
        ra = _lrp_layer(f["apool"], 0.0, f["r2"], rpl, eps)
        ratio = ra / _stab(f["a"], eps)
        rc2, rr1 = f["c2"] * ratio, f["r1"] * ratio
        rr1 = rr1 + _lrp_layer(f["a2"], 0.0, f["r1"], rc2, eps)
        rc1 = f["c1"] * f["gain"] * rr1 / _stab(f["n1"], eps)  # BN: z = n1, bias included
        rows.append(_lrp_layer(f["a1"], f["b1"], f["x"], rc1, eps))
    return np.stack(rows).reshape(x.shape)


def convnet_logits(p, x):
    return np.stack([_convnet_forward(p, row)["y"] for row in x])


def gap_top_net():
    """x[1,2,6,6] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Y: no linear top."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    nodes = [
        node("Conv", ["X", "w"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        node("Relu", ["c"], ["r"]),
        node("GlobalAveragePool", ["r"], ["g"]),
        node("Flatten", ["g"], ["Y"]),
    ]
    return make_model(nodes, (1, 2, 6, 6), {"w": w})


def relu_top_net():
    """x[1,3] -> Gemm -> Relu -> Y: the logits come out of a Relu."""
    nodes = [node("Gemm", ["X", "w1", "b1"], ["h"]), node("Relu", ["h"], ["Y"])]
    return make_model(nodes, (1, 3), {"w1": MLP["w1"], "b1": MLP["b1"]})


__all__ = [
    "MLP",
    "NORM",
    "normalised_mlp",
    "convnet_ebp",
    "convnet_logits",
    "convnet_lrp",
    "convnet_params",
    "gap_top_net",
    "modified_relu_saliency",
    "relu_top_net",
    "small_convnet",
    "small_mlp",
]

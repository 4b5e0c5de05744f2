"""Independent TSGB reference (SPEC §1) in PyTorch: custom autograd functions on modules.

`tsgb_saliency(model, x, target, alpha, reference_compat)` swaps Conv, BatchNorm, the final
Linear and AvgPool modules of a (deep-copied) PyTorch model for modules whose backward is
the TSGB rule, written with PyTorch's own convolutions — not with the engine's code.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-10


def div_stab(a, d):
    return a / (d + EPS * torch.where(d >= 0, 1.0, -1.0).to(d.dtype))


_CONV_INPUT_GRAD = {
    1: torch.nn.grad.conv1d_input,
    2: torch.nn.grad.conv2d_input,
    3: torch.nn.grad.conv3d_input,
}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _TsgbConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, conv, groups):
        y = conv._conv_forward(x, conv.weight, conv.bias)  # zero padding as its attributes say
        ctx.x, ctx.y = x.detach().clone(), y.detach().clone()  # later in-place ops keep off
        ctx.conv, ctx.groups = conv, groups
        return y

    @staticmethod
    def backward(ctx, gy):
        x, y = ctx.x, ctx.y
        conv, g = ctx.conv, ctx.groups
        nd = x.dim() - 2
        b, m, n = x.shape[0], x.shape[1], y.shape[1]
        kernel = conv.weight.shape[2:]
        ones = torch.ones((g, 1) + tuple(kernel), dtype=x.dtype)
        geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=g)
        relevance = (y * gy).reshape(b, g, n // g, *y.shape[2:]).sum(2)
        mass = x.abs().reshape(b, g, m // g, *x.shape[2:]).sum(2)
        denominator = _CONV[nd](mass, ones, **geometry)
        ratio = div_stab(relevance, denominator)
        spread = _CONV_INPUT_GRAD[nd]((b, g) + tuple(x.shape[2:]), ones, ratio, **geometry)
        gx = x.sign().reshape(b, g, m // g, *x.shape[2:]) * spread.unsqueeze(2)
        return gx.reshape(x.shape), None, None


def _tf_same_pads(x, conv):
    """F.pad amounts of TF "SAME" padding (last axis first, as F.pad wants)."""
    pads = []
    for size, k, s, d in reversed(
        list(zip(x.shape[2:], conv.kernel_size, conv.stride, conv.dilation))
    ):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return pads


class TsgbConv(nn.Module):
    """A Conv (or a subclass that pads TF-"SAME" style in its forward) with TSGB backward."""

    def __init__(self, conv, reference_compat):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise NotImplementedError("reference handles zero, explicit padding only")
        self.conv = conv
        self.same = type(conv).forward not in (
            nn.Conv1d.forward,
            nn.Conv2d.forward,
            nn.Conv3d.forward,
        )
        self.groups = 1 if reference_compat else conv.groups

    def forward(self, x):
        if self.same:  # the padding is its own op (exact gradient), as in the ONNX graph
            x = F.pad(x, _tf_same_pads(x, self.conv))
        return _TsgbConvFn.apply(x, self.conv, self.groups)


class _Eq6Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, module):
        y = module(x)
        ctx.x, ctx.y = x.detach().clone(), y.detach().clone()
        return y

    @staticmethod
    def backward(ctx, gy):
        return gy * div_stab(ctx.y, ctx.x), None


class Eq6(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return _Eq6Fn.apply(x, self.module)


class _AvgPoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pool):
        y = pool(x)
        ctx.x, ctx.y = x.detach().clone(), y.detach().clone()
        ctx.pool = pool
        return y

    @staticmethod
    def backward(ctx, gy):
        x, y = ctx.x, ctx.y
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            out = ctx.pool(xr)
            (exact,) = torch.autograd.grad(out, xr, gy)
            xr2 = x.detach().requires_grad_(True)
            out2 = ctx.pool(xr2)
            (scaled,) = torch.autograd.grad(out2, xr2, gy * y)
        negative = (x < 0).flatten(1).any(1).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(negative, div_stab(scaled, x), exact), None


class TsgbAvgPool(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        return _AvgPoolFn.apply(x, self.pool)


class _FcFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, linear, alpha, compat):
        ctx.x = x.detach().clone()
        ctx.linear, ctx.alpha, ctx.compat = linear, alpha, compat
        return linear(x)

    @staticmethod
    def backward(ctx, gy):
        x = ctx.x
        w = ctx.linear.weight.detach()  # [O, I]
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
        p = x @ w_pos.t()
        n = (x @ w_neg.t()).abs() if ctx.compat else x.abs() @ w_neg.abs().t()
        e = ctx.alpha * div_stab(p, n)
        return gy @ w_pos + (e * gy) @ w_neg, None, None, None


class TsgbLinear(nn.Module):
    def __init__(self, linear, alpha, compat):
        super().__init__()
        self.linear, self.alpha, self.compat = linear, alpha, compat

    def forward(self, x):
        return _FcFn.apply(x, self.linear, self.alpha, self.compat)


def fold_conv_bn(model: nn.Module, example) -> nn.Module:
    """Fold every BatchNorm whose input is a Conv's output into that Conv, as exporters do.

    Pairs are found on a dry run: a BN module called on the very tensor a Conv returned.
    """
    producers, pairs = {}, []
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    bns = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

    def hook(module, inputs, output):
        if isinstance(module, convs):
            producers[id(output)] = (module, output)  # holding `output` keeps its id unique
        elif isinstance(module, bns) and id(inputs[0]) in producers:
            conv, produced = producers[id(inputs[0])]
            if produced is inputs[0]:
                pairs.append((conv, module))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, convs + bns)]
    with torch.no_grad():
        model(torch.as_tensor(example))
    for h in handles:
        h.remove()
    example = torch.as_tensor(example)
    with torch.no_grad():
        before = model(example)
    for conv, bn in pairs:  # keep a fold only if the outputs do not change: a conv whose
        saved = (conv.weight.detach().clone(), conv.bias)  # output has other consumers stays
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        with torch.no_grad():
            conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
        bn.forward = lambda t: t  # the BN is now inside the conv
        with torch.no_grad():
            after = model(example)
        if not torch.allclose(after, before, rtol=1e-4, atol=1e-5 * before.abs().max()):
            with torch.no_grad():
                conv.weight.copy_(saved[0])
            conv.bias = saved[1]
            del bn.forward
    return model


def tsgb_model(
    model: nn.Module, alpha: float = 1.0, reference_compat: bool = False, fold_example=None
) -> nn.Module:
    """A deep copy of `model` whose backward pass is TSGB (Conv→BN folded if an example given)."""
    model = copy.deepcopy(model).eval()
    if fold_example is not None:
        model = fold_conv_bn(model, fold_example)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    final_linear = linears[-1][1] if linears else None

    def swap(parent):
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                setattr(parent, name, TsgbConv(child, reference_compat))
            elif isinstance(
                child, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
            ) and "forward" in vars(child):
                continue  # folded into its conv
            elif isinstance(
                child,
                (
                    nn.BatchNorm1d,
                    nn.BatchNorm2d,
                    nn.BatchNorm3d,
                    nn.LocalResponseNorm,
                    nn.InstanceNorm2d,
                ),
            ):
                setattr(parent, name, Eq6(child))
            elif isinstance(child, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
                setattr(parent, name, TsgbAvgPool(child))
            elif child is final_linear:
                setattr(parent, name, TsgbLinear(child, alpha, reference_compat))
            else:
                swap(child)

    swap(model)
    return model


def tsgb_saliency(
    model: nn.Module,
    x,
    target,
    alpha: float = 1.0,
    reference_compat: bool = False,
    fold_bn: bool = True,
):
    """(saliency [B, *spatial], signal at the input) of the TSGB reference.

    `fold_bn` folds Conv→BN pairs first, as both PyTorch exporters do: TSGB is invariant
    to that folding except where a conv output is exactly 0 and its BN output is not.
    """
    ref = tsgb_model(model, alpha, reference_compat, fold_example=x if fold_bn else None)
    xt = torch.as_tensor(x).clone().requires_grad_(True)
    logits = ref(xt)
    seed = torch.zeros_like(logits)
    seed[torch.arange(len(target)), torch.as_tensor(target)] = 1
    logits.backward(seed)
    signal = xt.grad.detach()
    return (signal * xt.detach()).sum(1).numpy(), signal.numpy()

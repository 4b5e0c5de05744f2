"""Grad-CAM, FullGrad, DeepLIFT (rescale) and the SmoothGrad / Integrated Gradients wrappers
against independent computations: PyTorch autograd on the same nets, hand-worked values,
summation-to-delta / completeness, and batches equal to rows explained alone."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nets import init_deterministic
from onnx_builders import make_model, node

from tsgb_onnx import Explainer, MethodError
from tsgb_onnx.io.export import from_torch

TARGETS = [3, 1, 7]


def _close(got, want, tol=1e-4):
    """max|got - want| <= tol * max|want|; returns the relative difference."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.abs(want).max()
    assert scale > 0 and np.isfinite(got).all()
    rel = np.abs(got - want).max() / scale
    assert rel <= tol, rel
    return rel


def _no_inplace(model):
    """A copy of `model` without in-place activations, so that autograd reads the gradient
    of a module's own output (an in-place ReLU after it would overwrite that tensor)."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return model


def _autograd(model, modules, x, targets):
    """(logits, x, grad_x, [(output, grad) of each module]) for the sum of the target logits
    (rows are independent in eval mode, so each row gets its own target's gradient)."""
    store = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, k=k: store.__setitem__(k, out))
        for k, m in enumerate(modules)
    ]
    try:
        xt = torch.tensor(x, requires_grad=True)
        logits = model(xt)
    finally:
        for h in hooks:
            h.remove()
    picked = logits[torch.arange(len(targets)), torch.as_tensor(targets)].sum()
    outs = [store[k] for k in range(len(modules))]
    grads = torch.autograd.grad(picked, [xt] + outs)
    return (
        logits.detach(),
        xt.detach(),
        grads[0],
        [(o.detach(), g) for o, g in zip(outs, grads[1:])],
    )


# -- small nets of our own -------------------------------------------------------------------
class SmallNet(nn.Module):
    """Conv(bias) -> act -> BN -> Conv(bias, stride 2) -> act -> GAP -> Linear. The BN
    follows the activation, so the exporter cannot fold it into a Conv: the ONNX graph keeps
    two Conv biases and one BatchNormalization shift (FullGrad's three bias terms)."""

    def __init__(self, act=nn.ReLU):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.a1 = act()
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.a2 = act()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.bn(self.a1(self.c1(x)))
        x = self.a2(self.c2(x))
        return self.fc(x.mean((2, 3)))


def _small(act, seed):
    with torch.random.fork_rng(devices=[]):
        model = init_deterministic(SmallNet(act), seed)
    with torch.no_grad():  # biases large enough to matter next to the weights
        model.c1.bias.mul_(3.0)
        model.c2.bias.mul_(3.0)
    example = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return model, from_torch(model, example)


@pytest.fixture(scope="module")
def relu_net():
    return _small(nn.ReLU, 11)


@pytest.fixture(scope="module")
def smooth_net():
    """Tanh and SiLU: a smooth path integral, for the completeness of Integrated Gradients."""
    return _small(nn.Tanh, 12)


def _x32(batch, seed):
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def _offset_x32(batch, seed):
    """Noise plus a per-image, per-channel offset: the pooled Tanh features move with x."""
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-1.5, 1.5, (batch, 3, 1, 1))
    return (rng.standard_normal((batch, 3, 32, 32)) + shift).astype(np.float32)


def _torch_logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


# -- Grad-CAM ------------------------------------------------------------------------------------
def _gradcam_reference(model, module, x, targets, mode):
    """w_k = spatial mean of dlogit/dA_k, cam = relu(sum_k w_k A_k), upsampled to x."""
    _, _, _, [(a, g)] = _autograd(model, [module], x, targets)
    axes = tuple(range(2, a.ndim))
    cam = F.relu((g.mean(dim=axes, keepdim=True) * a).sum(1, keepdim=True))
    up = F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)
    return up[:, 0].numpy(), g.numpy()


# (net, module whose output is the default CAM layer: the last spatial tensor before pooling)
CAM_NETS = [
    ("resnet50_style", "layer4"),
    ("vgg16_style", "features"),
    ("mobilenetv2_style", "features"),
    ("densenet_style", "features"),
    ("silu_se_net", "act3"),
    ("cnn1d", "features"),
]


@pytest.mark.parametrize("name,module", CAM_NETS)
def test_gradcam_matches_autograd(onnx_zoo, name, module):
    model, proto = onnx_zoo.get(name, False)
    model = _no_inplace(model)
    x = onnx_zoo.example(name, 3, 0).numpy()
    targets = [3, 1, 4]  # cnn1d has 5 classes
    mode = "linear" if x.ndim == 3 else "bilinear"
    want, g = _gradcam_reference(model, getattr(model, module), x, targets, mode)
    result = Explainer(proto, method="gradcam").explain(x, target=targets)
    assert result.saliency.shape == (3,) + x.shape[2:] and list(result.target) == targets
    _close(result.signal, g)  # the signal at the CAM layer: the one the map is built from
    _close(result.saliency, want)
    # rows differ in target: one target for all rows gives other maps
    same, _ = _gradcam_reference(model, getattr(model, module), x, [3, 3, 3], mode)
    assert np.abs(same - want).max() > 1e-3 * np.abs(want).max()


def test_gradcam_explicit_layer(onnx_zoo):
    """layer= (constructor option and explain argument): resnet's layer3 output, the tensor
    the first convolutions of layer4 read (4x4 at 64x64 input)."""
    model, proto = onnx_zoo.get("resnet50_style", False)
    model = _no_inplace(model)
    x = onnx_zoo.example("resnet50_style", 3, 1).numpy()
    ex = Explainer(proto, method="gradcam")
    layer3 = next(n for n in ex.graph.nodes if n.op_type == "Conv" and "layer4" in n.name).inputs[0]
    want, g = _gradcam_reference(model, model.layer3, x, TARGETS, "bilinear")
    assert g.shape[2:] == (4, 4)
    by_option = Explainer(proto, method="gradcam", layer=layer3).explain(x, TARGETS)
    by_call = ex.explain(x, TARGETS, layer=layer3)
    for result in (by_option, by_call):
        assert result.layer == layer3
        _close(result.saliency, want)
    default, _ = _gradcam_reference(model, model.layer4, x, TARGETS, "bilinear")
    assert np.abs(default - want).max() > 1e-2 * np.abs(want).max()


# -- FullGrad ------------------------------------------------------------------------------------
def _normalise(a):
    """|a|, minus its per-image minimum, over (per-image maximum + 1e-6)."""
    a = a.abs().double()
    lo = a.flatten(1).min(1)[0].view(-1, *([1] * (a.ndim - 1)))
    a = a - lo
    hi = a.flatten(1).max(1)[0].view(-1, *([1] * (a.ndim - 1)))
    return a / (hi + 1e-6)


def _bn_shift(bn):
    return (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()


def _fullgrad_reference(model, biased, x, targets):
    """|x * grad| normalised, plus each (module, bias b): |dlogit/dz * b| normalised,
    upsampled (bilinear, align_corners=True) to the input size; summed over channels."""
    _, xt, gx, taken = _autograd(model, [m for m, _ in biased], x, targets)
    total = _normalise(xt * gx).sum(1)
    for (_, g), (_, b) in zip(taken, biased):
        term = _normalise(g * b.view(1, -1, 1, 1))
        total += F.interpolate(term, size=x.shape[2:], mode="bilinear", align_corners=True).sum(1)
    return total.numpy()


def test_fullgrad_matches_autograd_on_small_net(relu_net):
    model, proto = relu_net
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 2 and ops.count("BatchNormalization") == 1  # nothing folded
    x = _x32(3, 0)
    targets = [0, 3, 2]
    biased = [
        (model.c1, model.c1.bias.detach()),
        (model.bn, _bn_shift(model.bn)),
        (model.c2, model.c2.bias.detach()),
    ]
    want = _fullgrad_reference(model, biased, x, targets)
    got = Explainer(proto, method="fullgrad").explain(x, target=targets)
    assert got.saliency.shape == (3, 32, 32)
    _close(got.saliency, want)
    # each bias term matters: without the (16x16, upsampled) c2 term the map is another one
    partial = _fullgrad_reference(model, biased[:2], x, targets)
    assert np.abs(partial - want).max() > 1e-2 * np.abs(want).max()


@pytest.mark.parametrize("name,kept", [("resnet50_style", 0), ("densenet_style", 12)])
def test_fullgrad_matches_autograd_on_reference_nets(onnx_zoo, name, kept):
    """Every BN's shift, with z the BN's output: ResNet's Conv + BN pairs are folded into
    Conv biases by the exporter (terms at 32, 16, 8, 4 and 2 pixels, upsampled to 64);
    DenseNet keeps the BNs that read a Concat (or the stem) as BatchNormalization nodes and
    folds the ones after a 1x1 Conv."""
    model, proto = onnx_zoo.get(name, False)
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == kept
    model = _no_inplace(model)
    x = onnx_zoo.example(name, 2, 2).numpy()
    biased = [(m, _bn_shift(m)) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    want = _fullgrad_reference(model, biased, x, [6, 2])
    got = Explainer(proto, method="fullgrad").explain(x, target=[6, 2])
    _close(got.saliency, want)


# -- DeepLIFT (rescale rule) --------------------------------------------------------------------
# x[2] -> Gemm(W1, b1) -> Relu -> Gemm(W2, b2) -> logits[2]
#   W1 = [[1, -1], [1, 2]] (rows: inputs), b1 = [-1, 1]: z = [x1 + x2 - 1, -x1 + 2 x2 + 1]
#   W2 = [[1, 2], [-1, 1]] (rows: hidden), b2 = [.5, 0]: logits = [h1 - h2 + .5, 2 h1 + h2]
# x = [1, 2]: z = [2, 4], h = [2, 4], logits = [-1.5, 8].
# Baseline 0: z0 = [-1, 1], h0 = [0, 1], logits0 = [-.5, 1].
#   Rescale multipliers m = dh / dz = [2/3, 3/3] (the gradient would be [1, 1]).
#   target 0: dlogit/dh = [1, -1] -> at z [2/3, -1] -> at x W1 @ that = [5/3, -4/3];
#             times (x - x0) = [5/3, -8/3], sum -1 = -1.5 - (-.5).
#   target 1: dlogit/dh = [2, 1] -> at z [4/3, 1] -> at x [1/3, 10/3]; times x: [1/3, 20/3],
#             sum 7 = 8 - 1.
# Baseline [2, -1]: z0 = [0, -3], h0 = [0, 0], logits0 = [.5, 0]; dz = [2, 7], dh = [2, 4],
#   m = [1, 4/7]; x - x0 = [-1, 3].
#   target 0: at z [1, -4/7] -> at x [11/7, -1/7]; times (x - x0) = [-11/7, -3/7], sum -2.
#   target 1: at z [2, 4/7] -> at x [10/7, 22/7]; times (x - x0) = [-10/7, 66/7], sum 8.
HAND_MLP = dict(
    w1=np.array([[1.0, -1.0], [1.0, 2.0]], np.float32),
    b1=np.array([-1.0, 1.0], np.float32),
    w2=np.array([[1.0, 2.0], [-1.0, 1.0]], np.float32),
    b2=np.array([0.5, 0.0], np.float32),
)
X_HAND = np.array([[1.0, 2.0], [1.0, 2.0]], np.float32)
HAND_EXPECTED = {  # baseline -> (attribution rows for targets [0, 1])
    0.0: [[5 / 3, -8 / 3], [1 / 3, 20 / 3]],
    (2.0, -1.0): [[-11 / 7, -3 / 7], [-10 / 7, 66 / 7]],
}


def _hand_mlp():
    nodes = [
        node("Gemm", ["X", "w1", "b1"], ["z"]),
        node("Relu", ["z"], ["h"]),
        node("Gemm", ["h", "w2", "b2"], ["Y"]),
    ]
    return make_model(nodes, (2, 2), HAND_MLP)


@pytest.mark.parametrize("baseline", list(HAND_EXPECTED), ids=["zero", "nonzero"])
def test_deeplift_hand_worked_mlp(baseline):
    x0 = np.broadcast_to(np.asarray(baseline, np.float32), X_HAND.shape)
    result = Explainer(
        _hand_mlp(), method="deeplift", baseline=np.asarray(baseline, np.float32)
    ).explain(X_HAND, target=[0, 1])
    attribution = result.signal * (X_HAND - x0)
    np.testing.assert_allclose(attribution, HAND_EXPECTED[baseline], atol=1e-5)
    np.testing.assert_allclose(result.saliency, attribution.sum(1), atol=1e-5)
    np.testing.assert_allclose(
        result.saliency, [-1.0, 7.0] if baseline == 0.0 else [-2.0, 8.0], atol=1e-5
    )
    # the rescale rule is at work: the gradient (input x gradient) gives other values
    plain = Explainer(_hand_mlp(), method="gradient").explain(X_HAND, target=[0, 1])
    assert np.abs(plain.signal * (X_HAND - x0) - attribution).max() > 0.1


class _Rescale(torch.autograd.Function):
    """ReLU whose backward is DeepLIFT's multiplier (relu(z) - relu(z0)) / (z - z0),
    the derivative where |z - z0| <= 1e-6."""

    @staticmethod
    def forward(ctx, z, z0):
        ctx.save_for_backward(z, z0)
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        z, z0 = ctx.saved_tensors
        dz = z - z0
        apart = dz.abs() > 1e-6
        ratio = (z.clamp(min=0) - z0.clamp(min=0)) / torch.where(apart, dz, torch.ones_like(dz))
        return g * torch.where(apart, ratio, (z > 0).to(g.dtype)), None


def _deeplift_reference(model, x, x0, targets):
    """DeepLIFT-rescale on SmallNet (ReLU): the reference pass's pre-activations, then
    autograd through `_Rescale`; the map is sum_c multiplier * (x - x0)."""

    def forward(inp, refs=None):
        z1 = model.c1(inp)
        h1 = z1.clamp(min=0) if refs is None else _Rescale.apply(z1, refs[0])
        z2 = model.c2(model.bn(h1))
        h2 = z2.clamp(min=0) if refs is None else _Rescale.apply(z2, refs[1])
        return model.fc(h2.mean((2, 3))), (z1, z2)

    with torch.no_grad():
        _, refs = forward(torch.from_numpy(x0))
    xt = torch.tensor(x, requires_grad=True)
    logits, _ = forward(xt, refs)
    (g,) = torch.autograd.grad(logits[torch.arange(len(targets)), torch.tensor(targets)].sum(), xt)
    return (g * (xt - torch.from_numpy(x0))).sum(1).detach().numpy()


def _baselines(shape):
    return {
        "zero": 0.0,
        "array": (0.7 * np.random.default_rng(9).standard_normal(shape)).astype(np.float32),
    }


@pytest.mark.parametrize("kind", ["zero", "array"])
def test_deeplift_matches_rescale_in_autograd_and_sums_to_delta(relu_net, kind):
    model, proto = relu_net
    x = _x32(3, 1)
    baseline = _baselines((1, 3, 32, 32))[kind]
    x0 = np.ascontiguousarray(np.broadcast_to(np.float32(baseline), x.shape))
    targets = [4, 0, 2]
    result = Explainer(proto, method="deeplift", baseline=baseline).explain(x, target=targets)
    _close(result.saliency, _deeplift_reference(model, x, x0, targets))
    rows = np.arange(3)
    delta = _torch_logits(model, x)[rows, targets] - _torch_logits(model, x0)[rows, targets]
    np.testing.assert_allclose(result.saliency.sum((1, 2)), delta, rtol=1e-4)
    # not the gradient: gradient x (x - x0) misses the delta
    plain = Explainer(proto, method="gradient").explain(x, target=targets).signal * (x - x0)
    assert np.abs(plain.sum((1, 2, 3)) - delta).max() > 1e-3 * np.abs(delta).max()


@pytest.mark.parametrize("kind", ["zero", "array"])
def test_deeplift_sums_to_delta_on_densenet(onnx_zoo, kind):
    """ReLU, BN, Concat, 1x1/3x3 Conv, AveragePool, GAP: no MaxPool and no products of
    signals, so the sum of the map is exactly logit(x) - logit(x0)."""
    model, proto = onnx_zoo.get("densenet_style", False)
    x = onnx_zoo.example("densenet_style", 2, 3).numpy()
    baseline = _baselines((1, 3, 64, 64))[kind]
    x0 = np.ascontiguousarray(np.broadcast_to(np.float32(baseline), x.shape))
    result = Explainer(proto, method="deeplift", baseline=baseline).explain(x, target=[5, 8])
    delta = _torch_logits(model, x)[[0, 1], [5, 8]] - _torch_logits(model, x0)[[0, 1], [5, 8]]
    np.testing.assert_allclose(result.saliency.sum((1, 2)), delta, rtol=1e-4)


# -- SmoothGrad -----------------------------------------------------------------------------------
def _noisy_copies(x, n, sigma, seed):
    """As documented: every row gets default_rng(seed).standard_normal([n, ...]) times
    sigma times its value range (max - min); row b's copies contiguous."""
    noise = np.random.default_rng(seed).standard_normal((n,) + x.shape[1:]).astype(np.float32)
    spread = x.reshape(len(x), -1).max(1) - x.reshape(len(x), -1).min(1)
    out = [x[b] + noise * np.float32(spread[b] * np.float32(sigma)) for b in range(len(x))]
    return np.concatenate(out).astype(np.float32)


def test_smoothgrad_matches_autograd(onnx_zoo):
    model, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 2, 4).numpy()
    n, sigma, seed, targets = 4, 0.2, 7, [4, 9]
    copies = _noisy_copies(x, n, sigma, seed)
    _, xt, gx, _ = _autograd(model, [], copies, np.repeat(targets, n))
    want = (xt * gx).sum(1).view(2, n, 64, 64).mean(1).numpy()
    got = Explainer(proto, method="smoothgrad", n=n, sigma=sigma, seed=seed, batch_size=3).explain(
        x, target=targets
    )
    _close(got.saliency, want)
    _close(got.signal, gx.view(2, n, 3, 64, 64).mean(1).numpy())
    # sigma 0: the plain input x gradient
    _, xt, gx, _ = _autograd(model, [], x, targets)
    zero = Explainer(proto, method="smoothgrad", n=2, sigma=0.0).explain(x, target=targets)
    _close(zero.saliency, (xt * gx).sum(1).numpy())
    assert np.abs(zero.saliency - want).max() > 1e-2 * np.abs(want).max()


def test_smoothgrad_with_tsgb_base_is_the_mean_of_tsgb_maps(onnx_zoo):
    _, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 2, 5).numpy()
    n, sigma, seed, targets = 3, 0.1, 3, [2, 6]
    copies = _noisy_copies(x, n, sigma, seed)
    maps = Explainer(proto, method="tsgb", alpha=0.8).explain(copies, np.repeat(targets, n))
    want = maps.saliency.reshape(2, n, 64, 64).mean(1)
    got = Explainer(
        proto, method="smoothgrad", base="tsgb", alpha=0.8, n=n, sigma=sigma, seed=seed
    ).explain(x, target=targets)
    _close(got.saliency, want)
    other = Explainer(proto, method="smoothgrad", n=n, sigma=sigma, seed=seed).explain(x, targets)
    assert np.abs(other.saliency - want).max() > 1e-2 * np.abs(want).max()


def test_smoothgrad_over_a_map_method_is_the_mean_of_its_maps(onnx_zoo):
    """A map method as base (Grad-CAM: maps upsampled to the input, signals at its layer);
    chunks of 4 rows cut across the images' 3 copies."""
    _, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 3, 8).numpy()
    n, sigma, seed, targets = 3, 0.1, 4, [1, 7, 3]
    copies = _noisy_copies(x, n, sigma, seed)
    each = Explainer(proto, method="gradcam").explain(copies, np.repeat(targets, n))
    maps = each.saliency
    got = Explainer(
        proto, method="smoothgrad", base="gradcam", n=n, sigma=sigma, seed=seed, batch_size=4
    ).explain(x, target=targets)
    _close(got.saliency, maps.reshape((3, n) + maps.shape[1:]).mean(1))
    _close(got.signal, each.signal.reshape((3, n) + each.signal.shape[1:]).mean(1))
    assert np.abs(got.saliency - maps[::n]).max() > 1e-2 * np.abs(maps).max()


# -- Integrated Gradients -----------------------------------------------------------------------
def _ig_reference(model, x, x0, targets, steps):
    """Midpoint rule: gradients at x0 + (k + 1/2)/steps (x - x0), averaged; map
    sum_c (x - x0) * mean gradient."""
    alphas = (np.arange(steps) + 0.5) / steps
    path = np.concatenate([x0 + np.float32(a) * (x - x0) for a in alphas]).astype(np.float32)
    _, _, g, _ = _autograd(model, [], path, np.tile(targets, steps))
    mean = g.view(steps, *x.shape).mean(0).numpy()
    return ((x - x0) * mean).sum(1), mean


def test_integrated_gradients_matches_midpoint_rule(smooth_net):
    """A non-zero array baseline; chunks of 5 rows cut across the images' paths. (A smooth
    net: on ReLU / MaxPool nets a path point can sit at a kink, where ONNX Runtime's and
    PyTorch's float32 rounding choose different sides.)"""
    model, proto = smooth_net
    x = _offset_x32(2, 6)
    baseline = (0.5 * np.random.default_rng(2).standard_normal((1, 3, 32, 32))).astype(np.float32)
    x0 = np.broadcast_to(baseline, x.shape)
    want, mean = _ig_reference(model, x, x0, [1, 4], 6)
    got = Explainer(
        proto, method="integrated_gradients", steps=6, baseline=baseline, batch_size=5
    ).explain(x, target=[1, 4])
    _close(got.signal, mean)
    _close(got.saliency, want)
    assert np.array_equal(got.target, [1, 4])


def test_integrated_gradients_completeness_on_a_smooth_net(smooth_net):
    model, proto = smooth_net
    x = _offset_x32(2, 2)
    targets = [2, 0]
    ex = Explainer(proto, method="integrated_gradients", steps=48)
    got = ex.explain(x, target=targets)
    want, _ = _ig_reference(model, x, np.zeros_like(x), targets, 48)
    _close(got.saliency, want)
    delta = _torch_logits(model, x)[[0, 1], targets] - _torch_logits(model, 0 * x)[[0, 1], targets]
    np.testing.assert_allclose(got.saliency.sum((1, 2)), delta, rtol=2e-3)
    coarse = Explainer(proto, method="integrated_gradients", steps=1).explain(x, target=targets)
    assert (
        np.abs(coarse.saliency.sum((1, 2)) - delta).max()
        > 10 * np.abs(got.saliency.sum((1, 2)) - delta).max()
    )


# -- every method: a batch with per-row targets = its rows explained alone ----------------------
BATCH_METHODS = {
    "gradcam": {},
    "fullgrad": {},
    "deeplift": {"baseline": 0.25},
    "smoothgrad": {"n": 3, "sigma": 0.2, "seed": 5},
    "integrated_gradients": {"steps": 4},
}


@pytest.mark.parametrize("method", list(BATCH_METHODS))
def test_batch_with_mixed_targets_equals_rows_alone(onnx_zoo, method):
    _, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 3, 5).numpy()
    explainer = Explainer(proto, method=method, **BATCH_METHODS[method])
    together = explainer.explain(x, target=[4, 0, 9])
    assert list(together.target) == [4, 0, 9]
    for i, t in enumerate([4, 0, 9]):
        alone = explainer.explain(x[i : i + 1], target=t).saliency[0]
        _close(together.saliency[i], alone, 1e-5)
    same = explainer.explain(x, target=4).saliency
    assert np.abs(same[1:] - together.saliency[1:]).max() > 1e-3 * np.abs(together.saliency).max()


# -- options and errors -------------------------------------------------------------------------
def test_bad_options_raise_method_error(relu_net):
    _, proto = relu_net
    x = _x32(1, 0)
    pooled = next(n for n in proto.graph.node if n.op_type == "Gemm").input[0]  # [B, 8]
    conv = proto.graph.node[0].output[0]

    def raises(match, method, call=None, **options):
        with pytest.raises(MethodError, match=match):
            ex = Explainer(proto, method=method, **options)
            ex.explain(x, 0, **(call or {}))

    raises("n must be an integer >= 1", "smoothgrad", n=0)
    raises("sigma must be a finite number >= 0", "smoothgrad", sigma=float("nan"))
    raises("sigma must be a finite number >= 0", "smoothgrad", sigma=-0.1)
    raises(
        "base must be a method other than the wrappers", "smoothgrad", base="integrated_gradients"
    )
    raises("smoothgrad: method 'gradient' has no option 'alpha'", "smoothgrad", alpha=1.0)
    raises("steps must be an integer >= 1", "integrated_gradients", steps=0)
    raises("baseline holds NaN or Inf", "integrated_gradients", baseline=float("nan"))
    raises(
        "baseline holds NaN or Inf",
        "integrated_gradients",
        baseline=np.full((1, 3, 32, 32), np.inf, np.float32),
    )
    raises("one-backward-pass method", "integrated_gradients", base="gradcam")
    raises("do not give a layer", "integrated_gradients", call={"layer": conv})
    raises("baseline holds NaN or Inf", "deeplift", baseline=float("nan"))
    raises("baseline must be a number or an array", "deeplift", baseline="zero")
    raises("layer must be a tensor name", "gradcam", layer=3)
    raises(r"not \[batch, channels, \*spatial\]", "gradcam", call={"layer": pooled})
    raises("do not give a layer", "fullgrad", call={"layer": conv})
    raises("has no option 'layer'", "fullgrad", layer=conv)
    with pytest.raises(MethodError, match="no spatial tensor"):  # an MLP has no feature map
        Explainer(_hand_mlp(), method="gradcam").explain(X_HAND, [0, 1])


# -- small products between runtime calls: one BLAS thread ---------------------------------------
def test_along_axis_runs_on_one_blas_thread_and_restores_it(monkeypatch):
    """NumPy's own BLAS (the one tensordot calls) runs on one thread inside, and has its
    thread count back after (other BLAS libraries a process loads later are not NumPy's)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from tsgb_onnx.methods import cam

    def numpy_blas_threads():
        return [
            i["num_threads"]
            for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and "numpy" in i["filepath"]
        ]

    rng = np.random.default_rng(3)
    a, matrix = rng.standard_normal((2, 3, 5, 7)), rng.standard_normal((4, 5))
    before, inside = numpy_blas_threads(), []
    if not before:
        pytest.skip("threadpoolctl sees no BLAS library shipped in NumPy's wheel")
    tensordot = np.tensordot

    def observed(*args, **kwargs):
        inside.append(numpy_blas_threads())
        return tensordot(*args, **kwargs)

    monkeypatch.setattr(cam.np, "tensordot", observed)
    got = cam.along_axis(a, matrix, 2)
    np.testing.assert_allclose(got, np.einsum("bcij,ki->bckj", a, matrix), rtol=1e-12)
    assert inside == [[1] * len(before)] and numpy_blas_threads() == before

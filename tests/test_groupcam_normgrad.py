"""Group-CAM, NormGrad (identity, conv, selective, multi-layer) and meta-saliency from the ONNX
engine vs straightforward PyTorch implementations of the papers' formulas on autograd values."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tsgb_onnx import Explainer, MethodError
from tsgb_onnx.methods.groupcam import blur_matrix, gaussian_blur

TARGETS = [3, 1]


def _close(got, want, tol=1e-4):
    scale = np.abs(want).max()
    assert scale > 0 and np.isfinite(got).all()
    assert np.abs(got - want).max() <= tol * scale, np.abs(got - want).max() / scale


def _hooked(model, module, x, targets):
    """Autograd activation and gradient at `module`'s output, for the target logits."""
    store = {}

    def hook(_, __, out):
        out.retain_grad()
        store["a"] = out

    handle = module.register_forward_hook(hook)
    try:
        xt = torch.from_numpy(x)
        logits = model(xt)
        logits[torch.arange(len(targets)), torch.tensor(targets)].sum().backward()
    finally:
        handle.remove()
    return logits.detach(), store["a"].detach(), store["a"].grad.detach()


# -- Group-CAM (Algorithm 1) -------------------------------------------------------------------
def _torch_blur(x, size=51, sigma=50.0):
    k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    r = (size - 1) // 2
    xp = F.pad(x.double(), (r, r, r, r), mode="reflect")
    xp = F.conv2d(xp, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    xp = F.conv2d(xp, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return xp.float()


def _groupcam_reference(model, module, x, targets, groups=32, theta=70.0):
    _, a, g = _hooked(model, module, x, targets)
    w = g.mean(dim=(2, 3), keepdim=True)
    weighted = w * a
    chunks = torch.tensor_split(torch.arange(a.shape[1]), groups)
    masks = torch.stack([F.relu(weighted[:, idx].sum(1)) for idx in chunks], 1)  # B,G,h,w
    flat = masks.flatten(2)
    cut = torch.quantile(flat, theta / 100.0, dim=2).view(*masks.shape[:2], 1, 1)
    masks = torch.where(masks > cut, masks, torch.zeros_like(masks))
    masks = F.interpolate(masks, size=x.shape[2:], mode="bilinear", align_corners=False)
    lo = masks.flatten(2).min(2)[0][..., None, None]
    hi = masks.flatten(2).max(2)[0][..., None, None]
    masks = torch.where(
        hi > lo, (masks - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi)), masks
    )
    image = torch.from_numpy(x)
    blurred = _torch_blur(image)
    out = []
    with torch.no_grad():
        for b, c in enumerate(targets):
            base = F.softmax(model(blurred[b : b + 1]), 1)[0, c]
            total = torch.zeros(x.shape[2:])
            for m in masks[b]:
                mixed = image[b : b + 1] * m + blurred[b : b + 1] * (1 - m)
                gain = F.softmax(model(mixed), 1)[0, c] - base
                total += gain * m
            total = F.relu(total)
            span = total.max() - total.min()
            out.append(((total - total.min()) / span if span > 0 else total).numpy())
    return np.stack(out)


def test_blur_matches_reflect_padded_convolution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 40, 33)).astype(np.float32)
    got = gaussian_blur(x, 21, 5.0)
    want = _torch_blur(torch.from_numpy(x), 21, 5.0).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # each row of the blur matrix sums to 1 (a blur keeps constants), even when the pad > size
    np.testing.assert_allclose(blur_matrix(5, np.full(51, 1 / 51)).sum(1), 1.0)


@pytest.mark.parametrize("name,module", [("resnet50_style", "layer4"), ("vgg16_style", "features")])
def test_groupcam_matches_algorithm_1(onnx_zoo, name, module):
    model, proto = onnx_zoo.get(name, False)
    x = onnx_zoo.example(name, 2, 0).numpy()
    result = Explainer(proto, method="groupcam").explain(x, target=TARGETS)
    expected = _groupcam_reference(model, getattr(model, module), x, TARGETS)
    assert result.saliency.shape == (2, 64, 64)
    _close(result.saliency, expected, 1e-3)


def test_groupcam_options_and_errors(onnx_zoo):
    _, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 1, 0).numpy()
    a = Explainer(proto, method="groupcam", groups=8, threshold=50).explain(x, 3).saliency
    b = Explainer(proto, method="groupcam").explain(x, 3).saliency
    assert np.abs(a - b).max() > 1e-3
    with pytest.raises(MethodError, match="groups"):
        Explainer(proto, method="groupcam", groups=0)
    with pytest.raises(MethodError, match="percentile"):
        Explainer(proto, method="groupcam", threshold=120)
    with pytest.raises(MethodError, match="exceeds"):
        Explainer(proto, method="groupcam", groups=10_000).explain(x, 3)


# -- NormGrad --------------------------------------------------------------------------------
def _up(m, size=(64, 64)):
    return F.interpolate(m[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def test_normgrad_identity_and_selective(onnx_zoo):
    model, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 2, 1).numpy()
    _, a, g = _hooked(model, model.layer4, x, TARGETS)
    plain = Explainer(proto, method="normgrad").explain(x, TARGETS).saliency
    _close(plain, _up(g.norm(dim=1) * a.norm(dim=1)).numpy())
    selective = Explainer(proto, method="selective_normgrad").explain(x, TARGETS).saliency
    _close(selective, _up(F.relu(g * a).norm(dim=1)).numpy())


def _contribution_norms(conv, x_in, g_out):
    """||dL/dW restricted to output location u||_F for every u, by autograd per location."""
    b, _, h, w = g_out.shape
    out = torch.zeros(b, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            mask = torch.zeros_like(g_out)
            mask[:, :, i, j] = 1
            for r in range(b):
                weight = conv.weight.detach().clone().double().requires_grad_(True)
                y = F.conv2d(
                    x_in[r : r + 1].double(),
                    weight,
                    None,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                )
                (y * (g_out[r : r + 1].double() * mask[r : r + 1])).sum().backward()
                out[r, i, j] = weight.grad.norm()
    return out


def test_normgrad_at_an_existing_conv_equals_per_location_weight_gradients():
    """A grouped, strided, dilated, padded conv: the map is the Frobenius norm of each
    location's contribution to the weight gradient, computed here by autograd per location."""
    from tsgb_onnx.io.export import from_torch

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 5),
    ).eval()
    x = torch.randn(2, 4, 12, 12)
    proto = from_torch(net, x)
    result = Explainer(proto, method="normgrad", variant="conv").explain(x.numpy(), TARGETS)
    x_in = x.clone()
    conv_out = net[0](x_in).detach().requires_grad_(True)
    logits = net[3](net[2](net[1](conv_out)))
    logits[torch.arange(2), torch.tensor(TARGETS)].sum().backward()
    norms = _contribution_norms(net[0], x_in, conv_out.grad)
    _close(result.saliency, _up(norms, (12, 12)).numpy())


def test_normgrad_conv_variant_on_vgg(onnx_zoo):
    model, proto = onnx_zoo.get("vgg16_style", False)
    x = onnx_zoo.example("vgg16_style", 2, 2).numpy()
    conv = model.features[-3]
    _, x_in, _ = _hooked(model, model.features[-4], x, TARGETS)
    # the ReLU after the conv works in place: the conv output's gradient is G[relu] * (y > 0)
    _, y, g_relu = _hooked(model, model.features[-2], x, TARGETS)
    g = g_relu * (y > 0)
    patches = F.unfold(x_in, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    want = g.norm(dim=1) * patches.norm(dim=1).view(g.shape[0], *g.shape[2:])
    got = Explainer(proto, method="normgrad", variant="conv").explain(x, TARGETS).saliency
    _close(got, _up(want).numpy())


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_normgrad_multi_layer_combination(onnx_zoo, combine):
    model, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 2, 3).numpy()
    ex = Explainer(proto, method="normgrad")
    deep = ex.explain(x, TARGETS).layer  # the default layer: layer4's output
    # layer3's output is what the first Conv of layer4 reads
    mid = next(n for n in ex.graph.nodes if n.op_type == "Conv" and "layer4" in n.name).inputs[0]
    got = (
        Explainer(
            proto, method="normgrad", layers=f"{mid},{deep}", weights=[0.25, 0.75], combine=combine
        )
        .explain(x, TARGETS)
        .saliency
    )
    maps = []
    for module in (model.layer3, model.layer4):
        _, a, g = _hooked(model, module, x, TARGETS)
        m = (g.norm(dim=1) * a.norm(dim=1)).double()
        lo = m.flatten(1).min(1)[0][:, None, None]
        hi = m.flatten(1).max(1)[0][:, None, None]
        maps.append(_up((m - lo) / (hi - lo)))
    if combine == "sum":
        want = 0.25 * maps[0] + 0.75 * maps[1]
    else:
        want = maps[0] ** 0.25 * maps[1] ** 0.75
    _close(got, want.numpy(), 1e-4)


def test_normgrad_errors(onnx_zoo):
    _, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 1, 0).numpy()
    with pytest.raises(MethodError, match="variant"):
        Explainer(proto, method="normgrad", variant="patch")
    with pytest.raises(MethodError, match="combine"):
        Explainer(proto, method="normgrad", combine="max")
    with pytest.raises(MethodError, match="weights"):
        Explainer(proto, method="normgrad", weights=[-1.0])
    ex = Explainer(proto, method="normgrad", variant="conv")
    relu_out = Explainer(proto, method="gradcam").explain(x, 3).layer
    with pytest.raises(MethodError, match="Conv output"):
        ex.explain(x, 3, layer=relu_out)


# -- meta-saliency -------------------------------------------------------------------------------
def test_meta_saliency_matches_one_sgd_step_in_torch(onnx_zoo):
    """VGG-style net (no BN, so ONNX initializers = torch parameters): θ' = θ + lr ∇θ logit_c,
    then NormGrad on the stepped model; each row has its own step."""
    import copy

    model, proto = onnx_zoo.get("vgg16_style", False)
    x = onnx_zoo.example("vgg16_style", 2, 4).numpy()
    lr = 0.05
    got = Explainer(proto, method="normgrad", meta_saliency=True, meta_lr=lr).explain(x, TARGETS)
    plain = Explainer(proto, method="normgrad").explain(x, TARGETS).saliency
    want = []
    for row, cls in enumerate(TARGETS):
        stepped = copy.deepcopy(model)
        xt = torch.from_numpy(x[row : row + 1])
        stepped.zero_grad()
        stepped(xt)[0, cls].backward()
        with torch.no_grad():
            for p in stepped.parameters():
                p += lr * p.grad
        _, a, g = _hooked(stepped, stepped.features, x[row : row + 1], [cls])
        want.append(_up(g.norm(dim=1) * a.norm(dim=1)).numpy()[0])
    _close(got.saliency, np.stack(want), 1e-3)
    assert np.abs(got.saliency - plain).max() > 1e-3 * np.abs(plain).max()  # the step matters


def test_meta_saliency_wraps_any_method(onnx_zoo):
    _, proto = onnx_zoo.get("vgg16_style", False)
    x = onnx_zoo.example("vgg16_style", 1, 0).numpy()
    tiny = Explainer(proto, method="meta_saliency", base="tsgb", lr=1e-9, alpha=0.8).explain(x, 2)
    plain = Explainer(proto, method="tsgb", alpha=0.8, backend="numpy").explain(x, 2)
    _close(tiny.saliency, plain.saliency, 1e-3)  # a vanishing step gives back the base map
    with pytest.raises(MethodError, match="alpha"):
        Explainer(proto, method="meta_saliency", base="gradient", alpha=1.0)


# -- weight gradients (meta-saliency's inner step) -----------------------------------------------
def test_weight_gradients_match_autograd(onnx_zoo):
    from onnx import numpy_helper

    from tsgb_onnx.methods.weight_grads import weight_gradients

    model, proto = onnx_zoo.get("vgg16_style", False)
    # (an input whose pre-activations keep clear of ReLU kinks under float32 rounding)
    x = onnx_zoo.example("vgg16_style", 2, 1).numpy()
    grads = weight_gradients(Explainer(proto, method="gradient"), x, TARGETS)
    model.zero_grad()
    model(torch.from_numpy(x))[torch.arange(2), torch.tensor(TARGETS)].sum().backward()
    by_value = {}
    for init in proto.graph.initializer:
        by_value[init.name] = numpy_helper.to_array(init)
    params = list(model.parameters())
    matched = 0
    for name, grad in grads.items():
        value = by_value[name]
        param = next(
            p
            for p in params
            if tuple(p.shape) == value.shape and np.array_equal(p.detach().numpy(), value)
        )
        _close(grad, param.grad.numpy(), 1e-4)
        matched += 1
    assert matched == len(params)  # every conv and linear weight and bias


def _moved_logit(proto, inits, feed, cls):
    """logit(tensor, index, delta): the class-`cls` logit after moving one initializer value."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    def logit(tensor, index, delta):
        moved = onnx.ModelProto()
        moved.CopyFrom(proto)
        for init in moved.graph.initializer:
            if init.name == tensor:
                value = inits[tensor].astype(np.float64)
                value[index] += delta
                init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor))
        s = ort.InferenceSession(moved.SerializeToString(), providers=["CPUExecutionProvider"])
        return float(s.run(None, {s.get_inputs()[0].name: feed})[0][0, cls])

    return logit


@pytest.mark.parametrize("name", ["resnet50_style", "mobilenetv2_style"])
def test_weight_gradients_match_finite_differences(onnx_zoo, name):
    """Grouped, strided and 1x1 convs, Gemm, biases: central differences of the target logit
    through ONNX Runtime, at the largest entries of several weight tensors."""
    from onnx import numpy_helper

    from tsgb_onnx.methods.weight_grads import weight_gradients

    _, proto = onnx_zoo.get(name, True)
    x = onnx_zoo.example(name, 1, 6).numpy()
    grads = weight_gradients(Explainer(proto, method="gradient"), x, 3)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}

    logit = _moved_logit(proto, inits, x, 3)

    checked = [k for k in grads if grads[k].ndim >= 2][:2] + [
        k for k in grads if grads[k].ndim >= 2
    ][-2:]
    checked += [k for k in grads if grads[k].ndim == 1][:1]
    for tensor in checked:
        index = np.unravel_index(np.argmax(np.abs(grads[tensor])), grads[tensor].shape)
        h = 1e-3
        fd = (logit(tensor, index, h) - logit(tensor, index, -h)) / (2 * h)
        assert abs(fd - grads[tensor][index]) <= 1e-2 * abs(grads[tensor][index]) + 1e-3, tensor


def test_weight_gradients_of_batch_normalization_match_finite_differences():
    """An unfolded BatchNormalization (scale, bias) between a Conv and a Gemm, built by hand."""
    from onnx import TensorProto, helper, numpy_helper

    from tsgb_onnx.methods.weight_grads import weight_gradients

    rng = np.random.default_rng(3)
    inits = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "shift": rng.standard_normal(4).astype(np.float32),
        "mean": rng.standard_normal(4).astype(np.float32),
        "var": rng.uniform(0.5, 2, 4).astype(np.float32),
        "fc": rng.standard_normal((4, 5)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    grads = weight_gradients(Explainer(proto, method="gradient"), x, 2)
    assert set(grads) == {"w", "scale", "shift", "fc"}

    logit = _moved_logit(proto, inits, x, 2)

    for tensor in ("scale", "shift", "w"):
        for index in np.ndindex(*grads[tensor].shape[:1]):
            index = index + (0,) * (grads[tensor].ndim - 1)
            fd = (logit(tensor, index, 1e-3) - logit(tensor, index, -1e-3)) / 2e-3
            assert abs(fd - grads[tensor][index]) <= 1e-2 * abs(grads[tensor][index]) + 1e-3

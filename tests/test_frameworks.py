"""A PyTorch module or a Keras model handed to the Explainer: in-memory export, module /
layer names as layers, torch tensors in and out, per-call options with Captum's names,
normalisation, several layers per call. Oracles: PyTorch autograd and forward hooks on the
same module."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tsgb_onnx import Explainer  # noqa: E402
from tsgb_onnx.errors import InputError, MethodError, ModelError  # noqa: E402


@pytest.fixture(scope="module")
def resnet():
    from nets import resnet50_style

    return resnet50_style().eval()


@pytest.fixture(scope="module")
def batch():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def gradcam(resnet, batch):
    return Explainer(resnet, example=batch[:1], method="gradcam", layer="layer3")


def _module_output_and_grad(model, module, x, target):
    """The module's output on `x` and the gradient of the target logits w.r.t. it."""
    seen = {}
    handle = module.register_forward_hook(lambda _m, _i, out: seen.__setitem__("a", out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    rows = torch.arange(len(x))
    (grad,) = torch.autograd.grad(logits[rows, torch.as_tensor(target)].sum(), seen["a"])
    return seen["a"].detach(), grad


def _torch_gradcam(model, module, x, target):
    a, g = _module_output_and_grad(model, module, x, target)
    return torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_module_names_resolve_to_the_modules_outputs(resnet, batch, gradcam):
    """layer='layer3' is the output of module layer3: Grad-CAM there equals Grad-CAM
    computed in PyTorch from a forward hook on that module."""
    result = gradcam.explain(batch, target=[1, 4, 7], upsample="none")
    assert isinstance(result.saliency, torch.Tensor)
    expected = _torch_gradcam(resnet, resnet.layer3, batch, [1, 4, 7])
    assert result.saliency.shape == expected.shape
    assert _rel(result.saliency, expected) < 1e-4
    assert result.layer.startswith("/layer3/")


def test_each_module_name_maps_to_a_tensor_of_its_output_shape(resnet, batch):
    ex = Explainer(resnet, example=batch[:1], method="gradient")
    exported = ex._shared.exported
    shapes = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
        for n, m in resnet.named_modules()
        if n
    ]
    with torch.no_grad():
        resnet(batch[:1])
    for handle in handles:
        handle.remove()
    assert {"layer1", "layer4.1", "layer2.0.bn2", "fc"} <= set(exported.layers)
    for name, tensor in exported.layers.items():
        declared = ex.graph.shapes.get(tensor)
        if declared:
            assert tuple(declared[1:]) == shapes[name][1:], name


def test_refused_module_names_say_why(resnet, batch):
    ex = Explainer(resnet, example=batch[:1], method="gradient")
    with pytest.raises(ModelError, match="runs 3 times"):
        ex.explain(batch[:1], layer="layer1.0.relu")
    with pytest.raises(ModelError, match="folded the BatchNorm 'layer1.0.bn1'"):
        ex.explain(batch[:1], layer="layer1.0.conv1")
    with pytest.raises(ModelError, match="neither a tensor .* nor a module name"):
        ex.explain(batch[:1], layer="layer9")
    # the folded BatchNorm's name gives the Conv node's output
    folded = ex.explain(batch[:1], layer="layer1.0.bn1")
    assert folded.layer == "/layer1/layer1.0/conv1/Conv_output_0"


def test_torch_in_torch_out_and_the_gradient_matches_autograd(resnet, batch):
    ex = Explainer(resnet, example=batch[:1], method="gradient")
    target = [2, 0, 9]
    result = ex.explain(batch, target=torch.tensor(target))
    x = batch.clone().requires_grad_()
    (grad,) = torch.autograd.grad(resnet(x)[torch.arange(3), torch.tensor(target)].sum(), x)
    for field in ("saliency", "signal", "logits", "target", "activation"):
        assert isinstance(getattr(result, field), torch.Tensor), field
    assert _rel(result.signal, grad) < 1e-4
    # the per-channel attribution beside the channel-summed map (Captum's InputXGradient)
    assert _rel(result.attribution, grad * batch) < 1e-4
    assert torch.allclose(result.attribution.sum(1), result.saliency, atol=1e-6)
    numpy_result = ex.explain(batch.numpy(), target=target)
    assert isinstance(numpy_result.saliency, np.ndarray)
    np.testing.assert_allclose(numpy_result.saliency, result.saliency.numpy(), atol=1e-7)


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
def test_attribution_at_an_inner_layer_on_both_backends(resnet, batch, backend):
    ex = Explainer(resnet, example=batch[:1], method="gradient", backend=backend)
    result = ex.explain(batch, target=5, layer="layer2")
    a, g = _module_output_and_grad(resnet, resnet.layer2, batch, [5, 5, 5])
    assert _rel(result.activation, a) < 1e-5
    assert _rel(result.attribution, a * g) < 1e-4


def test_several_layers_from_one_backward(resnet, batch):
    ex = Explainer(resnet, example=batch[:1], method="gradient")
    results = ex.explain_layers(batch, ["layer2", "layer4"], target=1)
    for name in ("layer2", "layer4"):
        a, g = _module_output_and_grad(resnet, getattr(resnet, name), batch, [1, 1, 1])
        assert _rel(results[name].signal, g) < 1e-4
        assert _rel(results[name].saliency, (a * g).sum(1)) < 1e-4


def test_gradcam_over_several_layers_is_pytorch_grad_cams_mean(resnet, batch, gradcam):
    """Each layer's CAM min-max scaled, upsampled, averaged and scaled again."""
    result = gradcam.explain(batch, target=3, layer=["layer3", "layer4"])
    scaled = []
    for module in (resnet.layer3, resnet.layer4):
        cam = _torch_gradcam(resnet, module, batch, [3, 3, 3])
        low = cam.amin((1, 2), keepdim=True)
        cam = (cam - low) / (cam.amax((1, 2), keepdim=True) - low)
        up = torch.nn.functional.interpolate(cam[:, None], size=(64, 64), mode="bilinear")
        scaled.append(up[:, 0])
    mean = torch.stack(scaled).mean(0)
    low = mean.amin((1, 2), keepdim=True)
    expected = (mean - low) / (mean.amax((1, 2), keepdim=True) - low)
    assert float((result.saliency - expected).abs().max()) < 1e-5


def test_per_call_options_and_captum_aliases(resnet, batch):
    ig = Explainer(resnet, example=batch[:1], method="integrated_gradients", steps=8)
    own = ig.explain(batch[:2], target=1, steps=4, quadrature="gausslegendre")
    alias = ig.explain(batch[:2], target=1, n_steps=4, quadrature="gausslegendre")
    default = ig.explain(batch[:2], target=1)
    np.testing.assert_array_equal(own.saliency.numpy(), alias.saliency.numpy())
    assert not np.allclose(own.saliency.numpy(), default.saliency.numpy(), atol=1e-9)
    # construction options persist; per-call ones do not
    assert ig.options["steps"] == 8
    with pytest.raises(MethodError, match="either 'n_steps' or 'steps'"):
        ig.explain(batch[:1], steps=4, n_steps=4)
    with pytest.raises(MethodError, match="has no option 'nsteps'"):
        ig.explain(batch[:1], nsteps=4)


def test_captum_stdevs_is_an_absolute_noise_std(resnet, batch):
    x = batch[:2].numpy() * 10.0  # value range ~ 80: relative and absolute sigma differ
    noise = np.random.default_rng(0).standard_normal((4,) + x.shape[1:]).astype(np.float32)
    copies = np.concatenate([row + np.float32(0.5) * noise for row in x])
    grad = Explainer(resnet, example=batch[:1], method="gradient")
    want = grad.explain(copies, target=np.repeat([1, 2], 4)).signal.reshape((2, 4) + x.shape[1:])
    sg = Explainer(resnet, example=batch[:1], method="smoothgrad", n=4, seed=0)
    assert sg.with_options(stdevs=0.5).options["sigma_mode"] == "absolute"
    got = sg.explain(x, target=[1, 2], stdevs=0.5).signal
    np.testing.assert_allclose(got, want.mean(1), rtol=1e-4, atol=1e-6 * np.abs(want).max())
    relative = sg.explain(x, target=[1, 2], sigma=0.5).signal
    assert np.abs(relative - got).max() > 0.1 * np.abs(got).max()


def test_captum_nt_samples_batch_size_counts_copies_of_the_batch(resnet, batch, monkeypatch):
    """Captum's nt_samples_batch_size is noisy copies of the whole batch per run (rows =
    it x batch), not rows: 5 samples of 3 images in runs of at most 2 x 3 rows (three of 5),
    the same maps."""
    sg = Explainer(resnet, example=batch[:1], method="smoothgrad", n=5, sigma=0.1)
    x = batch[:3].numpy()
    plain = sg.explain(x, target=0)
    rows = []
    explain = Explainer.explain

    def counting(self, x, *args, **kwargs):
        rows.append(len(x))
        return explain(self, x, *args, **kwargs)

    monkeypatch.setattr(Explainer, "explain", counting)
    chunked = sg.explain(x, target=0, nt_samples_batch_size=2)
    assert sg.with_options(nt_samples_batch_size=2).options["samples_per_batch"] == 2
    assert rows[2:] == [5, 5, 5]  # the call itself, its with_options call, then 15 copies in 3
    np.testing.assert_allclose(chunked.saliency, plain.saliency, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("how", ["minmax", "abs-max"])
def test_normalize(gradcam, batch, how):
    ex = gradcam.with_options(layer="layer4")
    plain = ex.explain(batch.numpy(), target=0).saliency
    scaled = ex.explain(batch.numpy(), target=0, normalize=how).saliency
    flat = plain.reshape(len(plain), -1)
    if how == "minmax":
        low = flat.min(1)[:, None, None]
        expected = (plain - low) / (flat.max(1) - flat.min(1))[:, None, None]
    else:
        expected = plain / np.abs(flat).max(1)[:, None, None]
    np.testing.assert_allclose(scaled, expected, atol=1e-6)
    with pytest.raises(InputError, match="normalize must be one of"):
        ex.explain(batch.numpy(), normalize="max")


def test_an_onnx_model_refuses_example(onnx_zoo):
    _, model = onnx_zoo.get("vgg16_style", dynamo=False)
    with pytest.raises(InputError, match="leave example out"):
        Explainer(model, example=np.zeros((1, 3, 64, 64), np.float32))


def test_a_module_without_example_is_one_clear_error(resnet):
    with pytest.raises(InputError, match="give example=x"):
        Explainer(resnet, method="gradient")


def test_keras_layer_names():
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv")(inputs)
    h = keras.layers.MaxPooling2D(name="block1_pool")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="block2_conv")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = keras.layers.Dense(5, name="predictions")(h)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    ex = Explainer(model, method="gradcam", layer="block2_conv")
    result = ex.explain(x, target=2, upsample="none")
    probe = keras.Model(inputs, [model.get_layer("block2_conv").output, outputs])
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        a, logits = probe(xt)
        score = tf.reduce_sum(logits[:, 2])
    g = tape.gradient(score, a).numpy()
    cam = np.maximum((g.mean(axis=(1, 2), keepdims=True) * a.numpy()).sum(-1), 0)
    assert result.saliency.shape == cam.shape
    assert np.abs(result.saliency - cam).max() / np.abs(cam).max() < 1e-4
    with pytest.raises(ModelError, match="layer name of the model"):
        ex.explain(x, layer="block9_conv")


def test_a_batchnorm_folded_into_a_conv_subclass_is_named():
    """Zoo code subclasses nn.Conv2d (e.g. a TF-"same"-padding conv): the folded norm's name
    still gives the fused conv's output, as with a plain nn.Conv2d."""

    class SameConv2d(torch.nn.Conv2d):
        pass

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        SameConv2d(3, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()
    x = torch.randn(1, 3, 8, 8)
    ex = Explainer(model, example=x, method="gradcam", layer="1")
    assert ex.options["layer"] == ex.tensor_of("1")
    with pytest.raises(ModelError, match="folded the BatchNorm '1'"):
        ex.tensor_of("0")

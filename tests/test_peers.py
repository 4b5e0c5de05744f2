"""Side by side with the libraries users come from: Captum, pytorch-grad-cam and Zennit, on
the same PyTorch modules, where the definitions match (docs/migration.md lists the calls and
the conventions that differ). The product is given the module itself (in-memory export)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from peers import import_peer  # noqa: E402

from tsgb_onnx import Explainer  # noqa: E402

TARGETS = [3, 7]


def _without_inplace(model):
    """A copy whose ReLUs are not in-place (Captum's and Zennit's backward hooks need it)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    return model


@pytest.fixture(scope="module")
def vgg():
    from nets import vgg16_style

    return _without_inplace(vgg16_style())


@pytest.fixture(scope="module")
def resnet():
    from nets import resnet50_style

    return _without_inplace(resnet50_style())


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))


def _close(ours, theirs, bound=1e-4):
    ours = torch.as_tensor(np.asarray(ours)) if not isinstance(ours, torch.Tensor) else ours
    theirs = torch.as_tensor(np.asarray(theirs)) if not isinstance(theirs, torch.Tensor) else theirs
    theirs = theirs.detach().to(ours.dtype).reshape(ours.shape)
    scale = float(theirs.abs().max())
    assert scale > 0, "the peer's map is all zero: the comparison would prove nothing"
    err = float((ours - theirs).abs().max()) / scale
    assert err < bound, f"max |ours - peer| / max |peer| = {err:.2e}"


# -- Captum -----------------------------------------------------------------------------------
CAPTUM = [
    # (product method, product field, Captum class, attribute() keywords)
    ("gradient", "signal", "Saliency", {"abs": False}),
    ("input_x_gradient", "attribution", "InputXGradient", {}),
    ("guided_backprop", "signal", "GuidedBackprop", {}),
    ("deconvnet", "signal", "Deconvolution", {}),
]


@pytest.mark.parametrize("net", ["vgg", "resnet"])
@pytest.mark.parametrize(("method", "field", "peer", "kwargs"), CAPTUM, ids=[c[0] for c in CAPTUM])
def test_captum_gradient_family(request, net, method, field, peer, kwargs, x):
    attr = import_peer("captum", "attr").attr
    model = request.getfixturevalue(net)
    theirs = getattr(attr, peer)(model).attribute(x.clone(), target=TARGETS, **kwargs)
    ours = Explainer(model, example=x[:1], method=method).explain(x, target=TARGETS)
    _close(getattr(ours, field), theirs)


def test_captum_integrated_gradients(resnet, x):
    attr = import_peer("captum", "attr").attr
    theirs = attr.IntegratedGradients(resnet).attribute(x, target=TARGETS, n_steps=16)
    ex = Explainer(resnet, example=x[:1], method="integrated_gradients")
    # Captum's names and its default Gauss-Legendre rule
    ours = ex.explain(x, target=TARGETS, n_steps=16, quadrature="gausslegendre")
    _close(ours.attribution, theirs)


def test_captum_deeplift(vgg, x):
    """VGG-style (ReLU, max pool, linear): Captum's DeepLift hooks each ReLU module once, so
    a net that calls one ReLU module several times (the ResNet blocks) is not comparable."""
    attr = import_peer("captum", "attr").attr
    baseline = torch.zeros_like(x)
    theirs = attr.DeepLift(vgg).attribute(x, baselines=baseline, target=TARGETS)
    ours = Explainer(vgg, example=x[:1], method="deeplift").explain(x, target=TARGETS)
    _close(ours.attribution, theirs)


@pytest.mark.parametrize("net,layer", [("vgg", "features.29"), ("resnet", "layer3")])
def test_captum_layer_gradcam(request, net, layer, x):
    attr = import_peer("captum", "attr").attr
    model = request.getfixturevalue(net)
    module = model.get_submodule(layer)
    cam = attr.LayerGradCam(model, module).attribute(x, target=TARGETS, relu_attributions=True)
    ex = Explainer(model, example=x[:1], method="gradcam", layer=layer)
    _close(ex.explain(x, target=TARGETS, upsample="none").saliency, cam[:, 0])
    # upsampled as Captum's LayerAttribution.interpolate(..., "bilinear")
    up = attr.LayerAttribution.interpolate(cam, (64, 64), interpolate_mode="bilinear")
    _close(ex.explain(x, target=TARGETS).saliency, up[:, 0])


# -- pytorch-grad-cam --------------------------------------------------------------------------
@pytest.mark.parametrize("net,layers", [("vgg", ["features.29"]), ("resnet", ["layer4"])])
def test_pytorch_grad_cam(request, net, layers, x):
    cams = import_peer("pytorch_grad_cam", "utils.model_targets")
    targets_mod = cams.utils.model_targets
    model = request.getfixturevalue(net)
    modules = [model.get_submodule(n) for n in layers]
    with cams.GradCAM(model=model, target_layers=modules) as peer:
        theirs = peer(
            input_tensor=x.clone(),
            targets=[targets_mod.ClassifierOutputTarget(t) for t in TARGETS],
        )
    ex = Explainer(model, example=x[:1], method="gradcam", layer=layers[0])
    ours = ex.explain(x, target=TARGETS, normalize="minmax")
    _close(ours.saliency, theirs, bound=1e-4)


def test_pytorch_grad_cam_several_layers(resnet, x):
    cams = import_peer("pytorch_grad_cam", "utils.model_targets")
    targets_mod = cams.utils.model_targets
    layers = ["layer3", "layer4"]
    with cams.GradCAM(model=resnet, target_layers=[resnet.get_submodule(n) for n in layers]) as p:
        theirs = p(
            input_tensor=x.clone(),
            targets=[targets_mod.ClassifierOutputTarget(t) for t in TARGETS],
        )
    ours = Explainer(resnet, example=x[:1], method="gradcam").explain(
        x, target=TARGETS, layer=layers
    )
    _close(ours.saliency, theirs, bound=1e-4)


# -- Zennit ------------------------------------------------------------------------------------
def test_zennit_lrp_epsilon(vgg, x):
    """LRP-epsilon on every Conv and Linear, ReLU passed, max pool winner-take-all; Zennit
    starts from its attr_output, the product from the target logit: given the same start."""
    zennit = import_peer("zennit", "composites", "rules", "types", "attribution")
    eps = 1e-6
    composite = zennit.composites.LayerMapComposite(
        [
            (zennit.types.Convolution, zennit.rules.Epsilon(epsilon=eps)),
            (torch.nn.Linear, zennit.rules.Epsilon(epsilon=eps)),
        ]
    )
    with zennit.attribution.Gradient(model=vgg, composite=composite) as attributor:
        onehot = torch.eye(10)[TARGETS]
        logits, relevance = attributor(x.clone(), lambda out: out * onehot)
    ours = Explainer(vgg, example=x[:1], method="lrp_epsilon", epsilon=eps).explain(
        x, target=TARGETS
    )
    _close(ours.attribution, relevance, bound=1e-4)

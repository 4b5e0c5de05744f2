"""The `gradient` method equals PyTorch autograd on the reference nets, both exporters.

The oracle is the module in float64: the product's float32 gradient is held to 1e-4 of the
max of the float64 one (a float32 oracle would also carry its own rounding).
"""

import copy

import numpy as np
import pytest
import torch

from tsgb_onnx import Explainer

NETS = [
    "vgg16_style",
    "resnet50_style",
    "densenet_style",
    "mobilenetv2_style",
    "silu_se_net",
    "cnn1d",
    "efficientnet_lite0",
]


def autograd_signal(model, x, target):
    """The float64 gradient of the target logits and the float64 logits."""
    model = copy.deepcopy(model).double()
    xt = torch.as_tensor(x, dtype=torch.float64).clone().requires_grad_(True)
    logits = model(xt)
    seed = torch.zeros_like(logits)
    seed[torch.arange(len(target)), torch.as_tensor(target)] = 1
    logits.backward(seed)
    return xt.grad.numpy(), logits.detach().numpy()


def example_batch(zoo, name, batch, seed=0):
    shape = zoo.input_shape(name)
    return np.random.default_rng(seed).standard_normal((batch,) + shape).astype(np.float32)


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", NETS)
def test_gradient_matches_autograd(onnx_zoo, name, dynamo, backend):
    model, proto = onnx_zoo.get(name, dynamo)
    batch = 1 if name == "efficientnet_lite0" else 3
    x = example_batch(onnx_zoo, name, batch)
    explainer = Explainer(proto, method="gradient", backend=backend)
    classes = explainer.infer(x).shape[1]
    target = np.arange(batch) * 3 % classes  # a different class per row
    result = explainer.explain(x, target=target)
    expected, logits = autograd_signal(model, x, target)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-3, atol=1e-3 * np.abs(logits).max())
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(result.signal - expected).max() <= 1e-4 * scale
    np.testing.assert_allclose(
        result.saliency, (expected * x).sum(1), atol=1e-4 * np.abs((expected * x).sum(1)).max()
    )


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
@pytest.mark.parametrize("name", ["resnet50_style", "densenet_style"])
def test_batch_rows_are_independent(onnx_zoo, name, backend):
    _, proto = onnx_zoo.get(name, False)
    x = example_batch(onnx_zoo, name, 4, seed=1)
    explainer = Explainer(proto, method="gradient", backend=backend)
    target = [0, 5, 2, 9]
    together = explainer.explain(x, target=target)
    for i in range(4):
        alone = explainer.explain(x[i : i + 1], target=target[i])
        scale = np.abs(alone.signal).max()
        assert np.abs(together.signal[i] - alone.signal[0]).max() <= 1e-5 * scale
        assert together.target[i] == target[i]


def test_top1_default_target(onnx_zoo):
    _, proto = onnx_zoo.get("vgg16_style", False)
    x = example_batch(onnx_zoo, "vgg16_style", 2)
    result = Explainer(proto, method="gradient").explain(x)
    np.testing.assert_array_equal(result.target, result.logits.argmax(1))
    assert result.target.dtype == np.int64
    assert result.saliency.shape == (2, 64, 64)

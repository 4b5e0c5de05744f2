"""Baseline rule sets (input x gradient, guided backprop, deconvnet, EBP, contrastive EBP,
LRP-epsilon) against independent references, hand-worked values and conservation laws."""

import warnings

import numpy as np
import pytest
from baselines_reference import (
    NORM,
    convnet_ebp,
    convnet_logits,
    convnet_lrp,
    convnet_params,
    gap_top_net,
    modified_relu_saliency,
    normalised_mlp,
    relu_top_net,
    small_convnet,
    small_mlp,
)

from tsgb_onnx import Explainer, MethodError
from tsgb_onnx.rules.baselines import BaselineWarning

METHODS = [
    "input_x_gradient",
    "guided_backprop",
    "deconvnet",
    "ebp",
    "contrastive_ebp",
    "lrp_epsilon",
]
X_MLP = np.array([[1.0, 2.0, 0.5]], np.float32)


def _close(got, expected, rel=1e-4):
    scale = np.abs(expected).max()
    assert scale > 0 and np.isfinite(got).all()
    assert np.abs(got - expected).max() <= rel * scale, np.abs(got - expected).max() / scale


def _relevance(result, x):
    return result.signal * x


@pytest.fixture(scope="module")
def convnet():
    p = convnet_params(0)
    x = np.random.default_rng(1).normal(size=(2, 2, 6, 6)).astype(np.float32)
    return p, small_convnet(p), x


# -- guided backprop / deconvnet vs PyTorch ------------------------------------------------------
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
@pytest.mark.parametrize("name", ["vgg16_style", "resnet50_style", "mobilenetv2_style"])
def test_modified_relu_methods_match_pytorch(onnx_zoo, name, method):
    model, proto = onnx_zoo.get(name, False)
    x = onnx_zoo.example(name, 2, 0).numpy()
    expected, signal = modified_relu_saliency(model, x, [3, 1], method)
    for backend in ("numpy", "compiled"):
        result = Explainer(proto, method=method, backend=backend).explain(x, target=[3, 1])
        _close(result.saliency, expected)
        _close(result.signal, signal)
    plain = Explainer(proto, method="gradient", backend="numpy").explain(x, target=[3, 1])
    assert np.abs(plain.saliency - expected).max() > 1e-2 * np.abs(expected).max()


def test_input_x_gradient_is_the_gradient(onnx_zoo):
    _, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 2, 4).numpy()
    a = Explainer(proto, method="input_x_gradient", backend="numpy").explain(x, target=[0, 7])
    b = Explainer(proto, method="gradient", backend="numpy").explain(x, target=[0, 7])
    assert np.array_equal(a.saliency, b.saliency) and a.method == "input_x_gradient"


# -- EBP / contrastive EBP / LRP-epsilon on hand-worked networks ---------------------------------
# MLP: x = [1, 2, .5], h = relu(x W1 + b1) = [1.6, 3.3], logits = h W2 + b2 = [-1.7, 0.6].
# EBP, target 0: W2+[:, 0] = [1, 0] gives P[h] = [1, 0]; z = x W1+ = [2, 4.5], so
# P[x] = x * W1+[:, 0] / 2 = [.5, .5, 0]. Target 1: P[h] = [0, 1], P[x] = [0, 4/4.5, .5/4.5].
# The dual unit of target 0 has weights -W2[:, 0] = [-1, 1] -> P[h] = [0, 1].
# LRP-eps (eps = .1), target 0: R[h] = h * W2[:, 0] * (-1.7) / (-1.8) = [1.6, -3.3] * 17/18;
# R[h] / (z + eps) = [8/9, -11/12]; R[x] = x * W1 @ that = [65/36, -25/9, -65/72].
MLP_EXPECTED = {
    ("ebp", 0): [0.5, 0.5, 0.0],
    ("ebp", 1): [0.0, 8 / 9, 1 / 9],
    ("contrastive_ebp", 0): [0.5, 0.5 - 8 / 9, -1 / 9],
    ("contrastive_ebp", 1): [-0.5, 8 / 9 - 0.5, 1 / 9],
    ("lrp_epsilon", 0): [65 / 36, -25 / 9, -65 / 72],
}


@pytest.mark.parametrize("matmul", [False, True], ids=["gemm", "matmul_add"])
@pytest.mark.parametrize("backend", ["numpy", "compiled"])
@pytest.mark.parametrize("method,target", list(MLP_EXPECTED))
def test_hand_worked_mlp(method, target, backend, matmul):
    options = {"epsilon": 0.1} if method == "lrp_epsilon" else {}
    explainer = Explainer(small_mlp(matmul), method=method, backend=backend, **options)
    result = explainer.explain(X_MLP, target=target)
    np.testing.assert_allclose(
        _relevance(result, X_MLP)[0], MLP_EXPECTED[method, target], atol=1e-5
    )


@pytest.mark.parametrize("backend", ["numpy", "compiled"])
def test_in_model_normalisation(backend):
    """EBP: Sub/Div by constants map each unit to itself, so P[x] = P[(x - mean) / std].
    LRP: the mean is a bias, R[x] = x R[x - mean] / (x - mean + eps sgn); Div conserves R."""
    x = np.array([[1.5, -0.5, 2.0]], np.float32)
    xn = (x - NORM["mean"]) / NORM["std"]
    for method, eps in (("ebp", None), ("lrp_epsilon", 0.1)):
        options = {} if eps is None else {"epsilon": eps}
        inner = Explainer(small_mlp(), method=method, backend="numpy", **options)
        outer = Explainer(normalised_mlp(), method=method, backend=backend, **options)
        r_inner = _relevance(inner.explain(xn, target=1), xn)
        got = _relevance(outer.explain(x, target=1), x)
        if eps is None:
            expected = r_inner
            assert abs(got.sum() - 1.0) < 1e-5
        else:
            centred = x - NORM["mean"]
            expected = x * r_inner / (centred + eps * np.sign(centred))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("contrastive", [False, True])
def test_ebp_matches_dense_oracle(convnet, contrastive):
    p, proto, x = convnet
    method = "contrastive_ebp" if contrastive else "ebp"
    expected = convnet_ebp(p, x, [1, 3], contrastive)
    for backend in ("numpy", "compiled"):
        result = Explainer(proto, method=method, backend=backend).explain(x, target=[1, 3])
        _close(_relevance(result, x), expected)
    total = expected.reshape(2, -1).sum(1)  # the oracle conserves the mass too
    np.testing.assert_allclose(total, [0.0, 0.0] if contrastive else [1.0, 1.0], atol=1e-6)
    if not contrastive:  # class 2 has only negative top weights: nothing excites it
        assert (p["w3"][:, 2] < 0).all()
        none = Explainer(proto, method=method, backend="numpy").explain(x, target=2)
        assert np.abs(none.signal).max() == 0


@pytest.mark.parametrize("epsilon", [1e-3, 0.5])
def test_lrp_epsilon_matches_dense_oracle(convnet, epsilon):
    p, proto, x = convnet
    expected = convnet_lrp(p, x, [1, 3], epsilon)
    for backend in ("numpy", "compiled"):
        result = Explainer(proto, method="lrp_epsilon", epsilon=epsilon, backend=backend).explain(
            x, target=[1, 3]
        )
        _close(_relevance(result, x), expected)
    if epsilon == 0.5:  # a large epsilon absorbs relevance: no longer input x gradient
        grad = Explainer(proto, method="input_x_gradient", backend="numpy").explain(
            x, target=[1, 3]
        )
        assert np.abs(grad.saliency - result.saliency).max() > 1e-2 * np.abs(grad.saliency).max()


def test_lrp_conserves_relevance_without_biases():
    p = convnet_params(5, bias=False)
    x = np.random.default_rng(6).normal(size=(2, 2, 6, 6)).astype(np.float32)
    result = Explainer(
        small_convnet(p), method="lrp_epsilon", epsilon=0.0, backend="numpy"
    ).explain(x, target=[0, 2])
    logits = convnet_logits(p, x)[[0, 1], [0, 2]]
    np.testing.assert_allclose(result.saliency.sum((1, 2)), logits, rtol=1e-4)
    np.testing.assert_allclose(result.logits[[0, 1], [0, 2]], logits, rtol=1e-5)


@pytest.mark.parametrize("name", ["vgg16_style", "densenet_style"])
def test_ebp_conserves_probability(onnx_zoo, name):
    """Every layer conserves the mass unless a unit's excitation W+|x| is zero; on these
    nets the whole probability arrives at the (signed) input."""
    _, proto = onnx_zoo.get(name, False)
    x = onnx_zoo.example(name, 2, 1).numpy()
    explainer = Explainer(proto, method="ebp", backend="numpy")
    result = explainer.explain(x, target=[5, 0])
    assert (result.saliency >= -1e-7).all()
    np.testing.assert_allclose(result.saliency.sum((1, 2)), [1.0, 1.0], atol=2e-3)
    # a layer fed by ReLUs (nonnegative input) passes exactly what it receives
    conv = [
        n
        for n in explainer.graph.nodes
        if n.op_type == "Conv"
        and explainer.graph.producer.get(n.inputs[0]) is not None
        and explainer.graph.producer[n.inputs[0]].op_type == "Relu"
        and len(explainer.graph.consumers[n.inputs[0]]) == 1
    ][-1]
    at_in = explainer.explain(x, target=[5, 0], layer=conv.inputs[0]).saliency.sum()
    at_out = explainer.explain(x, target=[5, 0], layer=conv.outputs[0]).saliency.sum()
    assert abs(at_in - at_out) <= 1e-4 * abs(at_out)


# -- every method: compiled = numpy, convert runs, rows are independent, no NaN ----------------
@pytest.mark.parametrize("name", ["resnet50_style", "mobilenetv2_style"])
def test_compiled_equals_numpy(onnx_zoo, name):
    _, proto = onnx_zoo.get(name, False)
    x = onnx_zoo.example(name, 2, 2).numpy()
    for method in METHODS:
        a = Explainer(proto, method=method, backend="numpy").explain(x, target=[6, 2])
        b = Explainer(proto, method=method, backend="compiled").explain(x, target=[6, 2])
        _close(b.saliency, a.saliency)


def test_convert_runs_in_plain_onnxruntime(onnx_zoo, convnet):
    ort = pytest.importorskip("onnxruntime")
    from tsgb_onnx.convert import convert

    _, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 2, 3).numpy()
    for method in METHODS:
        options = {"epsilon": 0.01} if method == "lrp_epsilon" else {}
        model = convert(proto, method=method, **options)
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        (saliency,) = session.run(
            ["saliency"], {session.get_inputs()[0].name: x, "target": np.array([1, 8], np.int64)}
        )
        expected = (
            Explainer(proto, method=method, backend="numpy", **options)
            .explain(x, target=[1, 8])
            .saliency
        )
        _close(saliency, expected)


@pytest.mark.parametrize("method", METHODS)
def test_mixed_targets_equal_rows_alone(onnx_zoo, method):
    _, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", 3, 5).numpy()
    explainer = Explainer(proto, method=method)
    together = explainer.explain(x, target=[4, 0, 9]).saliency
    for i, t in enumerate([4, 0, 9]):
        alone = explainer.explain(x[i : i + 1], target=t).saliency[0]
        _close(together[i], alone, rel=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_degenerate_inputs_stay_finite(convnet, method):
    _, proto, _ = convnet
    explainer = Explainer(proto, method=method, backend="numpy")
    x = np.zeros((2, 2, 6, 6), np.float32)
    x[1] = 1.0
    for backend_result in (
        explainer.explain(x, target=[0, 1]),
        Explainer(proto, method=method).explain(x, target=[0, 1]),
    ):
        assert np.isfinite(backend_result.saliency).all()
        assert np.isfinite(backend_result.signal).all()


# -- options and unsupported graphs ---------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1.0, float("nan"), "small", True])
def test_lrp_epsilon_option_is_checked(bad):
    with pytest.raises(MethodError, match="epsilon must be a finite number >= 0"):
        Explainer(small_mlp(), method="lrp_epsilon", epsilon=bad)


def test_ebp_has_no_options():
    with pytest.raises(MethodError, match="has no option 'alpha'"):
        Explainer(small_mlp(), method="ebp", alpha=1.0)


def test_ebp_top_layer_needs():
    with pytest.raises(MethodError, match="contrastive_ebp needs the logits"):
        Explainer(gap_top_net(), method="contrastive_ebp")
    # EBP with a pooling top layer: P[x] = |x| / sum|x| per channel, summing to 1
    x = np.random.default_rng(0).normal(size=(1, 2, 6, 6)).astype(np.float32)
    result = Explainer(gap_top_net(), method="ebp", backend="numpy").explain(x, target=1)
    assert abs(result.saliency.sum() - 1.0) < 1e-4
    with pytest.warns(BaselineWarning, match="top probability is taken as logit x seed"):
        Explainer(relu_top_net(), method="ebp")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaselineWarning)
        Explainer(small_mlp(), method="ebp")

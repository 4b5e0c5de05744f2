"""TSGB from the ONNX engine vs the independent PyTorch reference, and TSGB's properties."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from tsgb_reference import tsgb_saliency

from tsgb_onnx import Explainer, MethodError
from tsgb_onnx.rules.tsgb import TsgbWarning

NETS = [
    "vgg16_style",
    "resnet50_style",
    "densenet_style",
    "mobilenetv2_style",
    "silu_se_net",
    "cnn1d",
    "efficientnet_lite0",
]
ALPHAS = {
    "vgg16_style": 0.8,
    "resnet50_style": 0.9,
    "densenet_style": 1.0,
    "mobilenetv2_style": 1.3,
    "silu_se_net": 0.5,
    "cnn1d": 1.1,
    "efficientnet_lite0": 1.0,
}


def _input(onnx_zoo, photos, name, batch):
    if name == "efficientnet_lite0":
        return np.concatenate([photos["chelsea"], photos["coffee"]])[:batch]
    return onnx_zoo.example(name, batch, 0).numpy()


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
@pytest.mark.parametrize("compat", [False, True], ids=["spec", "reference_compat"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", NETS)
def test_tsgb_matches_reference(onnx_zoo, photos, name, dynamo, compat, backend):
    model, proto = onnx_zoo.get(name, dynamo)
    x = np.asarray(_input(onnx_zoo, photos, name, 2), dtype=np.float32)
    target = [3, 1] if name != "efficientnet_lite0" else [285, 967]
    for alpha in {ALPHAS[name], 1.0}:
        result = Explainer(
            proto, method="tsgb", alpha=alpha, reference_compat=compat, backend=backend
        ).explain(x, target=target)
        expected, signal = tsgb_saliency(model, x, target, alpha=alpha, reference_compat=compat)
        scale = np.abs(expected).max()
        assert scale > 0 and np.isfinite(result.saliency).all()
        assert np.abs(result.saliency - expected).max() <= 1e-4 * scale, (alpha, compat)
        assert np.abs(result.signal - signal).max() <= 1e-4 * np.abs(signal).max()


def test_alpha_changes_the_map(onnx_zoo):
    _, proto = onnx_zoo.get("vgg16_style", False)
    x = onnx_zoo.example("vgg16_style", 1, 0).numpy()
    a = Explainer(proto, method="tsgb", alpha=0.5).explain(x, target=2).saliency
    b = Explainer(proto, method="tsgb", alpha=1.3).explain(x, target=2).saliency
    assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()


def _conserved(explainer, x, target, tensor_in, tensor_out):
    """Sum of signal*activation at a layer's input and at its output, and a scale for it."""
    at_in = explainer.explain(x, target=target, layer=tensor_in).saliency
    at_out = explainer.explain(x, target=target, layer=tensor_out).saliency
    return at_in.sum(dtype=np.float64), at_out.sum(dtype=np.float64), np.abs(at_out).sum()


@pytest.mark.parametrize(
    "op_type,name",
    [
        ("Conv", "vgg16_style"),
        ("Conv", "mobilenetv2_style"),
        ("BatchNormalization", "densenet_style"),
    ],
)
def test_relevance_is_conserved(onnx_zoo, op_type, name):
    _, proto = onnx_zoo.get(name, False)
    explainer = Explainer(proto, method="tsgb")
    x = onnx_zoo.example(name, 1, 3).numpy()
    # conservation holds where the box-sum denominator is non-zero: skip layers fed by
    # ReLU/ReLU6, whose all-zero windows lose their (bias) relevance by design; and the
    # layer's input must have no other consumer (its signal would include theirs)
    graph = explainer.graph
    nodes = [
        n
        for n in graph.nodes
        if n.op_type == op_type
        and len(graph.consumers[n.inputs[0]]) == 1
        and (
            n.inputs[0] not in graph.producer
            or graph.producer[n.inputs[0]].op_type not in ("Relu", "Clip")
        )
    ]
    checked = 0
    for node in nodes[:4]:
        inside, outside, scale = _conserved(explainer, x, 1, node.inputs[0], node.outputs[0])
        assert abs(inside - outside) <= 1e-4 * scale, node.name
        checked += abs(outside) > 0
    assert checked >= 2


class _ConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.copy_(torch.randn(8, generator=g) * 0.3)
            bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(8, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(8, generator=g) * 0.2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def test_bn_folding_does_not_change_the_map(tmp_path):
    model = _ConvBn().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    protos = {}
    for fold in (True, False):
        path = tmp_path / f"m{fold}.onnx"
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=fold,
            input_names=["input"],
            output_names=["logits"],
            training=torch.onnx.TrainingMode.EVAL if fold else torch.onnx.TrainingMode.PRESERVE,
        )
        protos[fold] = path
    kept = Explainer(protos[False], method="tsgb")
    folded = Explainer(protos[True], method="tsgb")
    assert "BatchNormalization" in kept.graph.op_types()
    assert "BatchNormalization" not in folded.graph.op_types()
    a = kept.explain(x.numpy(), target=[0, 3]).saliency
    b = folded.explain(x.numpy(), target=[0, 3]).saliency
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


@pytest.mark.parametrize("name", ["densenet_style", "efficientnet_lite0"])
def test_rows_are_independent(onnx_zoo, photos, name):
    _, proto = onnx_zoo.get(name, False)
    x = _input(onnx_zoo, photos, name, 2)
    explainer = Explainer(proto, method="tsgb")
    target = [4, 2] if name != "efficientnet_lite0" else [967, 285]
    together = explainer.explain(x, target=target).saliency
    for i in range(2):
        alone = explainer.explain(x[i : i + 1], target=target[i]).saliency[0]
        assert np.abs(together[i] - alone).max() <= 1e-5 * np.abs(alone).max()


def test_densenet_avgpool_rows_with_and_without_negatives(onnx_zoo):
    """The eq. 6 AveragePool variant is decided per row: a mixed batch equals its rows."""
    _, proto = onnx_zoo.get("densenet_style", False)
    explainer = Explainer(proto, method="tsgb")
    x = np.concatenate(
        [onnx_zoo.example("densenet_style", 1, 7).numpy(), np.zeros((1, 3, 64, 64), np.float32)]
    )
    together = explainer.explain(x, target=[1, 1]).saliency
    alone = explainer.explain(x[:1], target=1).saliency[0]
    assert np.abs(together[0] - alone).max() <= 1e-5 * np.abs(alone).max()


@pytest.mark.parametrize(
    "name", ["vgg16_style", "densenet_style", "mobilenetv2_style", "silu_se_net"]
)
def test_no_nan_or_inf_on_degenerate_inputs(onnx_zoo, name):
    _, proto = onnx_zoo.get(name, False)
    explainer = Explainer(proto, method="tsgb")
    x = onnx_zoo.example(name, 3, 2).numpy()
    x[0] = 0  # all-zero image
    x[1, 1] = 0  # a zero channel
    x[2, :, :32] = 0  # a zero region
    result = explainer.explain(x, target=[0, 1, 2])
    assert np.isfinite(result.saliency).all() and np.isfinite(result.signal).all()


def test_dead_relus_give_finite_zero_map():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 12 * 12, 3),
    ).eval()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU of the first layer is dead
    from tsgb_onnx.io.export import from_torch

    proto = from_torch(model, torch.randn(1, 3, 16, 16))
    result = Explainer(proto, method="tsgb").explain(
        np.random.rand(2, 3, 16, 16).astype(np.float32)
    )
    assert np.isfinite(result.saliency).all()
    assert np.abs(result.saliency).max() == 0


def test_warns_without_linear_layer():
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    from tsgb_onnx.io.export import from_torch

    proto = from_torch(model, torch.randn(1, 3, 8, 8))
    with pytest.warns(TsgbWarning, match="no linear layer"):
        Explainer(proto, method="tsgb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Explainer(proto, method="gradient")


def test_tsgb_fc_only_on_the_final_linear_layer(onnx_zoo):
    _, proto = onnx_zoo.get("vgg16_style", False)
    program = Explainer(proto, method="tsgb").program()
    labels = [s.rule.label for s in program.steps if s.node.op_type == "Gemm"]
    assert labels == ["tsgb._tsgb_fc", "gradient.gemm", "gradient.gemm"]
    assert all(s.rule.label == "tsgb.tsgb_conv" for s in program.steps if s.node.op_type == "Conv")


def test_map_at_a_layer(onnx_zoo):
    """Maps at any tensor: here the last pooling output, as the paper's Fig. 5/7."""
    _, proto = onnx_zoo.get("vgg16_style", False)
    explainer = Explainer(proto, method="tsgb")
    pool = [n for n in explainer.graph.nodes if n.op_type == "MaxPool"][-1].outputs[0]
    result = explainer.explain(
        onnx_zoo.example("vgg16_style", 2, 0).numpy(), target=[1, 2], layer=pool
    )
    assert result.layer == pool
    assert result.signal.shape == (2, 32, 2, 2) and result.saliency.shape == (2, 2, 2)


def test_bad_alpha_is_rejected(onnx_zoo):
    _, proto = onnx_zoo.get("cnn1d", False)
    with pytest.raises(MethodError, match="alpha"):
        Explainer(proto, method="tsgb", alpha=float("nan"))
    with pytest.raises(MethodError, match="no option 'beta'"):
        Explainer(proto, method="tsgb", beta=1)


def test_target_selectivity_on_two_photos(tmp_path, monkeypatch):
    """chelsea | coffee side by side: TSGB puts each target's mass on its own photo."""
    pytest.importorskip("skimage")
    from tsgb_onnx.io.photos import CAT, ESPRESSO, half_shares, lite0_onnx, two_photo_input

    monkeypatch.setenv("TSGB_CACHE", str(tmp_path))
    _, x = two_photo_input()
    explainer = Explainer(lite0_onnx(size=(224, 448)), method="tsgb")
    result = explainer.explain(np.concatenate([x, x]), target=[CAT, ESPRESSO])
    cat_left, _ = half_shares(result.saliency[0])
    _, cup_right = half_shares(result.saliency[1])
    assert cat_left > 0.9 and cup_right > 0.9


@pytest.mark.parametrize("op", ["LRN", "InstanceNormalization", "BatchNormalization"])
def test_eq6_on_normalisations(op):
    """G[X] = G[Y] * Y / X for the per-element normalisations (eq. 6)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    c = 4
    inits = [numpy_helper.from_array(rng.standard_normal((c * 25, 3)).astype(np.float32), "w")]
    if op == "LRN":
        norm = helper.make_node("LRN", ["x"], ["y"], size=3, alpha=0.5, beta=0.75, bias=1.0)
    else:
        names = ["scale", "bias"] + (["mean", "var"] if op == "BatchNormalization" else [])
        for name in names:
            value = rng.random(c).astype(np.float32) + (0.5 if name in ("scale", "var") else -0.5)
            inits.append(numpy_helper.from_array(value, name))
        norm = helper.make_node(op, ["x"] + names, ["y"], epsilon=1e-3)
    graph = helper.make_graph(
        [
            norm,
            helper.make_node("Flatten", ["y"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "eq6",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 5, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((2, c, 5, 5)).astype(np.float32)
    explainer = Explainer(model, method="tsgb")
    at_x = explainer.explain(x, target=[0, 2])
    at_y = explainer.explain(x, target=[0, 2], layer="y")
    y = explainer.recorder.run(x, ("y",))[1]["y"]
    expected = at_y.signal * y / (x + 1e-10 * np.where(x >= 0, 1, -1))
    np.testing.assert_allclose(at_x.signal, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert [s.rule.label for s in explainer.program().steps if s.node.op_type == op] == [
        "tsgb.tsgb_normalization"
    ]


@pytest.mark.parametrize(
    "groups,m,n", [(1, 6, 4), (2, 6, 4), (6, 6, 6)], ids=["dense", "grouped", "depthwise"]
)
def test_conv_step_shortcuts_equal_the_plain_formula(groups, m, n):
    """TSGB-Conv on a Relu output: |X| = X, and leaving sgn(X) to the Relu's mask gives the
    same signal at the Relu's input (and the shortcut alone does differ where X = 0)."""
    from tsgb_onnx.backends.numpy_ops import NumpyOps
    from tsgb_onnx.ir.geometry import Window
    from tsgb_onnx.rules.tsgb import tsgb_conv_step

    ops = NumpyOps()
    rng = np.random.default_rng(7)
    pre = rng.standard_normal((2, m, 9, 8)).astype(np.float32)
    x = np.maximum(pre, 0)  # the Relu output the conv reads
    win = Window((3, 3), (2, 1), (1, 2), (1, 2, 0, 1))
    y = rng.standard_normal((2, n, 5, 6)).astype(np.float32)
    g = rng.standard_normal((2, n, 5, 6)).astype(np.float32)
    plain = tsgb_conv_step(ops, x, y, g, win, groups)
    fast = tsgb_conv_step(ops, x, y, g, win, groups, nonnegative_x=True, sign_from_producer=True)
    if groups == 1:  # one plane per row, broadcast over the channels by its reader
        assert fast.shape == (2, 1, 9, 8)
        fast = np.broadcast_to(fast, plain.shape)
        # a conv step that receives such a plane as G[Y] equals one that receives it expanded
        plane = rng.standard_normal((2, 1, 9, 8)).astype(np.float32)
        below = np.maximum(rng.standard_normal((2, 3, 11, 10)), 0).astype(np.float32)
        win1 = Window((3, 3), (1, 1), (1, 1), (0, 0, 0, 0))
        np.testing.assert_allclose(
            tsgb_conv_step(ops, below, x, plane, win1, 1),
            tsgb_conv_step(ops, below, x, np.broadcast_to(plane, x.shape).copy(), win1, 1),
            rtol=1e-5,
            atol=1e-7,
        )
    assert fast.shape == plain.shape
    mask = pre > 0
    np.testing.assert_allclose(fast * mask, plain * mask, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(plain[~mask], 0)
    assert np.abs(fast[~mask]).max() > 0  # without the mask the two differ


def test_rectified_and_nonnegative_inputs_are_found(onnx_zoo):
    """The shortcut conditions hold where they should on real exports (so the reference
    tests above run through them): Relu/ReLU6 outputs, and pools of them."""
    from tsgb_onnx.rules.tsgb import nonnegative, rectified_by

    for name, expect_pool in (("vgg16_style", True), ("mobilenetv2_style", False)):
        graph = Explainer(onnx_zoo.get(name, False)[1], method="tsgb").graph
        conv_inputs = [n.inputs[0] for n in graph.nodes if n.op_type == "Conv"]
        assert not rectified_by(graph, graph.input_name)
        assert not nonnegative(graph, graph.input_name)
        assert sum(rectified_by(graph, t) for t in conv_inputs) >= 2
        pooled = [t for t in conv_inputs if nonnegative(graph, t) and not rectified_by(graph, t)]
        assert bool(pooled) == expect_pool, name

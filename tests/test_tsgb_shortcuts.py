"""TSGB's exact shortcuts give the map of the plain rules, and are taken where they apply.

The shortcuts (rules/tsgb.py): sgn(X) left to the rectifier's mask, also through Pads and
MaxPools (`sign_redundant`); a Relu / ReLU6 that feeds TSGB-Conv alone passes its signal
unmasked / with its upper mask only (`_feeds_tsgb_conv_only`). Each case compares with the
same explainer built with the shortcuts off, on both backends; and the canonical graph's
Pad folding keeps the model's function.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_builders import evaluate, fd_vjp, make_model, node

import tsgb_onnx.rules.tsgb as tsgb_rules
from tsgb_onnx import Explainer
from tsgb_onnx.ir.graph import build_graph

ACTIVATIONS = {"relu": None, "relu6": (0.0, 0.5), "clip_below_zero": (-0.2, 0.5)}
MIDDLES = ("none", "pad_reflect", "pad_zero_shared", "maxpool")


def _net(activation: str, middle: str, groups: int, seed: int = 0) -> onnx.ModelProto:
    """X → Conv → act → [middle] → Conv(groups) → act → Conv 1×1 → GAP → Gemm → logits
    (plus a side branch from the Pad for `pad_zero_shared`)."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.5,
        "b1": rng.standard_normal(6).astype(np.float32) * 0.3,
        "w2": rng.standard_normal((6, 6 // groups, 3, 3)).astype(np.float32) * 0.5,
        "w3": rng.standard_normal((4, 6, 1, 1)).astype(np.float32),
        "wf": rng.standard_normal((5, 4)).astype(np.float32),
        "bf": rng.standard_normal(5).astype(np.float32) * 0.1,
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64),
    }
    bounds = ACTIVATIONS[activation]

    def act(src, dst):
        if bounds is None:
            return [node("Relu", [src], [dst])]
        lo, hi = f"lo_{dst}", f"hi_{dst}"
        inits[lo], inits[hi] = np.float32(bounds[0]), np.float32(bounds[1])
        return [node("Clip", [src, lo, hi], [dst])]

    nodes = [node("Conv", ["X", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1])] + act("c1", "a1")
    conv2_pads = [1, 1, 1, 1]
    if middle == "pad_reflect":
        nodes.append(node("Pad", ["a1", "pads"], ["m"], mode="reflect"))
        conv2_pads = [0, 0, 0, 0]
    elif middle == "pad_zero_shared":  # also read elsewhere, so it is not folded into the Conv
        nodes += [
            node("Pad", ["a1", "pads"], ["m"]),
            node("ReduceMean", ["m"], ["mean"], axes=[1, 2, 3], keepdims=1),
            node("Flatten", ["mean"], ["side"]),
        ]
        conv2_pads = [0, 0, 0, 0]
    elif middle == "maxpool":
        nodes.append(
            node("MaxPool", ["a1"], ["m"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1])
        )
    else:
        nodes.append(node("Identity", ["a1"], ["m"]))
    nodes += [node("Conv", ["m", "w2"], ["c2"], pads=conv2_pads, group=groups)] + act("c2", "a2")
    nodes += [
        node("Conv", ["a2", "w3"], ["c3"]),
        node("GlobalAveragePool", ["c3"], ["p"]),
        node("Flatten", ["p"], ["f"]),
        node("Gemm", ["f", "wf", "bf"], ["g"], transB=1),
    ]
    if middle == "pad_zero_shared":
        nodes.append(node("Add", ["g", "side"], ["Y"]))
    else:
        nodes.append(node("Identity", ["g"], ["Y"]))
    return make_model(nodes, x_shape=("N", 3, 8, 8), inits=inits)


def _shortcuts_off(monkeypatch):
    monkeypatch.setattr(tsgb_rules, "sign_redundant", lambda graph, tensor, reads: False)
    monkeypatch.setattr(tsgb_rules, "_feeds_tsgb_conv_only", lambda n: False)


@pytest.mark.filterwarnings("ignore:tsgb. no linear layer")
@pytest.mark.parametrize("backend", ["numpy", "compiled"])
@pytest.mark.parametrize("groups", [1, 6], ids=["dense", "depthwise"])
@pytest.mark.parametrize("middle", MIDDLES)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_shortcuts_give_the_plain_rules_map(activation, middle, groups, backend, monkeypatch):
    model = _net(activation, middle, groups)
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    target = [0, 3, 4]
    fast = Explainer(model, method="tsgb", backend=backend)
    fast_map = fast.explain(x, target=target).saliency
    fast_at_a1 = fast.explain(x, target=target, layer="a1").signal
    with monkeypatch.context() as patch:
        _shortcuts_off(patch)
        plain = Explainer(model, method="tsgb", backend=backend)
        plain_map = plain.explain(x, target=target).saliency
        plain_at_a1 = plain.explain(x, target=target, layer="a1").signal
    scale = np.abs(plain_map).max()
    assert scale > 0
    np.testing.assert_allclose(fast_map, plain_map, rtol=0, atol=1e-5 * scale)
    # where the caller reads the rectified tensor's own signal, it stays exact
    np.testing.assert_allclose(
        fast_at_a1, plain_at_a1, rtol=0, atol=1e-5 * np.abs(plain_at_a1).max()
    )


@pytest.mark.filterwarnings("ignore:tsgb. no linear layer")
@pytest.mark.parametrize("middle", MIDDLES)
def test_shortcuts_are_taken_where_they_apply(middle, monkeypatch):
    """Fewer nodes in the compiled explainer with a rectifier (ReLU, ReLU6) in front of the
    conv, also from the sign shortcut through the Pad or MaxPool (not through an Identity,
    which it does not cross); none saved when the Clip's lower bound is below zero."""
    sign_redundant = tsgb_rules.sign_redundant

    def nodes(activation, off=False, not_through_middle=False):
        with monkeypatch.context() as patch:
            if off:
                _shortcuts_off(patch)
            if not_through_middle:  # the second conv's input "m" keeps its sign
                patch.setattr(
                    tsgb_rules,
                    "sign_redundant",
                    lambda graph, tensor, reads: (
                        tensor != "m" and sign_redundant(graph, tensor, reads)
                    ),
                )
            from tsgb_onnx.convert import convert

            return len(convert(_net(activation, middle, 6), method="tsgb").graph.node)

    for activation in ("relu", "relu6"):
        assert nodes(activation) < nodes(activation, off=True), activation
        through_middle = nodes(activation) < nodes(activation, not_through_middle=True)
        assert through_middle == (middle != "none"), activation
    assert nodes("clip_below_zero") == nodes("clip_below_zero", off=True)


def _pad_conv_model(
    mode="constant",
    value=None,
    pads=(0, 0, 1, 2, 0, 0, 2, 1),
    consumer="Conv",
    auto_pad=None,
    pad_is_output=False,
):
    rng = np.random.default_rng(3)
    channels = 3 + pads[1] + pads[5]
    inits = {
        "w": rng.standard_normal((4, channels, 3, 3)).astype(np.float32),
        "pads": np.array(pads, dtype=np.int64),
    }
    pad_inputs = ["X", "pads"]
    if value is not None:
        inits["value"] = np.float32(value)
        pad_inputs.append("value")
    conv_attrs = {"auto_pad": auto_pad} if auto_pad else {"pads": [1, 0, 0, 1]}
    nodes = [node("Pad", pad_inputs, ["P"], mode=mode)]
    if consumer == "Conv":
        nodes.append(node("Conv", ["P", "w"], ["Y"], **conv_attrs))
    else:
        nodes += [
            node("Conv", ["P", "w"], ["C"], **conv_attrs),
            node("Relu", ["P"], ["R"]),
            node("ReduceSum", ["R"], ["S"], keepdims=1),
            node("Add", ["C", "S"], ["Y"]),
        ]
    model = make_model(nodes, x_shape=(2, 3, 7, 6), inits=inits)
    if pad_is_output:
        shape = [2, 3] + [n + pads[a] + pads[a + 4] for a, n in ((2, 7), (3, 6))]
        model.graph.output.append(helper.make_tensor_value_info("P", TensorProto.FLOAT, shape))
    return model


def _canonical(model):
    return build_graph(model, output="Y").model


def test_zero_pad_is_folded_into_the_conv():
    model = _pad_conv_model(value=0.0)
    folded = _canonical(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    conv = folded.graph.node[0]
    assert conv.input[0] == "X"
    assert list(
        helper.get_attribute_value(next(a for a in conv.attribute if a.name == "pads"))
    ) == [1 + 1, 0 + 2, 0 + 2, 1 + 1]
    assert "pads" not in {t.name for t in folded.graph.initializer}
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    np.testing.assert_allclose(evaluate(folded, x), evaluate(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    [
        dict(mode="reflect"),
        dict(value=0.5),
        dict(pads=(0, 1, 1, 1, 0, 0, 1, 1)),
        dict(consumer="Relu"),
        dict(auto_pad="SAME_UPPER"),
        dict(pad_is_output=True),
        dict(pads=(0, 0, -1, 0, 0, 0, 1, 1)),
    ],
    ids=[
        "reflect",
        "nonzero-value",
        "channel-pad",
        "also-feeds-relu",
        "auto-pad",
        "graph-output",
        "crop",
    ],
)
def test_other_pads_are_kept(case):
    model = _pad_conv_model(**case)
    folded = _canonical(model)
    assert "Pad" in [n.op_type for n in folded.graph.node]
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    np.testing.assert_allclose(evaluate(folded, x), evaluate(model, x), rtol=1e-5, atol=1e-5)


def test_gradient_through_a_folded_pad_matches_finite_differences():
    """The exact gradient on the canonical graph (Pad folded) against central differences
    of the original graph (Pad kept) in ONNX Runtime."""
    rng = np.random.default_rng(5)
    inits = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "pads": np.array([0, 0, 2, 0, 0, 0, 1, 3], dtype=np.int64),
    }
    model = make_model(
        [
            node("Pad", ["X", "pads"], ["P"]),
            node("Conv", ["P", "w"], ["C"], strides=[2, 1], pads=[0, 1, 1, 0]),
            node("GlobalAveragePool", ["C"], ["G"]),
            node("Flatten", ["G"], ["Y"]),
        ],
        x_shape=("N", 3, 7, 6),
        inits=inits,
    )
    assert "Pad" not in [n.op_type for n in _canonical(model).graph.node]
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    target = [1, 3]
    got = Explainer(model, method="gradient").explain(x, target=target).signal
    seed = np.eye(4, dtype=np.float32)[target]
    # the model is linear in X, so a large step is exact up to float32 rounding
    expected = fd_vjp(model, x, seed, eps32=0.5, richardson=False)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bound", [6.0, 0.5, 1e-3, 3.0000002, 1e5, 1e-30, 7.0e37])
def test_mask_below_is_exact_in_onnx_runtime(bound):
    """The emitter's HardSigmoid mask: 1 for every float below the bound, 0 at the bound."""
    import onnxruntime as ort

    from tsgb_onnx.backends.onnx_ops import GraphBuilder, OnnxOps, Sym

    b = np.float32(bound)
    below = [np.nextafter(b, np.float32(-np.inf))]
    for _ in range(40):
        below.append(np.nextafter(below[-1], np.float32(-np.inf)))
    y = np.array(
        [
            b,
            b,
            b / 2,
            np.nextafter(b / 2, np.float32(np.inf)),
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            -5.0,
            -3e38,
        ]
        + below,
        dtype=np.float32,
    )
    g = np.random.default_rng(0).standard_normal(y.shape).astype(np.float32) + 2
    builder = GraphBuilder(17, {"y", "g"})
    ops = OnnxOps(builder)
    out = ops.mask_below(Sym("g", y.shape, np.float32), Sym("y", y.shape, np.float32), bound)
    assert [n.op_type for n in builder.nodes] == ["HardSigmoid", "Mul"]
    graph = helper.make_graph(
        builder.nodes,
        "mask",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(y.shape)) for n in ("y", "g")],
        [helper.make_tensor_value_info(out.name, TensorProto.FLOAT, list(y.shape))],
        builder.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    got = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    ).run(None, {"y": y, "g": g})[0]
    np.testing.assert_array_equal(got, g * (y < b))

"""What map methods plan when an explainer is built, and which layer Grad-CAM reads.

1. A map method plans its backward from the logits down to the tensors it reads only: an op
   without a backward rule below Grad-CAM's layer does not matter, and an error names the
   method the user chose, not the `gradient` backward it reads.
2. Grad-CAM's default layer is a block output (a tensor every path from the input to the
   logits passes through) with the input's spatial axes; a token tensor is refused.
3. `tsgb inspect` names an op without a rule and says which methods need it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx_builders import make_model, node

from tsgb_onnx import Explainer, MethodError, UnsupportedOpError
from tsgb_onnx.cli.main import main
from tsgb_onnx.engine.program import live_tensors
from tsgb_onnx.ir.graph import build_graph
from tsgb_onnx.methods.cam import LAYOUT_OPS, block_outputs, default_cam_layer
from tsgb_onnx.rules.gradient import GRADIENT

CLASSES = 10
RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _no_rule_op() -> str:
    """A float op ONNX Runtime runs that has no gradient rule (the test's unsupported op)."""
    for op in ("Round", "Sin", "Cos", "Tan", "Atan"):
        if GRADIENT.lookup(op) is None:
            return op
    pytest.skip("every candidate op has a gradient rule now")


def _conv(x: str, out: str, w: str, pad: int = 1) -> onnx.NodeProto:
    return node("Conv", [x, w], [out], name=out, pads=[pad] * 4)


def _head(x: str, channels: int) -> tuple[list, dict]:
    """GlobalAveragePool -> Flatten -> Gemm to the logits Y."""
    nodes = [
        node("GlobalAveragePool", [x], ["gap"], name="gap"),
        node("Flatten", ["gap"], ["flat"], name="flat", axis=1),
        node("Gemm", ["flat", "Wf"], ["Y"], name="fc", transB=1),
    ]
    return nodes, {"Wf": _w(CLASSES, channels)}


def _model(nodes, inits, x_shape=("N", 3, 8, 8)) -> onnx.ModelProto:
    return make_model(nodes, x_shape, inits, y_shape=("N", CLASSES))


@pytest.fixture(scope="module")
def odd_op() -> str:
    return _no_rule_op()


@pytest.fixture(scope="module")
def early_odd(odd_op) -> onnx.ModelProto:
    """conv c1 -> an op without a rule ('odd_node') -> conv c2 -> relu r2 -> a two-branch
    block (p, q) -> Add -> Relu 'blk' -> head."""
    nodes = [
        _conv("X", "c1", "W1"),
        node(odd_op, ["c1"], ["odd"], name="odd_node"),
        _conv("odd", "c2", "W2"),
        node("Relu", ["c2"], ["r2"], name="r2"),
        _conv("r2", "p", "Wp", pad=0),
        _conv("r2", "q", "Wq"),
        node("Add", ["p", "q"], ["sum"], name="sum"),
        node("Relu", ["sum"], ["blk"], name="blk"),
    ]
    head, head_w = _head("blk", 4)
    inits = {"W1": _w(4, 3, 3, 3), "W2": _w(4, 4, 3, 3), "Wp": _w(4, 4, 1, 1), "Wq": _w(4, 4, 3, 3)}
    return _model(nodes + head, {**inits, **head_w})


def _x(rows: int = 2, shape=(3, 8, 8)) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((rows, *shape)).astype(np.float32)


def _head_weights(model: onnx.ModelProto) -> np.ndarray:
    return next(
        onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "Wf"
    ).astype(np.float64)


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message, message
    return message


# -- 1. map methods plan down to the layers they read ------------------------------------------
def test_gradient_is_refused_naming_gradient(early_odd, odd_op):
    with pytest.raises(UnsupportedOpError) as info:
        Explainer(early_odd, method="gradient")
    message = _one_line(info.value)
    assert "method 'gradient'" in message and f"node 'odd_node' ({odd_op}, float)" in message


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
def test_gradcam_above_the_op_works(early_odd, backend):
    explainer = Explainer(early_odd, method="gradcam", backend=backend)
    x = _x()
    result = explainer.explain(x, target=[3, 7])
    assert result.layer == "blk" and result.saliency.shape == (2, 8, 8)
    assert np.isfinite(result.saliency).all() and result.saliency.max() > 0
    # the planned backward is right: d logit_t / d blk = W_f[t] / 64 at every position
    _, _, taken = explainer.signals(x, [3, 7], ["blk"])
    activation, signal = taken["blk"]
    want = np.broadcast_to(_head_weights(early_odd)[[3, 7], :, None, None] / 64, signal.shape)
    np.testing.assert_allclose(signal, want, rtol=1e-5, atol=1e-7)
    cam = np.maximum((signal.mean(axis=(2, 3), keepdims=True) * activation).sum(1), 0)
    raw = explainer.explain(x, target=[3, 7], upsample="none").saliency
    np.testing.assert_allclose(raw, cam, rtol=1e-4, atol=1e-6)


def test_gradcam_at_a_layer_between_op_and_logits_works(early_odd):
    result = Explainer(early_odd, method="gradcam", layer="r2").explain(_x())
    assert result.layer == "r2" and result.saliency.shape == (2, 8, 8)


def test_gradcam_below_the_op_is_refused_naming_gradcam(early_odd, odd_op):
    with pytest.raises(UnsupportedOpError) as info:
        Explainer(early_odd, method="gradcam", layer="c1")
    message = _one_line(info.value)
    assert message.startswith(f"gradcam: node 'odd_node' ({odd_op}, float) has no backward rule")
    assert "method 'gradient'" not in message and "layer 'c1'" in message
    assert "choose a layer between it and the logits" in message
    assert info.value.nodes == [("odd_node", odd_op)]


def test_a_layer_given_to_explain_below_the_op_is_refused_naming_gradcam(early_odd):
    explainer = Explainer(early_odd, method="gradcam")
    with pytest.raises(UnsupportedOpError) as info:
        explainer.explain(_x(), layer="c1")
    message = _one_line(info.value)
    assert message.startswith("gradcam: node 'odd_node'") and "method 'gradient'" not in message


@pytest.mark.parametrize(
    "method, options",
    [
        ("groupcam", {"groups": 2, "blur_size": 3}),
        ("normgrad", {}),
        ("selective_normgrad", {}),
        ("smoothgrad", {"base": "gradcam", "n": 2}),
    ],
)
def test_map_methods_at_a_layer_above_the_op_work(early_odd, method, options):
    result = Explainer(early_odd, method=method, **options).explain(_x())
    assert result.saliency.shape == (2, 8, 8) and np.isfinite(result.saliency).all()


@pytest.mark.parametrize(
    "method, options, says",
    [
        ("fullgrad", {}, "fullgrad: node 'odd_node'"),
        ("smoothgrad", {"n": 2}, "smoothgrad: node 'odd_node'"),
        ("integrated_gradients", {"steps": 2}, "integrated_gradients: node 'odd_node'"),
        ("meta_saliency", {}, "meta_saliency: node 'odd_node'"),
        ("normgrad", {"meta_saliency": True}, "normgrad: node 'odd_node'"),
        ("smoothgrad", {"base": "gradcam", "layer": "c1"}, "its base gradcam reads"),
    ],
)
def test_map_methods_that_need_the_input_gradient_are_refused_naming_them(
    early_odd, method, options, says
):
    with pytest.raises(UnsupportedOpError) as info:
        Explainer(early_odd, method=method, **options)
    message = _one_line(info.value)
    assert says in message and message.startswith(f"{method}: "), message
    assert "method 'gradient'" not in message


def test_with_options_keeps_the_planning(early_odd):
    explainer = Explainer(early_odd, method="gradcam").with_options(upsample="none")
    assert explainer.explain(_x()).saliency.shape == (2, 8, 8)
    with pytest.raises(UnsupportedOpError, match="^gradcam: "):
        Explainer(early_odd, method="gradcam").with_options(layer="c1")


# -- 2. the default Grad-CAM layer ---------------------------------------------------------------
def _old_default(graph) -> str:
    """The rule before: the last live tensor (not a layout op's) with spatial size > 1."""
    live, best = live_tensors(graph), None
    for n in graph.nodes:
        if n.op_type in LAYOUT_OPS:
            continue
        for out in n.outputs:
            shape = graph.shapes.get(out)
            if out not in live or not shape or len(shape) < 3:
                continue
            dims = shape[2:]
            if not all(isinstance(d, int) for d in dims) or np.prod(dims) > 1:
                best = out
    return best


def _two_blocks(join: str) -> onnx.ModelProto:
    """Block 1: r -> branches p (1x1) and q (3x3) -> Add or Concat -> Relu 'blk1' (8x8).
    Block 2, down to 1x1: u (8x8 conv) and v (1x1 conv at 8x8, then 8x8 conv) -> Concat."""
    channels = 8 if join == "Concat" else 4
    join_node = (
        node("Concat", ["p", "q"], ["joined"], name="joined", axis=1)
        if join == "Concat"
        else node("Add", ["p", "q"], ["joined"], name="joined")
    )
    nodes = [
        _conv("X", "c", "Wc"),
        node("Relu", ["c"], ["r"], name="r"),
        _conv("r", "p", "Wp", pad=0),
        _conv("r", "q", "Wq"),
        join_node,
        node("Relu", ["joined"], ["blk1"], name="blk1"),
        _conv("blk1", "u", "Wu", pad=0),
        _conv("blk1", "v1", "Wv1", pad=0),
        _conv("v1", "v", "Wv", pad=0),
        node("Concat", ["u", "v"], ["blk2"], name="blk2", axis=1),
    ]
    head, head_w = _head("blk2", 8)
    inits = {
        "Wc": _w(4, 3, 3, 3),
        "Wp": _w(4, 4, 1, 1),
        "Wq": _w(4, 4, 3, 3),
        "Wu": _w(4, channels, 8, 8),
        "Wv1": _w(4, channels, 1, 1),
        "Wv": _w(4, 4, 8, 8),
    }
    return _model(nodes + head, {**inits, **head_w})


@pytest.mark.parametrize("join", ["Add", "Concat"])
def test_default_layer_is_the_block_output_not_a_branch(join):
    graph = build_graph(_two_blocks(join))
    assert _old_default(graph) == "v1"  # the old rule: a branch inside block 2
    assert block_outputs(graph) == ["c", "r", "joined", "blk1", "blk2", "gap", "flat", "Y"]
    assert default_cam_layer(graph) == "blk1"
    result = Explainer(_two_blocks(join), method="gradcam").explain(_x())
    assert result.layer == "blk1" and result.saliency.shape == (2, 8, 8)


def _token_net() -> onnx.ModelProto:
    """Patch embedding 'pe' [N, 6, 2, 2] -> tokens [N, 4, 6] -> token MLP 'tok' -> mean over
    tokens -> Gemm."""
    nodes = [
        node("Conv", ["X", "We"], ["pe"], name="pe", kernel_shape=[4, 4], strides=[4, 4]),
        node("Reshape", ["pe", "shape"], ["flat_pe"], name="flat_pe"),
        node("Transpose", ["flat_pe"], ["tokens"], name="tokens", perm=[0, 2, 1]),
        node("MatMul", ["tokens", "Wt"], ["mixed"], name="mixed"),
        node("Relu", ["mixed"], ["tok"], name="tok"),
        node("ReduceMean", ["tok"], ["pooled"], name="pooled", axes=[1], keepdims=0),
        node("Gemm", ["pooled", "Wf"], ["Y"], name="fc", transB=1),
    ]
    inits = {
        "We": _w(6, 3, 4, 4),
        "shape": np.array([0, 6, 4], dtype=np.int64),
        "Wt": _w(6, 6),
        "Wf": _w(CLASSES, 6),
    }
    return _model(nodes, inits)


def test_token_net_default_layer_is_the_patch_embedding():
    model = _token_net()
    graph = build_graph(model)
    assert _old_default(graph) == "tok"  # the old rule: a token tensor [N, 4, 6]
    assert default_cam_layer(graph) == "pe"
    for method in ("gradcam", "groupcam", "normgrad"):
        options = {"groups": 2, "blur_size": 3} if method == "groupcam" else {}
        result = Explainer(model, method=method, **options).explain(_x(3))
        assert result.saliency.shape == (3, 8, 8), method


@pytest.mark.parametrize("method", ["gradcam", "groupcam", "normgrad"])
def test_a_token_tensor_layer_is_refused_in_one_line(method):
    explainer = Explainer(_token_net(), method=method)
    with pytest.raises(MethodError) as info:
        explainer.explain(_x(), layer="tok")
    message = _one_line(info.value)
    assert message.startswith(f"{method}: layer 'tok' has shape (2, 4, 6)")
    assert "token tensor" in message and "e.g. 'pe' (the default)" in message


def test_channels_last_export_default_is_the_channels_first_map():
    """A Keras-style NHWC graph: the feature map before its channels-last Transpose."""
    nodes = [
        node("Transpose", ["X"], ["nchw"], name="nchw", perm=[0, 3, 1, 2]),
        _conv("nchw", "c", "Wc"),
        node("Relu", ["c"], ["feat"], name="feat"),
        node("Transpose", ["feat"], ["nhwc"], name="nhwc", perm=[0, 2, 3, 1]),
        node("ReduceMean", ["nhwc"], ["pooled"], name="pooled", axes=[1, 2], keepdims=0),
        node("Gemm", ["pooled", "Wf"], ["Y"], name="fc", transB=1),
    ]
    model = _model(nodes, {"Wc": _w(4, 3, 3, 3), "Wf": _w(CLASSES, 4)}, ("N", 8, 8, 3))
    assert default_cam_layer(build_graph(model)) == "feat"
    result = Explainer(model, method="gradcam").explain(_x(2, (8, 8, 3)))
    assert result.saliency.shape == (2, 8, 8)


# -- timm: Inception v3 at 96 px, ViT-Tiny at 64 px (random weights, one export each) ----------
def _timm_export(name: str, size: int, **kwargs) -> onnx.ModelProto:
    torch = pytest.importorskip("torch")
    from torchvision_compat import ensure_torchvision

    ensure_torchvision()
    timm = pytest.importorskip("timm")
    from tsgb_onnx.io.export import from_torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)
    return from_torch(model.eval(), torch.zeros(1, 3, size, size))


@pytest.fixture(scope="module")
def inception_96():
    return _timm_export("inception_v3", 96)


@pytest.fixture(scope="module")
def vit_64():
    return _timm_export("vit_tiny_patch16_224", 64, img_size=64)


def test_inception_default_layer_is_a_block_output(inception_96):
    graph = build_graph(inception_96)
    layer = default_cam_layer(graph)
    assert layer in block_outputs(graph)
    assert graph.producer[layer].op_type == "Concat"  # an Inception block's output
    assert tuple(graph.shapes[layer][2:]) == (4, 4)  # Mixed_7* are 1x1 at 96 px
    old = _old_default(graph)
    assert old != layer and old not in block_outputs(graph)  # the old rule: a branch


def test_vit_default_layer_is_the_patch_embedding_and_maps_are_images(vit_64):
    graph = build_graph(vit_64)
    layer = default_cam_layer(graph)
    assert graph.producer[layer].op_type == "Conv" and layer in block_outputs(graph)
    assert tuple(graph.shapes[layer][1:]) == (192, 4, 4)
    explainer = Explainer(vit_64, method="gradcam")
    result = explainer.explain(_x(2, (3, 64, 64)))
    assert result.layer == layer and result.saliency.shape == (2, 64, 64)
    token = _old_default(graph)
    assert len(graph.shapes[token]) == 3  # the old rule's choice: a token tensor
    with pytest.raises(MethodError, match="token tensor"):
        explainer.explain(_x(2, (3, 64, 64)), layer=token)


# -- 3. tsgb inspect names the op and says which methods need it --------------------------------
def _inspect(capsys, path, *argv) -> tuple[int, str, str]:
    code = main(["inspect", str(path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_names_an_op_below_the_cam_layer(capsys, tmp_path, early_odd, odd_op):
    path = tmp_path / "odd.onnx"
    onnx.save(early_odd, str(path))
    code, out, err = _inspect(capsys, path, "--method", "gradient")
    assert code == 0, err
    line = next(line for line in out.splitlines() if "node 'odd_node'" in line)
    assert f"node 'odd_node' ({odd_op}): on the backward path to the input 'X'" in line
    assert "cannot explain this model" in line
    assert "below the default Grad-CAM layer 'blk' (Relu)" in line
    assert "gradcam, groupcam and normgrad at that layer do not need it" in line
    assert "method 'gradient': refused: node 'odd_node'" in out
    assert "program: none ('gradient' is refused" in out

    code, out, err = _inspect(capsys, path, "--method", "gradcam")
    assert code == 0, err
    assert "method 'gradcam': every op on its backward path (from the logits down to " in out
    assert "down to layer 'blk') has a rule" in out
    code, out, err = _inspect(capsys, path, "--method", "gradcam", "--layer", "c1")
    assert code == 0, err
    assert "method 'gradcam': refused: node 'odd_node'" in out and "layer 'c1'" in out

    code, out, err = _inspect(capsys, path, "--method", "tsgb", "--program")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "node 'odd_node'" in lines[0], err


def test_inspect_tensors_marks_the_layers_below_an_op_without_a_rule(capsys, tmp_path, early_odd):
    """--tensors: 'c1' (below 'odd_node') is marked refused, the others are choices; every
    listed mark agrees with what explaining at that layer does."""
    path = tmp_path / "odd.onnx"
    onnx.save(early_odd, str(path))
    code, out, err = _inspect(capsys, path, "--method", "gradcam", "--tensors")
    assert code == 0, err
    assert "! = below an op without a 'gradient' rule: refused" in out
    marks = {
        line[3:].split()[0]: line[1]
        for line in out.splitlines()
        if line[:3] in ("   ", " * ", " ! ")
    }
    assert marks["c1"] == "!" and marks["blk"] == "*"
    assert {t for t, m in marks.items() if m == "!"} == {"c1"}
    explainer = Explainer(early_odd, method="gradcam")
    for tensor in ("c1", "odd", "r2"):
        if marks[tensor] == "!":
            with pytest.raises(UnsupportedOpError, match="odd_node"):
                explainer.explain(_x(), target=0, layer=tensor)
        else:
            assert np.isfinite(explainer.explain(_x(), target=0, layer=tensor).saliency).all()
    # every tensor is a choice when no op lacks a rule
    clean = tmp_path / "clean.onnx"
    head, head_w = _head("c1", 4)
    onnx.save(_model([_conv("X", "c1", "W1"), *head], {"W1": _w(4, 3, 3, 3), **head_w}), str(clean))
    code, out, err = _inspect(capsys, clean, "--tensors")
    assert code == 0 and " ! " not in out and "! =" not in out, err


def test_inspect_names_an_op_above_the_cam_layer(capsys, tmp_path, odd_op):
    nodes = [
        _conv("X", "c", "Wc"),
        node("Relu", ["c"], ["blk"], name="blk"),
        node("GlobalAveragePool", ["blk"], ["gap"], name="gap"),
        node(odd_op, ["gap"], ["odd"], name="odd_node"),
        node("Flatten", ["odd"], ["flat"], name="flat", axis=1),
        node("Gemm", ["flat", "Wf"], ["Y"], name="fc", transB=1),
    ]
    path = tmp_path / "late.onnx"
    onnx.save(_model(nodes, {"Wc": _w(4, 3, 3, 3), "Wf": _w(CLASSES, 4)}), str(path))
    code, out, err = _inspect(capsys, path, "--method", "gradcam")
    assert code == 0, err
    line = next(line for line in out.splitlines() if "node 'odd_node'" in line)
    assert "between the default Grad-CAM layer 'blk' (Relu) and the logits" in line
    assert "method 'gradcam': refused" in out
    with pytest.raises(UnsupportedOpError, match="^gradcam: node 'odd_node'"):
        Explainer(str(path), method="gradcam")


def test_inspect_without_unsupported_ops_says_so(capsys, tmp_path):
    path = tmp_path / "plain.onnx"
    onnx.save(_two_blocks("Add"), str(path))
    code, out, err = _inspect(capsys, path)
    assert code == 0, err
    assert "backward path: every op from the logits to the input has a 'tsgb' rule" in out
    assert "method 'tsgb': every op on its backward path (from the logits down to " in out
    assert "down to the input 'X') has a rule" in out
    assert "program: " in out and "steps" in out

"""Regressions from the model zoo (issue 19), each on a small stand-in for the zoo model:

* a Slice over the dynamic batch axis (tf2onnx's Cropping2D, Keras NASNetMobile) in the
  compiled explainer; an untyped failure while compiling is a `ModelError` naming the node;
* TF-"SAME" pads computed from the input's shape (timm's `tf_*` models) folded at load, and
  refused when the Explainer is built where the size is truly dynamic;
* the channels-last input of a Keras export without tsgb metadata (Rescaling first, one
  channel), and a one-line refusal where the graph cannot tell;
* a Keras model tf2onnx cannot export (ConvNeXt) as one line naming the model and layer.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx_builders import make_model, node

from tsgb_onnx import Explainer, InputError, ModelError
from tsgb_onnx.backends.onnx_ops import OnnxOps
from tsgb_onnx.explainer import EngineFallbackWarning
from tsgb_onnx.io.export import attach_metadata
from tsgb_onnx.ir.graph import build_graph

INT_MAX = np.iinfo(np.int64).max
RNG = np.random.default_rng(19)


def _weights(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


def _head(x: str, channels: int, classes: int = 4) -> tuple[list, dict]:
    """Conv 3x3 -> Relu -> GlobalAveragePool -> Flatten -> Gemm from `x` to Y."""
    nodes = [
        node("Conv", [x, "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        node("Relu", ["c"], ["r"]),
        node("GlobalAveragePool", ["r"], ["p"]),
        node("Flatten", ["p"], ["f"]),
        node("Gemm", ["f", "fw", "fb"], ["Y"], transB=1),
    ]
    inits = {
        "w": _weights(5, channels, 3, 3),
        "b": _weights(5),
        "fw": _weights(classes, 5),
        "fb": _weights(classes),
    }
    return nodes, inits


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- 1. a Slice over the dynamic batch axis ------------------------------------------------------


def _batch_slice_model(ends0: int) -> onnx.ModelProto:
    """A crop of H and W (tf2onnx's Cropping2D) whose Slice also names the batch axis, with
    end `ends0` on it (INT_MAX: the whole axis)."""
    nodes, inits = _head("s", 3)
    crop = node("Slice", ["X", "starts", "ends", "axes"], ["s"], name="crop")
    inits.update(
        starts=np.array([0, 1, 1], np.int64),
        ends=np.array([ends0, -1, -1], np.int64),
        axes=np.array([0, 2, 3], np.int64),
    )
    return make_model([crop, *nodes], ["N", 3, 8, 8], inits)


def test_whole_batch_slice_compiles():
    model = _batch_slice_model(INT_MAX)
    x = RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineFallbackWarning)
        compiled = Explainer(model, method="gradient", backend="compiled").explain(x, target=1)
        auto = Explainer(model, method="tsgb").explain(x, target=1)
    engine = Explainer(model, method="gradient", backend="numpy").explain(x, target=1)
    np.testing.assert_allclose(compiled.saliency, engine.saliency, rtol=1e-5, atol=1e-6)
    tsgb_engine = Explainer(model, method="tsgb", backend="numpy").explain(x, target=1)
    np.testing.assert_allclose(auto.saliency, tsgb_engine.saliency, rtol=1e-4, atol=1e-6)
    assert compiled.saliency.shape == (3, 8, 8)


def test_batch_cutting_slice_is_a_model_error_naming_the_node():
    model = _batch_slice_model(1)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ModelError) as exc:
        Explainer(model, method="gradient", backend="compiled").explain(x, target=0)
    message = _one_line(exc)
    assert "'crop' (Slice)" in message and "batch" in message
    with pytest.warns(EngineFallbackWarning, match="crop") as caught:
        got = Explainer(model, method="gradient").explain(x, target=0)
    assert len([w for w in caught if w.category is EngineFallbackWarning]) == 1
    want = Explainer(model, method="gradient", backend="numpy").explain(x, target=0)
    np.testing.assert_allclose(got.saliency, want.saliency, rtol=1e-6)


def test_untyped_compiler_failure_falls_back_once(monkeypatch):
    def broken(self, *args, **kwargs):
        raise TypeError("'<' not supported between instances of 'Batch' and 'int'")

    monkeypatch.setattr(OnnxOps, "scatter_slices", broken)
    model = _batch_slice_model(INT_MAX)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ModelError) as exc:
        Explainer(model, method="gradient", backend="compiled").explain(x, target=0)
    message = _one_line(exc)
    assert "'crop' (Slice)" in message and "TypeError" in message
    explainer = Explainer(model, method="gradient")
    with pytest.warns(EngineFallbackWarning, match="TypeError") as caught:
        got = explainer.explain(x, target=0)
        explainer.explain(x, target=1)
    assert len([w for w in caught if w.category is EngineFallbackWarning]) == 1
    want = Explainer(model, method="gradient", backend="numpy").explain(x, target=0)
    np.testing.assert_allclose(got.saliency, want.saliency, rtol=1e-6)


# -- 2. TF-"SAME" pads computed from the input's shape -------------------------------------------


def _same_pad_model(spatial: tuple) -> onnx.ModelProto:
    """Pads of (size - 1) mod 2 at the end of H and W computed from the shape of an inner
    tensor (timm's pad_same: its shape is known only once shapes are inferred), and a
    Reshape whose target reads the batch from that shape."""
    nodes, inits = _head("padded", 3)
    chain = [
        node("Conv", ["X", "w0"], ["h"]),
        node("Shape", ["h"], ["shape"]),
        node("Gather", ["shape", "hw_index"], ["hw"], axis=0),
        node("Sub", ["hw", "one"], ["hw1"]),
        node("Mod", ["hw1", "two"], ["extra"]),
        node("Concat", ["zeros6", "extra"], ["pads"], axis=0),
        node("Pad", ["h", "pads"], ["padded"], name="same_pad"),
        # a batch read: Shape -> Gather(0) -> the Reshape of the logits
        node("Gather", ["shape", "zero"], ["batch"], axis=0),
        node("Concat", ["batch", "classes"], ["target_shape"], axis=0),
    ]
    nodes[-1].output[0] = "logits"
    nodes.append(node("Reshape", ["logits", "target_shape"], ["Y"]))
    inits.update(
        w0=_weights(3, 3, 1, 1),
        hw_index=np.array([2, 3], np.int64),
        one=np.array(1, np.int64),
        two=np.array(2, np.int64),
        zeros6=np.zeros(6, np.int64),
        zero=np.array([0], np.int64),
        classes=np.array([4], np.int64),
    )
    return make_model(chain + nodes, ["N", 3, *spatial], inits)


def test_same_pads_of_a_static_size_are_folded_at_load():
    model = _same_pad_model((8, 9))
    graph = build_graph(model)
    assert "Mod" not in graph.op_types()  # the pads' chain is constant
    assert "Pad" not in graph.op_types()  # and the zero pad went into the Conv
    assert "Shape" in graph.op_types()  # the batch entry is not folded
    for batch in (1, 3):
        x = RNG.standard_normal((batch, 3, 8, 9)).astype(np.float32)
        got = Explainer(model, method="gradient").explain(x, target=2)
        want = Explainer(model, method="gradient", backend="numpy").explain(x, target=2)
        assert got.saliency.shape == (batch, 8, 9)
        np.testing.assert_allclose(got.saliency, want.saliency, rtol=1e-5, atol=1e-6)


def test_same_pads_of_a_dynamic_size_are_refused_when_built():
    model = _same_pad_model(("H", "W"))
    with pytest.raises(ModelError) as exc:
        Explainer(model, method="gradient", backend="numpy")
    message = _one_line(exc)
    assert "'same_pad' (Pad)" in message and "pads must be a constant to be differentiated" in (
        message
    )


@pytest.fixture(scope="module")
def timm_tf_model():
    torch = pytest.importorskip("torch")
    from torchvision_compat import ensure_torchvision

    ensure_torchvision()
    timm = pytest.importorskip("timm")
    from tsgb_onnx.io.export import from_torch

    torch.manual_seed(0)
    model = timm.create_model("tf_mobilenetv3_small_100", pretrained=False, num_classes=10)
    return from_torch(model.eval(), torch.zeros(1, 3, 64, 64))


def test_timm_tf_model_explains(timm_tf_model):
    x = RNG.standard_normal((2, 3, 64, 64)).astype(np.float32)
    explainer = Explainer(timm_tf_model)
    pads = [n for n in explainer.graph.nodes if n.op_type == "Pad"]
    assert all(n.is_const(1) for n in pads)  # every TF-"SAME" pad is a constant now
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineFallbackWarning)
        got = explainer.explain(x)
    assert got.saliency.shape == (2, 64, 64) and np.isfinite(got.saliency).all()
    want = Explainer(timm_tf_model, backend="numpy").explain(x, target=got.target)
    np.testing.assert_allclose(
        got.saliency, want.saliency, rtol=1e-3, atol=1e-5 * np.abs(want.saliency).max()
    )


# -- 3. the channels-last input without metadata -------------------------------------------------


def _stripped(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.metadata_props[:]
    return out


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    return pytest.importorskip("keras")


def _keras_cnn(keras, shape: tuple, first=None):
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape, name="input")
    h = first(inp) if first is not None else inp
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(3)(h))


@pytest.mark.parametrize("case", ["rescaling", "normalization", "one_channel"])
def test_channels_last_without_metadata(keras, case):
    from tsgb_onnx.io.export import from_keras

    shape = (16, 12, 1) if case == "one_channel" else (16, 12, 3)
    first = {
        "rescaling": keras.layers.Rescaling(1 / 127.5, offset=-1),
        "normalization": keras.layers.Normalization(mean=[0.4, 0.5, 0.6], variance=[1, 2, 3]),
        "one_channel": None,
    }[case]
    proto = from_keras(_keras_cnn(keras, shape, first))
    bare = _stripped(proto)
    graph = build_graph(bare)
    assert graph.channel_axis(graph.input_name) == -1
    x = RNG.standard_normal((2, *shape)).astype(np.float32)
    got = Explainer(bare, method="gradient").explain(x, target=1)
    want = Explainer(proto, method="gradient").explain(x, target=1)
    assert got.saliency.shape == (2, 16, 12)
    np.testing.assert_allclose(got.saliency, want.saliency, rtol=1e-6)


def _mlp_on(shape: tuple) -> onnx.ModelProto:
    size = int(np.prod(shape))
    nodes = [
        node("Flatten", ["X"], ["f"]),
        node("Gemm", ["f", "w", "b"], ["Y"], transB=1),
    ]
    return make_model(nodes, ["N", *shape], {"w": _weights(2, size), "b": _weights(2)})


def test_undecidable_layout_is_refused_with_the_way_to_state_it():
    model = _mlp_on((3, 5, 3))  # RGB on both sides, nothing in the graph to tell
    x = RNG.standard_normal((2, 3, 5, 3)).astype(np.float32)
    with pytest.raises(InputError) as exc:
        Explainer(model, method="gradient").explain(x, target=0)
    message = _one_line(exc)
    assert "attach_metadata(model, layout=" in message
    stated = attach_metadata(model, layout="nhwc")
    got = Explainer(stated, method="gradient").explain(x, target=0)
    assert got.saliency.shape == (2, 3, 5)
    # shapes that tell: channels on one side only
    assert build_graph(_mlp_on((7, 5, 3))).input_layout() == "nhwc"
    assert build_graph(_mlp_on((1, 5, 7))).input_layout() == "nchw"


def test_a_layer_after_a_transpose_and_activations_is_channels_last():
    """Conv -> Transpose to NHWC -> Relu -> Sigmoid / Add -> Transpose back: the Relu and
    Add outputs are channels-last though no consumer of theirs is a Transpose; Grad-CAM
    there averages the gradient over H, W and sums over the last axis."""
    nodes = [
        node("Conv", ["X", "w"], ["c"], pads=[1, 1, 1, 1]),
        node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
        node("Relu", ["t"], ["r"]),
        node("Sigmoid", ["r"], ["s"]),
        node("Add", ["r", "s"], ["a"]),
        node("Transpose", ["a"], ["b"], perm=[0, 3, 1, 2]),
        node("GlobalAveragePool", ["b"], ["p"]),
        node("Flatten", ["p"], ["f"]),
        node("Gemm", ["f", "g", "h"], ["Y"], transB=1),
    ]
    inits = {"w": _weights(6, 3, 3, 3), "g": _weights(4, 6), "h": _weights(4)}
    model = make_model(nodes, ["N", 3, 8, 10], inits)
    graph = build_graph(model)
    assert [graph.channel_axis(t) for t in ("c", "t", "r", "s", "a", "b")] == [1, -1, -1, -1, -1, 1]
    x = RNG.standard_normal((2, 3, 8, 10)).astype(np.float32)
    _, _, taken = Explainer(model, method="gradient").signals(x, target=[1, 3], layers=["r"])
    activation, signal = taken["r"]  # [2, 8, 10, 6]
    want = np.maximum((signal.mean(axis=(1, 2), keepdims=True) * activation).sum(-1), 0)
    got = Explainer(model, method="gradcam", layer="r").explain(x, target=[1, 3]).saliency
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


# -- 4. a Keras model tf2onnx cannot export ------------------------------------------------------


def test_keras_model_tf2onnx_cannot_convert_is_one_line(keras):
    """ConvNeXt's depthwise Conv2D(groups=C) and exact GELU, in a tiny model: tf2onnx
    leaves a call and Erfc in the graph (every opset, and from a SavedModel too)."""
    from tsgb_onnx.io.export import from_keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4), name="input")
    h = keras.layers.Conv2D(4, 3, padding="same", groups=4, name="depthwise_conv")(inp)
    h = keras.layers.Activation("gelu", name="gelu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(3)(h), name="tiny_convnext")
    with pytest.raises(ModelError) as exc:
        from_keras(model)
    message = _one_line(exc)
    assert "'tiny_convnext'" in message
    assert "layer 'depthwise_conv'" in message and "layer 'gelu'" in message
    assert "from_torch" in message


def test_cli_layout_flag_states_an_undecidable_layout(tmp_path, capsys):
    """`tsgb explain --layout nhwc` explains a model whose layout the graph cannot tell;
    without it the command stops with the one-line way to state it."""
    from tsgb_onnx.cli.main import main

    model = attach_metadata(_mlp_on((3, 5, 3)), size=(3, 5))  # other metadata is kept
    path = tmp_path / "mlp.onnx"
    path.write_bytes(model.SerializeToString())
    x = tmp_path / "x.npy"
    np.save(x, RNG.standard_normal((1, 3, 5, 3)).astype(np.float32))
    assert (
        main(
            ["explain", str(path), str(x), "--method", "gradient", "--out", str(tmp_path / "a.npy")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "layout" in err
    out = tmp_path / "m.npy"
    code = main(
        [
            "explain",
            str(path),
            str(x),
            "--method",
            "gradient",
            "--layout",
            "nhwc",
            "--target",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert np.load(out).shape == (1, 3, 5)  # the .npy batch, one map per row

"""Exporters: metadata, missing frameworks, and the same net through PyTorch and Keras.

The round trip builds one small CNN twice, in PyTorch (NCHW) and in Keras (NHWC), with the
same weights, exports both (`from_torch`, `from_keras` via tf2onnx) and checks that TSGB and
the gradient give the same map for the same image. The Keras, JAX and Paddle tests skip when
their framework is not installed.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from tsgb_onnx import Explainer, InputError, TsgbError, available_methods
from tsgb_onnx.io.export import attach_metadata, from_jax, from_keras, from_paddle, read_metadata
from tsgb_onnx.io.preprocess import Preprocessing

torch = pytest.importorskip("torch")
nn = torch.nn

SIZE = 32
CLASSES = 5


def torch_cnn(seed: int = 0):
    """Conv-ReLU-MaxPool-Conv-ReLU-Flatten-Linear with non-zero biases (32x32 input)."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, CLASSES),
    )
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 10
            p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def torch_model():
    from tsgb_onnx.io.export import from_torch

    net = torch_cnn()
    proto = from_torch(
        net,
        torch.zeros(1, 3, SIZE, SIZE),
        preprocess="tf",
        labels=[f"class {i}" for i in range(CLASSES)],
    )
    return net, proto


@pytest.fixture(scope="module")
def image_batch():
    return np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


# --------------------------------------------------------------------------- metadata


def test_from_torch_stores_metadata(torch_model):
    _, proto = torch_model
    meta = read_metadata(proto)
    prep = json.loads(meta["tsgb.preprocess"])
    assert prep["size"] == [SIZE, SIZE] and prep["layout"] == "nchw"
    assert prep["mean"] == [0.5, 0.5, 0.5] and prep["std"] == [0.5, 0.5, 0.5]
    assert json.loads(meta["tsgb.labels"]) == [f"class {i}" for i in range(CLASSES)]
    # the metadata survives loading, and the explainer's graph keeps it
    ex = Explainer(proto, method="gradient")
    kept = {p.key: p.value for p in ex.graph.model.metadata_props}
    assert Preprocessing.from_json(kept["tsgb.preprocess"]).hw == (SIZE, SIZE)


def test_attach_metadata_validates_and_replaces(torch_model):
    import onnx

    _, proto = torch_model
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    attach_metadata(copy, "caffe", labels="imagenet", size=(40, 48))
    meta = read_metadata(copy)
    assert json.loads(meta["tsgb.preprocess"])["channel_order"] == "bgr"
    assert json.loads(meta["tsgb.preprocess"])["size"] == [40, 48]
    assert len(json.loads(meta["tsgb.labels"])) == 1000
    assert sum(p.key == "tsgb.labels" for p in copy.metadata_props) == 1  # replaced, not added
    with pytest.raises(InputError, match="unknown preprocessing preset 'vgg'"):
        attach_metadata(copy, "vgg")
    with pytest.raises(InputError, match="--std values must be positive"):
        attach_metadata(copy, {"std": (0, 1, 1)})


# --------------------------------------------------------------------------- missing frameworks


@pytest.mark.parametrize(
    "module, call, extra",
    [
        ("tensorflow", lambda: from_keras(object()), "keras"),
        ("jax2onnx", lambda: from_jax(lambda p, x: x, None, np.zeros((1, 2))), "jax"),
        ("paddle2onnx", lambda: from_paddle(object(), np.zeros((1, 2))), "paddle"),
    ],
)
def test_missing_framework_names_the_extra(module, call, extra):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed")
    with pytest.raises(TsgbError) as info:
        call()
    message = str(info.value)
    assert f"tsgb-onnx[{extra}]" in message and "\n" not in message


# --------------------------------------------------------------------------- Keras round trip


def keras_twin(net):
    """The Keras (NHWC) twin of `torch_cnn` with the same weights."""
    keras = pytest.importorskip("keras")
    conv1, conv2, fc = net[0], net[3], net[6]
    inp = keras.Input((SIZE, SIZE, 3), name="input")
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inp)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(CLASSES)(h)
    model = keras.Model(inp, out)
    layers = [layer for layer in model.layers if layer.weights]

    def conv_weights(conv):  # [out, in, kh, kw] → [kh, kw, in, out]
        return [conv.weight.detach().numpy().transpose(2, 3, 1, 0), conv.bias.detach().numpy()]

    # torch flattens (C, H, W), Keras (H, W, C): reorder the dense rows to match
    w = fc.weight.detach().numpy().reshape(CLASSES, 4, 16, 16).transpose(2, 3, 1, 0)
    layers[0].set_weights(conv_weights(conv1))
    layers[1].set_weights(conv_weights(conv2))
    layers[2].set_weights([w.reshape(-1, CLASSES), fc.bias.detach().numpy()])
    return model


@pytest.fixture(scope="module")
def keras_model(torch_model):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    net, _ = torch_model
    model = keras_twin(net)
    return model, from_keras(model, preprocess="tf", labels=[f"class {i}" for i in range(CLASSES)])


def test_keras_export_metadata(keras_model):
    _, proto = keras_model
    prep = json.loads(read_metadata(proto)["tsgb.preprocess"])
    assert prep["layout"] == "nhwc" and prep["size"] == [SIZE, SIZE]


def test_keras_logits_match_torch(keras_model, torch_model, image_batch):
    model, proto = keras_model
    net, _ = torch_model
    with torch.no_grad():
        expected = net(torch.from_numpy(image_batch)).numpy()
    got = Explainer(proto, method="gradient").infer(image_batch.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# options that keep every method cheap on the 32x32 twin (SmoothGrad without noise: its noise
# is drawn in the input's layout, so NCHW and NHWC copies would differ)
TWIN_OPTIONS = {
    "groupcam": {"groups": 4},
    "smoothgrad": {"n": 2, "sigma": 0.0},
    "integrated_gradients": {"steps": 4},
}


@pytest.mark.parametrize("method", available_methods())
def test_same_map_through_torch_and_keras(keras_model, torch_model, image_batch, method):
    """Every method gives the same map for the PyTorch export and its NHWC Keras twin
    (map methods included: their default feature map must be found behind Keras's
    channels-last Transpose)."""
    _, keras_proto = keras_model
    _, torch_proto = torch_model
    targets = [2, 4]  # classes for which every method's map is non-zero on these images
    options = TWIN_OPTIONS.get(method, {})
    ref = (
        Explainer(torch_proto, method=method, **options)
        .explain(image_batch, target=targets)
        .saliency
    )
    got = (
        Explainer(keras_proto, method=method, **options)
        .explain(image_batch.transpose(0, 2, 3, 1), target=targets)
        .saliency
    )
    assert got.shape == ref.shape == (2, SIZE, SIZE)  # the image's geometry, channels summed
    top = np.abs(ref).max()
    assert top > 0
    assert np.abs(got - ref).max() <= 1e-4 * top


def test_channels_last_feature_map_as_gradcam_layer(keras_model, torch_model, image_batch):
    """A channels-last tensor given as the layer (the Transpose before Keras's Flatten) is
    read with its channels last: the same Grad-CAM as the PyTorch twin's feature map."""
    _, keras_proto = keras_model
    _, torch_proto = torch_model
    keras_ex = Explainer(keras_proto, method="gradcam")
    nhwc = next(
        n.outputs[0]
        for n in keras_ex.graph.nodes
        if n.op_type == "Transpose" and n.inputs[0] != keras_ex.graph.input_name
    )
    assert keras_ex.graph.channel_axis(nhwc) == -1
    ref = Explainer(torch_proto, method="gradcam").explain(image_batch, target=[0, 2]).saliency
    got = keras_ex.explain(image_batch.transpose(0, 2, 3, 1), target=[0, 2], layer=nhwc).saliency
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_keras_model_through_the_cli(keras_model, torch_model, tmp_path, capsys):
    """No preprocessing flags: layout, size and scaling come from the Keras export's metadata."""
    from PIL import Image

    from tsgb_onnx.cli.main import main

    _, keras_proto = keras_model
    _, torch_proto = torch_model
    import onnx

    paths = {"keras": tmp_path / "k.onnx", "torch": tmp_path / "t.onnx"}
    onnx.save(keras_proto, str(paths["keras"]))
    onnx.save(torch_proto, str(paths["torch"]))
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 40, 3), np.uint8)).save(photo)
    maps = {}
    for kind, path in paths.items():
        out = tmp_path / f"{kind}.npy"
        assert (
            main(["explain", str(path), str(photo), "--target", "class 2", "--out", str(out)]) == 0
        )
        maps[kind] = np.load(out)
    capsys.readouterr()
    top = np.abs(maps["torch"]).max()
    assert top > 0 and np.abs(maps["keras"] - maps["torch"]).max() <= 1e-4 * top


# --------------------------------------------------------------------------- JAX and Paddle


def test_jax_export_matches_numpy(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    pytest.importorskip("jax2onnx")
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3 * 8 * 8, CLASSES)).astype(np.float32)}

    def fn(p, x):  # a linear classifier on NHWC images
        return jnp.reshape(x, (x.shape[0], -1)) @ p["w"]

    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    proto = from_jax(fn, params, x, layout="nhwc")
    ex = Explainer(proto, method="gradient")
    np.testing.assert_allclose(ex.infer(x), x.reshape(2, -1) @ params["w"], rtol=1e-4, atol=1e-4)
    res = ex.explain(x, target=[0, 4])
    expected = params["w"][:, [0, 4]].T.reshape(2, 8, 8, 3)  # d logit_t / d x
    np.testing.assert_allclose(res.signal, expected, rtol=1e-5, atol=1e-6)
    assert json.loads(read_metadata(proto)["tsgb.preprocess"])["layout"] == "nhwc"
    # no Transpose shows the channel axis here: the CLI takes it from the layout metadata
    import onnx

    from tsgb_onnx.cli.main import main

    onnx.save(proto, str(tmp_path / "jax.onnx"))
    np.save(tmp_path / "x.npy", x)
    assert (
        main(
            [
                "explain",
                str(tmp_path / "jax.onnx"),
                str(tmp_path / "x.npy"),
                "--method",
                "gradient",
                "--target",
                "0,4",
                "--out",
                str(tmp_path / "s.npy"),
            ]
        )
        == 0
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "s.npy"), (expected * x).sum(-1), rtol=1e-4, atol=1e-5
    )


def test_paddle_export_matches_paddle(tmp_path):
    paddle = pytest.importorskip("paddle")
    pytest.importorskip("paddle2onnx")
    paddle.seed(0)
    layer = paddle.nn.Sequential(
        paddle.nn.Conv2D(3, 4, 3, padding=1),
        paddle.nn.ReLU(),
        paddle.nn.Flatten(),
        paddle.nn.Linear(4 * 8 * 8, CLASSES),
    )
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    proto = from_paddle(layer, x)
    expected = layer(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(Explainer(proto).infer(x), expected, rtol=1e-4, atol=1e-4)

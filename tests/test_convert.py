"""`tsgb convert`: the explainer model, run in a plain ONNX Runtime session, equals the engine.

The oracle is the NumPy engine (`Explainer(..., backend="numpy")`), itself checked against
PyTorch autograd, finite differences and the independent TSGB reference elsewhere.
"""

import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import make_model
from onnx_builders import node as N
from test_rules_fd import ALL, TIES

from tsgb_onnx import Explainer, MethodError, ModelError, UnsupportedOpError
from tsgb_onnx.cli.main import main
from tsgb_onnx.convert import ConvertWarning, convert, convert_vjp

NETS = [
    "vgg16_style",
    "resnet50_style",
    "densenet_style",
    "mobilenetv2_style",
    "silu_se_net",
    "cnn1d",
    "efficientnet_lite0",
]


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A plain ONNX Runtime session: no tsgb_onnx code on the path."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def close(got, expected, tol=1e-4):
    scale = np.abs(expected).max()
    assert scale > 0 and np.isfinite(got).all()
    err = np.abs(got - expected).max()
    assert err <= tol * scale, f"max |diff| {err:.3g} > {tol} x max |map| {scale:.3g}"


def _batch(onnx_zoo, photos, name, batch):
    if name == "efficientnet_lite0":
        return np.concatenate([photos["chelsea"], photos["coffee"], photos["chelsea"]])[:batch]
    return onnx_zoo.example(name, batch, 2).numpy()


@pytest.mark.parametrize("method", ["gradient", "tsgb"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", NETS)
def test_explainer_model_matches_engine(onnx_zoo, photos, name, dynamo, method):
    _, proto = onnx_zoo.get(name, dynamo)
    x = _batch(onnx_zoo, photos, name, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(proto, method=method, keep_signal=True)
        engine = Explainer(proto, method=method, backend="numpy")
    sess = session(model)
    classes = engine.infer(x).shape[1]
    mixed = np.array([1 % classes, -1, 4 % classes], dtype=np.int64)  # -1: that row's top-1
    saliency, signal, logits = sess.run(
        ["saliency", "signal", "logits"], {"input": x, "target": mixed}
    )
    top1 = engine.infer(x).argmax(1)
    expected = engine.explain(x, target=np.where(mixed < 0, top1, mixed))
    close(saliency, expected.saliency)
    close(signal, expected.signal)
    np.testing.assert_allclose(logits, expected.logits, rtol=1e-5, atol=1e-5)
    # target -1: top-1 per row
    (saliency,) = sess.run(["saliency"], {"input": x, "target": np.array([-1])})
    close(saliency, engine.explain(x).saliency)


def test_explainer_model_properties(onnx_zoo):
    _, proto = onnx_zoo.get("resnet50_style", False)
    model = convert(proto, method="tsgb", alpha=0.7)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == proto.ir_version
    assert [o.version for o in model.opset_import] == [o.version for o in proto.opset_import]
    domains = {n.domain for n in model.graph.node}
    assert domains <= {"", "ai.onnx"}  # standard ops only
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["tsgb_onnx.explainer"] == "tsgb" and '"alpha": 0.7' in meta["tsgb_onnx.options"]
    sal = model.graph.output[-1]
    assert sal.name == "saliency"
    assert sal.type.tensor_type.shape.dim[0].dim_param  # dynamic batch kept
    sess = session(model)
    engine = Explainer(proto, method="tsgb", alpha=0.7, backend="numpy")
    for batch in (1, 5):  # any batch size
        x = onnx_zoo.example("resnet50_style", batch, 3).numpy()
        (saliency,) = sess.run(["saliency"], {"input": x, "target": np.full(batch, 2)})
        close(saliency, engine.explain(x, target=2).saliency)
    # one target for every row, and an out-of-range target gives a NaN row (never a silent map)
    x = onnx_zoo.example("resnet50_style", 3, 3).numpy()
    (one,) = sess.run(["saliency"], {"input": x, "target": np.array([2])})
    close(one, engine.explain(x, target=2).saliency)
    (bad,) = sess.run(["saliency"], {"input": x, "target": np.array([2, 10, 2])})
    assert np.isnan(bad[1]).all() and np.isfinite(bad[[0, 2]]).all()
    # a target of another length than 1 or the batch: every row NaN, no runtime error
    for wrong in ([2, 2], [], [1, 2, 3, 4]):
        (rows,) = sess.run(["saliency"], {"input": x, "target": np.array(wrong, np.int64)})
        assert rows.shape == one.shape and np.isnan(rows).all()


def test_target_is_an_input_every_runtime_lists(onnx_zoo):
    """Serving stacks build their feeds from `get_inputs()`: `target` is a real input; the
    optional form (default top-1) is an overridable initializer instead."""
    _, proto = onnx_zoo.get("vgg16_style", False)
    x = onnx_zoo.example("vgg16_style", 2, 3).numpy()
    engine = Explainer(proto, method="gradient", backend="numpy")
    required = session(convert(proto, method="gradient"))
    inputs = {i.name: i for i in required.get_inputs()}
    assert set(inputs) == {"input", "target"} and inputs["target"].type == "tensor(int64)"
    (got,) = required.run(["saliency"], {"input": x, "target": np.array([3, -1])})
    close(got, engine.explain(x, target=[3, int(engine.infer(x)[1].argmax())]).saliency)
    optional = session(convert(proto, method="gradient", optional_target=True))
    assert [i.name for i in optional.get_inputs()] == ["input"]
    assert [i.name for i in optional.get_overridable_initializers()] == ["target"]
    (unfed,) = optional.run(["saliency"], {"input": x})
    close(unfed, engine.explain(x).saliency)


def test_map_at_a_layer(onnx_zoo):
    _, proto = onnx_zoo.get("vgg16_style", False)
    engine = Explainer(proto, method="tsgb", backend="numpy")
    layer = [n for n in engine.graph.nodes if n.op_type == "MaxPool"][-1].outputs[0]
    model = convert(proto, method="tsgb", layer=layer, keep_signal=True)
    x = onnx_zoo.example("vgg16_style", 2, 1).numpy()
    saliency, signal = session(model).run(
        ["saliency", "signal"], {"input": x, "target": np.array([-1])}
    )
    expected = engine.explain(x, layer=layer)
    assert saliency.shape == expected.saliency.shape and saliency.shape[1:] != (64, 64)
    close(saliency, expected.saliency)
    close(signal, expected.signal)


@pytest.mark.parametrize("spec", ALL)
def test_every_gradient_rule_emits(spec):
    """The vjp model of every finite-difference case equals the engine's vjp."""
    model = spec.model()
    rng = np.random.default_rng(len(spec.id))
    x = spec.x(rng, spec.x_shape)
    engine = Explainer(model, method="gradient", backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvertWarning)  # opset < 13 models are upgraded
        vjp_model = convert_vjp(model, method="gradient")
    y = session(model).run(None, {"X": x})[0]
    seed = rng.standard_normal(y.shape).astype(np.float32)
    (got,) = session(vjp_model).run(["signal"], {"X": x, "seed": seed})
    expected = engine.vjp(x, seed)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * (np.abs(expected).max() + 1))


@pytest.mark.parametrize("nd, p", TIES)
def test_maxpool_ties_route_to_the_first_maximum(nd, p):
    spatial = {1: (9,), 2: (7, 7), 3: (4, 4, 5)}[nd]
    rng = np.random.default_rng(7 + nd)
    x = rng.integers(0, 3, (2, 2) + spatial).astype(np.float32)
    k, s, d = p["kernel"], p["stride"], p["dil"]
    model = make_model(
        [
            N(
                "MaxPool",
                ["X"],
                ["Y"],
                kernel_shape=[k] * nd,
                strides=[s] * nd,
                dilations=[d] * nd,
                pads=[p["pad"]] * (2 * nd),
                ceil_mode=int(p["ceil"]),
            )
        ],
        x.shape,
    )
    sess = session(convert_vjp(model))
    y_shape = session(model).run(None, {"X": x})[0].shape
    seed = rng.standard_normal(y_shape).astype(np.float32)
    (got,) = sess.run(["signal"], {"X": x, "seed": seed})
    np.testing.assert_allclose(
        got, Explainer(model, "gradient", backend="numpy").vjp(x, seed), rtol=1e-6, atol=1e-6
    )


def _small_tsgb_net(op: str, x_shape=(2, 4, 6, 6)):
    """Conv (grouped) -> op -> Relu -> GAP -> Gemm: TSGB-Conv, eq. 6 and TSGB-FC together."""
    rng = np.random.default_rng(5)
    inits = {
        "W": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "F": rng.standard_normal((4, 5)).astype(np.float32),
    }
    nodes = [N("Conv", ["X", "W"], ["c"], group=2, pads=[1, 1, 1, 1], strides=[2, 1])]
    if op == "BatchNormalization":
        for k, v in {
            "s": rng.uniform(0.5, 2, 4),
            "b": rng.standard_normal(4),
            "m": rng.standard_normal(4),
            "v": rng.uniform(0.5, 2, 4),
        }.items():
            inits[k] = v.astype(np.float32)
        nodes.append(N(op, ["c", "s", "b", "m", "v"], ["n"]))
    elif op == "InstanceNormalization":
        inits["s"] = rng.uniform(0.5, 2, 4).astype(np.float32)
        inits["b"] = rng.standard_normal(4).astype(np.float32)
        nodes.append(N(op, ["c", "s", "b"], ["n"]))
    elif op == "LRN":
        nodes.append(N(op, ["c"], ["n"], size=3))
    elif op == "AveragePool":
        nodes.append(
            N(op, ["c"], ["n"], kernel_shape=[2, 2], pads=[1, 1, 0, 0], count_include_pad=1)
        )
    nodes += [
        N("Relu", ["n"], ["r"]),
        N("GlobalAveragePool", ["r"], ["g"]),
        N("Flatten", ["g"], ["f"]),
        N("Gemm", ["f", "F"], ["Y"]),
    ]
    return make_model(nodes, x_shape, inits)


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize(
    "op", ["BatchNormalization", "InstanceNormalization", "LRN", "AveragePool"]
)
def test_tsgb_rules_emit(op, compat):
    model = _small_tsgb_net(op)
    x = np.random.default_rng(9).standard_normal((2, 4, 6, 6)).astype(np.float32)
    x[1] = np.abs(x[1])  # one row without negatives: AveragePool's exact branch
    engine = Explainer(model, method="tsgb", alpha=1.3, reference_compat=compat, backend="numpy")
    (saliency,) = session(convert(model, "tsgb", alpha=1.3, reference_compat=compat)).run(
        ["saliency"], {"X": x, "target": np.array([1, 3])}
    )
    close(saliency, engine.explain(x, target=[1, 3]).saliency)


def test_opset_upgrade_is_said(onnx_zoo):
    """MaxPool's backward needs ScatterElements(add), opset 16: an opset-13 model is upgraded."""
    rng = np.random.default_rng(2)
    model = make_model(
        [
            N("Conv", ["X", "W"], ["c"], pads=[1, 1, 1, 1]),
            N("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
            N("Flatten", ["p"], ["f"]),
            N("Gemm", ["f", "F"], ["Y"]),
        ],
        (1, 3, 8, 8),
        {
            "W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "F": rng.standard_normal((36, 5)).astype(np.float32),
        },
        opset=13,
    )
    with pytest.warns(ConvertWarning, match="opset 13 to 16"):
        explainer = convert(model, method="gradient")
    assert [o.version for o in explainer.opset_import if o.domain == ""] == [16]
    meta = {p.key: p.value for p in explainer.metadata_props}
    assert meta["tsgb_onnx.opset_upgraded_from"] == "13"
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    (saliency,) = session(explainer).run(["saliency"], {"X": x, "target": np.array([2])})
    close(saliency, Explainer(model, "gradient", backend="numpy").explain(x, 2).saliency)


def test_refusals(onnx_zoo):
    _, proto = onnx_zoo.get("cnn1d", False)
    explainer = convert(proto, method="gradient")
    with pytest.raises(ModelError, match="already an explainer"):
        convert(explainer)
    sin = make_model([N("Sin", ["X"], ["e"]), N("Flatten", ["e"], ["Y"])], (1, 4))
    with pytest.raises(UnsupportedOpError, match="node 'sin"):
        convert(sin)
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(proto)
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "length"
    with pytest.raises(ModelError, match="dynamic size on axis 2"):
        convert(dynamic)
    named = make_model([N("Relu", ["X"], ["saliency"]), N("Flatten", ["saliency"], ["Y"])], (1, 4))
    with pytest.raises(ModelError, match="already has a tensor named 'saliency'"):
        convert(named)
    per_row = np.zeros(
        (3,) + tuple(d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]),
        np.float32,
    )
    with pytest.raises(ModelError, match="one row per image"):
        convert(proto, method="deeplift", baseline=per_row)
    with pytest.raises(MethodError, match="'gradcam' is not one backward pass"):
        convert(proto, method="gradcam")


def test_cli_convert(tmp_path, onnx_zoo):
    _, proto = onnx_zoo.get("cnn1d", False)
    src = tmp_path / "cnn1d.onnx"
    onnx.save(proto, str(src))
    out = tmp_path / "cnn1d_tsgb.onnx"
    assert main(["convert", str(src), "-o", str(out), "--alpha", "0.5", "--keep-signal"]) == 0
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output][-2:] == ["saliency", "signal"]
    x = onnx_zoo.example("cnn1d", 2, 0).numpy()
    (saliency,) = session(model).run(["saliency"], {"input": x, "target": np.array([0, 3])})
    close(
        saliency, Explainer(proto, "tsgb", alpha=0.5, backend="numpy").explain(x, [0, 3]).saliency
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "{tmp}/x.txt"], "must end in .onnx"),
        (["-o", "{tmp}/missing/x.onnx"], "does not exist"),
        (["-o", "{src}"], "names the input model"),
        (["-o", "{tmp}/x.onnx", "--method", "nope"], "nope"),
        (["-o", "{tmp}/x.onnx", "--layer", "nope"], "layer 'nope'"),
    ],
)
def test_cli_convert_errors(tmp_path, onnx_zoo, args, message):
    _, proto = onnx_zoo.get("cnn1d", False)
    src = tmp_path / "m.onnx"
    onnx.save(proto, str(src))
    args = [a.format(tmp=tmp_path, src=src) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "tsgb_onnx.cli", "convert", str(src)] + args,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tsgb: error:") and message in lines[0]


def test_explainer_backends_agree_and_fall_back(onnx_zoo):
    """`auto` uses the compiled explainer; a model with a dynamic image size falls back."""
    _, proto = onnx_zoo.get("vgg16_style", False)
    auto = Explainer(proto, method="tsgb")
    x = onnx_zoo.example("vgg16_style", 2, 5).numpy()
    close(
        auto.explain(x, [1, 2]).saliency,
        Explainer(proto, method="tsgb", backend="numpy").explain(x, [1, 2]).saliency,
    )
    assert auto._compiled[(None, ())] is not None
    # a graph whose image size is dynamic: the engine runs it
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "W")
    f = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "F")
    g = helper.make_graph(
        [
            N("Conv", ["X", "W"], ["c"]),
            N("Relu", ["c"], ["r"]),
            N("GlobalAveragePool", ["r"], ["p"]),
            N("Flatten", ["p"], ["q"]),
            N("Gemm", ["q", "F"], ["Y"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", 4])],
        [w, f],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    dyn = Explainer(model, method="tsgb")
    result = dyn.explain(np.random.default_rng(0).standard_normal((1, 3, 7, 9)).astype(np.float32))
    assert result.saliency.shape == (1, 7, 9) and dyn._compiled[(None, ())] is None
    with pytest.raises(ModelError, match="dynamic size"):
        Explainer(model, method="tsgb", backend="compiled").explain(
            np.zeros((1, 3, 7, 9), np.float32)
        )


@pytest.mark.parametrize("net", ["densenet_style", "resnet50_style"])
def test_deeplift_converts_with_its_reference_pass(onnx_zoo, net):
    """DeepLIFT's reference forward pass is a renamed copy of the model's nodes in the
    explainer: the converted model, the compiled explainer and the NumPy engine agree."""
    _, proto = onnx_zoo.get(net, False)
    x = onnx_zoo.example(net, batch=2, seed=5).numpy()
    baseline = np.full((1,) + x.shape[1:], 0.25, np.float32)
    engine = Explainer(proto, method="deeplift", baseline=baseline, backend="numpy")
    expected = engine.explain(x, target=[1, 6])
    compiled = Explainer(proto, method="deeplift", baseline=baseline, backend="compiled")
    got = compiled.explain(x, target=[1, 6])
    scale = np.abs(expected.saliency).max()
    assert np.abs(got.saliency - expected.saliency).max() <= 1e-4 * scale
    np.testing.assert_allclose(got.activation, x - baseline, atol=1e-6)
    explainer = convert(proto, method="deeplift", baseline=baseline)
    (saliency,) = session(explainer).run(
        ["saliency"], {"input": x, "target": np.array([1, 6], np.int64)}
    )
    assert np.abs(saliency - expected.saliency).max() <= 1e-4 * scale

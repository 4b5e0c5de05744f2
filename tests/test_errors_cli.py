"""Error handling of the public API and the command line (`tsgb explain`, `tsgb inspect`).

Every failure a user can cause must raise one typed `TsgbError` with a message that says
what is wrong; the CLI turns it into exit code 2 and exactly one "tsgb: error:" line on
stderr, never a traceback.  The happy paths of the CLI are checked against the API.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tsgb_onnx import (
    Explainer,
    InputError,
    MethodError,
    ModelError,
    TargetError,
    TsgbError,
    UnsupportedOpError,
)
from tsgb_onnx.cli.main import main

NET = "vgg16_style"  # input [B, 3, 64, 64], 10 classes
CLASSES = 10


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(onnx_zoo, tmp_path_factory):
    """The exported net (dynamic batch) and broken variants, each written once."""
    _, proto = onnx_zoo.get(NET, dynamo=False)
    root = tmp_path_factory.mktemp("errors_cli")
    data = proto.SerializeToString()
    paths = {
        "model": root / "vgg.onnx",
        "truncated": root / "truncated.onnx",
        "text": root / "notes.onnx",
        "missing": root / "no_such_model.onnx",
    }
    paths["model"].write_bytes(data)
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["text"].write_text("this is a plain text file, not an ONNX model\n")
    return paths


@pytest.fixture(scope="module")
def model_path(files):
    return str(files["model"])


@pytest.fixture(scope="module")
def x2(onnx_zoo):
    return onnx_zoo.example(NET, batch=2, seed=3).numpy()


@pytest.fixture(scope="module")
def gradient_explainer(model_path):
    return Explainer(model_path, method="gradient")


@pytest.fixture(scope="module")
def fixed_batch_path(onnx_zoo, tmp_path_factory):
    """The same net exported with a FIXED batch of 1 (no dynamic_axes)."""
    import torch

    model = onnx_zoo.torch_model(NET).eval()
    path = tmp_path_factory.mktemp("fixed_batch") / "fixed.onnx"
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (onnx_zoo.example(NET, batch=1),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
    return str(path)


@pytest.fixture(scope="module")
def npy_input(x2, tmp_path_factory):
    path = tmp_path_factory.mktemp("npy") / "batch.npy"
    np.save(path, x2)
    return str(path)


@pytest.fixture(scope="module")
def photo_png(tmp_path_factory):
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea", "coffee"):
        path = root / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        paths.append(str(path))
    return paths


# --------------------------------------------------------------------------- tiny graphs


def _model(nodes, x_shape, outputs, inits=None, opset=17):
    """Model with float input X; `outputs` maps each graph output to its shape."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, list(shape))
            for o, shape in outputs.items()
        ],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- model loading


def test_text_file_is_model_error(files):
    with pytest.raises(ModelError) as info:
        Explainer(files["text"])
    msg = str(info.value)
    assert str(files["text"]) in msg and "ONNX" in msg


def test_truncated_file_is_model_error(files):
    with pytest.raises(ModelError) as info:
        Explainer(files["truncated"])
    msg = str(info.value)
    assert str(files["truncated"]) in msg and "truncated" in msg.lower()


def test_missing_path_is_model_error(files):
    with pytest.raises(ModelError) as info:
        Explainer(str(files["missing"]))
    assert str(files["missing"]) in str(info.value)
    assert "does not exist" in str(info.value)


def test_empty_bytes_is_model_error():
    with pytest.raises(ModelError) as info:
        Explainer(b"")
    assert "no ONNX graph" in str(info.value) or "not a readable" in str(info.value)


def test_unsupported_type_is_model_error():
    with pytest.raises(ModelError):
        Explainer(12345)


# --------------------------------------------------------------------------- unsupported op


@pytest.fixture(scope="module")
def erf_model():
    w = _rng(1).standard_normal((48, CLASSES)).astype(np.float32)
    nodes = [
        helper.make_node("Sin", ["X"], ["E"], name="my_sin"),
        helper.make_node("Flatten", ["E"], ["F"], name="flat", axis=1),
        helper.make_node("MatMul", ["F", "W"], ["logits"], name="fc"),
    ]
    return _model(nodes, ["N", 3, 4, 4], {"logits": ["N", CLASSES]}, {"W": w})


@pytest.mark.parametrize("method", ["gradient", "tsgb"])
def test_unsupported_op_names_node_and_op(erf_model, method):
    with pytest.raises(UnsupportedOpError) as info:
        Explainer(erf_model, method=method)
    err = info.value
    assert isinstance(err, ModelError)
    assert err.nodes == [("my_sin", "Sin")]
    assert "'my_sin'" in str(err) and "Sin" in str(err) and method in str(err)


def test_unsupported_op_off_backward_path_is_fine():
    # An Erf that does not feed the logits needs no backward rule.
    w = _rng(1).standard_normal((6, CLASSES)).astype(np.float32)
    nodes = [
        helper.make_node("Erf", ["X"], ["aux"], name="side_erf"),
        helper.make_node("MatMul", ["X", "W"], ["logits"], name="fc"),
    ]
    model = _model(nodes, ["N", 6], {"logits": ["N", CLASSES], "aux": ["N", 6]}, {"W": w})
    x = _rng(2).standard_normal((2, 6)).astype(np.float32)
    res = Explainer(model, method="gradient", output="logits").explain(x, target=[3, 4])
    np.testing.assert_allclose(res.signal, w[:, [3, 4]].T, rtol=1e-6)


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize("target", [CLASSES, -1])
def test_target_out_of_range(gradient_explainer, x2, target):
    with pytest.raises(TargetError) as info:
        gradient_explainer.explain(x2, target=target)
    msg = str(info.value)
    assert str(target) in msg and f"{CLASSES} classes" in msg


def test_target_out_of_range_in_list(gradient_explainer, x2):
    with pytest.raises(TargetError, match="out of range"):
        gradient_explainer.explain(x2, target=[0, CLASSES])


@pytest.mark.parametrize("target", [[1, 2, 3], [4], np.zeros((2, 1), np.int64)])
def test_wrong_number_of_targets(gradient_explainer, x2, target):
    with pytest.raises(TargetError) as info:
        gradient_explainer.explain(x2, target=target)
    assert "batch of 2" in str(info.value)


def test_non_integer_target(gradient_explainer, x2):
    with pytest.raises(TargetError, match="integer"):
        gradient_explainer.explain(x2, target=1.5)


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "shape, hint",
    [
        ((3, 64, 64), "4-D"),  # wrong rank
        ((1, 1, 3, 64, 64), "4-D"),  # wrong rank
        ((2, 4, 64, 64), "axis 1"),  # wrong channel count
        ((2, 3, 32, 32), "axis 2"),  # wrong spatial size
        ((2, 3, 64, 48), "axis 3"),  # wrong spatial size
    ],
)
def test_wrong_input_shape(gradient_explainer, shape, hint):
    x = np.zeros(shape, np.float32)
    with pytest.raises(InputError) as info:
        gradient_explainer.explain(x)
    msg = str(info.value)
    assert "[batch, 3, 64, 64]" in msg and str(tuple(shape)) in msg and hint in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_input(gradient_explainer, x2, bad):
    x = x2.copy()
    x[1, 2, 5, 7] = bad
    with pytest.raises(InputError) as info:
        gradient_explainer.explain(x)
    msg = str(info.value)
    assert "NaN or Inf" in msg and "(1, 2, 5, 7)" in msg


def test_non_numeric_input(gradient_explainer):
    with pytest.raises(InputError, match="numeric"):
        gradient_explainer.explain(np.full((1, 3, 64, 64), "a"))


def test_input_errors_are_value_errors(gradient_explainer):
    # InputError / TargetError also derive from ValueError for callers that catch that.
    with pytest.raises(ValueError):
        gradient_explainer.explain(np.zeros((1, 3, 8, 8), np.float32))


# --------------------------------------------------------------------------- method / layer


def test_unknown_method_lists_available(model_path):
    with pytest.raises(MethodError) as info:
        Explainer(model_path, method="gradcam_plus_plus")
    msg = str(info.value)
    assert "gradcam_plus_plus" in msg and "gradient" in msg and "tsgb" in msg


def test_unknown_method_option(model_path):
    with pytest.raises(MethodError, match="no option"):
        Explainer(model_path, method="gradient", alpha=0.5)


def test_unknown_layer(gradient_explainer, x2):
    with pytest.raises(ModelError) as info:
        gradient_explainer.explain(x2, layer="no/such/tensor")
    assert "no/such/tensor" in str(info.value)


# --------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def two_output_model():
    r = _rng(2)
    w1 = r.standard_normal((6, 4)).astype(np.float32)
    w2 = r.standard_normal((6, 5)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["L1"], name="head1"),
        helper.make_node("MatMul", ["X", "W2"], ["L2"], name="head2"),
    ]
    return _model(nodes, ["N", 6], {"L1": ["N", 4], "L2": ["N", 5]}, {"W1": w1, "W2": w2}), w1, w2


def test_two_outputs_need_output_argument(two_output_model):
    model, _, _ = two_output_model
    with pytest.raises(ModelError) as info:
        Explainer(model, method="gradient")
    msg = str(info.value)
    assert "output=" in msg and "L1" in msg and "L2" in msg


def test_output_picks_one(two_output_model):
    model, w1, w2 = two_output_model
    x = _rng(3).standard_normal((3, 6)).astype(np.float32)
    for name, w in (("L1", w1), ("L2", w2)):
        ex = Explainer(model, method="gradient", output=name)
        res = ex.explain(x, target=[0, 1, 2])
        np.testing.assert_allclose(res.logits, x @ w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res.signal, w[:, [0, 1, 2]].T, rtol=1e-6, atol=1e-6)


def test_unknown_output_name(two_output_model):
    model, _, _ = two_output_model
    with pytest.raises(ModelError, match="'L3'"):
        Explainer(model, method="gradient", output="L3")


def _mlp(final_op=None):
    r = _rng(4)
    inits = {
        "W1": r.standard_normal((6, 8)).astype(np.float32),
        "B1": r.standard_normal(8).astype(np.float32) * 0.1,
        "W2": r.standard_normal((8, 5)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["H"], name="fc1"),
        helper.make_node("Add", ["H", "B1"], ["HB"], name="bias1"),
        helper.make_node("Relu", ["HB"], ["R"], name="relu1"),
        helper.make_node("MatMul", ["R", "W2"], ["Z"], name="fc2"),
    ]
    out = "Z"
    if final_op is not None:
        nodes.append(helper.make_node(final_op, ["Z"], ["P"], name="head", axis=1))
        out = "P"
    return _model(nodes, ["N", 6], {out: ["N", 5]}, inits)


@pytest.mark.parametrize("final_op", ["Softmax", "LogSoftmax"])
def test_final_softmax_is_cut(final_op):
    x = _rng(5).standard_normal((4, 6)).astype(np.float32)
    plain = Explainer(_mlp(None), method="gradient")
    soft = Explainer(_mlp(final_op), method="gradient")
    assert soft.graph.logits_name == "Z"
    a = plain.explain(x, target=[0, 1, 2, 3])
    b = soft.explain(x, target=[0, 1, 2, 3])
    # the logits are the values before the softmax, not probabilities
    np.testing.assert_allclose(b.logits, a.logits, rtol=1e-6, atol=1e-6)
    assert not np.allclose(b.logits.sum(axis=1), 1.0)
    np.testing.assert_allclose(b.signal, a.signal, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b.saliency, a.saliency, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(b.target, [0, 1, 2, 3])


# --------------------------------------------------------------------------- batch


def test_dynamic_batch_1_and_5(model_path, onnx_zoo):
    import torch

    ex = Explainer(model_path, method="gradient")
    torch_model = onnx_zoo.torch_model(NET).eval()
    for batch in (1, 5):
        x = onnx_zoo.example(NET, batch=batch, seed=batch).numpy()
        res = ex.explain(x)
        assert res.saliency.shape == (batch, 64, 64)
        assert res.logits.shape == (batch, CLASSES)
        with torch.no_grad():
            ref = torch_model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(res.logits, ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(res.target, ref.argmax(axis=1))


def test_fixed_batch_rejects_batch_2(fixed_batch_path, x2):
    ex = Explainer(fixed_batch_path, method="gradient")
    assert ex.graph.input_shape == (1, 3, 64, 64)
    assert ex.explain(x2[:1]).saliency.shape == (1, 64, 64)
    with pytest.raises(InputError) as info:
        ex.explain(x2)
    msg = str(info.value)
    assert "[1, 3, 64, 64]" in msg and "axis 0: 2 != 1" in msg
    assert "dynamic batch" in msg


# --------------------------------------------------------------------------- CLI: explain


def _run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_explain_npy_matches_api(capsys, tmp_path, model_path, npy_input, x2):
    out = tmp_path / "sal.npy"
    code, stdout, err = _run_cli(
        capsys, "explain", model_path, npy_input, "--method", "gradient", "--out", out
    )
    assert code == 0, err
    saliency = np.load(out)
    assert saliency.shape == (2, 64, 64)
    expected = Explainer(model_path, method="gradient").explain(x2).saliency
    np.testing.assert_allclose(saliency, expected, rtol=1e-6, atol=1e-7)
    assert "batch[0]" in stdout and "batch[1]" in stdout and f"wrote {out}" in stdout


@pytest.mark.parametrize("target, expected", [("3", 3), ("1,2", [1, 2])])
def test_cli_explain_target(
    capsys, tmp_path, model_path, npy_input, x2, gradient_explainer, target, expected
):
    out = tmp_path / "sal.npy"
    code, stdout, err = _run_cli(
        capsys,
        "explain",
        model_path,
        npy_input,
        "--method",
        "gradient",
        "--target",
        target,
        "--out",
        out,
    )
    assert code == 0, err
    ref = gradient_explainer.explain(x2, target=expected)
    np.testing.assert_allclose(np.load(out), ref.saliency, rtol=1e-6, atol=1e-7)
    rows = np.broadcast_to(np.asarray(expected), (2,))
    for i, t in enumerate(rows):
        assert f"batch[{i}]: target {t} " in stdout


def test_cli_explain_tsgb_alpha(capsys, tmp_path, model_path, npy_input, x2):
    out = tmp_path / "sal.npy"
    code, _, err = _run_cli(
        capsys, "explain", model_path, npy_input, "--method", "tsgb", "--alpha", "0.8", "--out", out
    )
    assert code == 0, err
    ref = Explainer(model_path, method="tsgb", alpha=0.8).explain(x2).saliency
    other = Explainer(model_path, method="tsgb", alpha=1.0).explain(x2).saliency
    got = np.load(out)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert not np.allclose(got, other)  # --alpha really reached the method


def test_cli_explain_layer(capsys, tmp_path, model_path, npy_input, x2, gradient_explainer):
    relus = [n for n in gradient_explainer.graph.nodes if n.op_type == "Relu"]
    layer = relus[2].outputs[0]  # a ReLU after the first pool: [B, 16, 32, 32]
    out = tmp_path / "sal_layer.npy"
    code, _, err = _run_cli(
        capsys,
        "explain",
        model_path,
        npy_input,
        "--method",
        "gradient",
        "--layer",
        layer,
        "--out",
        out,
    )
    assert code == 0, err
    ref = gradient_explainer.explain(x2, layer=layer)
    assert ref.layer == layer
    got = np.load(out)
    assert got.shape == (2, 32, 32)
    np.testing.assert_allclose(got, ref.saliency, rtol=1e-6, atol=1e-7)


def test_cli_explain_photo_png(capsys, tmp_path, model_path, photo_png):
    from PIL import Image

    out = tmp_path / "heat.png"
    code, stdout, err = _run_cli(capsys, "explain", model_path, photo_png[0], "--out", out)
    assert code == 0, err
    assert out.is_file() and f"wrote {out}" in stdout
    with Image.open(out) as im:
        assert im.mode == "RGB"
        assert im.size == (64, 64)
        rgb = np.asarray(im)
    assert rgb.reshape(-1, 3).std(axis=0).max() > 1.0  # not a uniform image


def test_cli_two_images_two_files(capsys, tmp_path, model_path, photo_png):
    from PIL import Image

    out = tmp_path / "x.png"
    code, stdout, err = _run_cli(
        capsys, "explain", model_path, *photo_png, "--method", "gradient", "--out", out
    )
    assert code == 0, err
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["x_chelsea.png", "x_coffee.png"]
    for name in written:
        with Image.open(tmp_path / name) as im:
            assert im.mode == "RGB" and im.size == (64, 64)
    assert "chelsea: target" in stdout and "coffee: target" in stdout


# --------------------------------------------------------------------------- CLI: inspect


def test_cli_inspect(capsys, model_path):
    code, stdout, err = _run_cli(capsys, "inspect", model_path, "--method", "gradient")
    assert code == 0, err
    assert "input:   input ['batch', 3, 64, 64]" in stdout
    assert "logits:  logits ['batch', 10]" in stdout
    for op in ("Conv", "Relu", "MaxPool", "Gemm"):
        assert op in stdout
    lines = [l for l in stdout.splitlines() if l.startswith("program: ")]
    assert len(lines) == 1
    steps = int(lines[0].split()[1])
    assert lines[0].startswith(f"program: {steps} steps")
    assert steps > 10
    assert "0  " not in stdout.split("program: ")[1]  # no step listing without --program

    code, stdout2, err = _run_cli(
        capsys, "inspect", model_path, "--method", "gradient", "--program"
    )
    assert code == 0, err
    step_lines = [l for l in stdout2.splitlines() if l[:4].strip().isdigit()]
    assert len(step_lines) == steps
    assert [int(l[:4]) for l in step_lines] == list(range(steps))
    assert "Conv" in step_lines[-1]  # the last backward step is the first Conv
    assert f"program 'gradient': {steps} steps" in stdout2


# --------------------------------------------------------------------------- CLI: errors


def _assert_one_error_line(code, err):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tsgb: error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, x2):
    root = tmp_path_factory.mktemp("bad_inputs")
    nan = x2.copy()
    nan[0, 1, 2, 3] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "flat.npy", np.zeros((2, 3), np.float32))  # wrong rank
    np.save(root / "small.npy", np.zeros((2, 3, 32, 32), np.float32))  # wrong size
    (root / "values.txt").write_text("1 2 3\n")
    return root


def test_cli_error_missing_model(capsys, files, npy_input):
    code, _, err = _run_cli(capsys, "explain", files["missing"], npy_input)
    line = _assert_one_error_line(code, err)
    assert "does not exist" in line


def test_cli_error_text_model(capsys, files, npy_input):
    code, _, err = _run_cli(capsys, "explain", files["text"], npy_input)
    line = _assert_one_error_line(code, err)
    assert str(files["text"]) in line


def test_cli_error_truncated_model(capsys, files, npy_input):
    code, _, err = _run_cli(capsys, "inspect", files["truncated"])
    line = _assert_one_error_line(code, err)
    assert "truncated" in line


def test_cli_error_target_out_of_range(capsys, model_path, npy_input):
    code, _, err = _run_cli(
        capsys, "explain", model_path, npy_input, "--method", "gradient", "--target", "10"
    )
    line = _assert_one_error_line(code, err)
    assert "target 10 is out of range" in line


def test_cli_error_bad_target_text(capsys, model_path, npy_input):
    code, _, err = _run_cli(capsys, "explain", model_path, npy_input, "--target", "cat")
    line = _assert_one_error_line(code, err)
    assert "'cat'" in line


def test_cli_error_nan_npy(capsys, model_path, bad_inputs):
    code, _, err = _run_cli(capsys, "explain", model_path, bad_inputs / "nan.npy")
    line = _assert_one_error_line(code, err)
    assert "NaN or Inf" in line


@pytest.mark.parametrize("name", ["flat.npy", "small.npy"])
def test_cli_error_npy_wrong_shape(capsys, model_path, bad_inputs, name):
    code, _, err = _run_cli(capsys, "explain", model_path, bad_inputs / name)
    line = _assert_one_error_line(code, err)
    assert name in line or "[batch, 3, 64, 64]" in line


def test_cli_error_unknown_input_type(capsys, model_path, bad_inputs):
    code, _, err = _run_cli(capsys, "explain", model_path, bad_inputs / "values.txt")
    line = _assert_one_error_line(code, err)
    assert "unknown file type '.txt'" in line


def test_cli_error_missing_image(capsys, model_path, tmp_path):
    missing = tmp_path / "no_such_photo.png"
    code, _, err = _run_cli(capsys, "explain", model_path, missing)
    line = _assert_one_error_line(code, err)
    assert str(missing) in line and "does not exist" in line


def test_cli_error_missing_npy(capsys, model_path, tmp_path):
    code, _, err = _run_cli(capsys, "explain", model_path, tmp_path / "gone.npy")
    line = _assert_one_error_line(code, err)
    assert "does not exist" in line


def test_cli_error_corrupt_image(capsys, model_path, bad_inputs):
    fake = bad_inputs / "fake.png"
    fake.write_text("not a png")
    code, _, err = _run_cli(capsys, "explain", model_path, fake)
    line = _assert_one_error_line(code, err)
    assert "cannot be read as an image" in line


def test_cli_error_empty_batch(capsys, model_path, bad_inputs):
    empty = bad_inputs / "empty.npy"
    np.save(empty, np.zeros((0, 3, 64, 64), np.float32))
    code, _, err = _run_cli(capsys, "explain", model_path, empty)
    line = _assert_one_error_line(code, err)
    assert "no values" in line


@pytest.mark.parametrize("flag, value", [("--mean", "0.1,0.2"), ("--std", "0.2,0.2,0.2,0.2")])
def test_cli_error_mean_std_wrong_length(capsys, model_path, photo_png, flag, value):
    # mean/std must have one value per RGB channel, checked before any preprocessing
    code, _, err = _run_cli(capsys, "explain", model_path, photo_png[0], flag, value)
    _assert_one_error_line(code, err)


def test_cli_error_zero_std(capsys, model_path, photo_png):
    # a zero std is refused up front, naming --std (not a division warning, not "NaN input")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = _run_cli(capsys, "explain", model_path, photo_png[0], "--std", "0,0,0")
    line = _assert_one_error_line(code, err)
    assert "--std" in line
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_cli_error_negative_size(capsys, model_path, photo_png):
    # --size must be a positive integer: a one-line usage error
    code, _, err = _run_cli(capsys, "explain", model_path, photo_png[0], "--size", "-3")
    _assert_one_error_line(code, err)


def test_cli_error_unsupported_output(capsys, model_path, npy_input, tmp_path):
    out = tmp_path / "result.jpg"
    code, _, err = _run_cli(
        capsys, "explain", model_path, npy_input, "--method", "gradient", "--out", out
    )
    line = _assert_one_error_line(code, err)
    assert "result.jpg" in line and ".npy or .png" in line
    assert not out.exists()


def test_cli_error_unknown_method(capsys, model_path):
    code, _, err = _run_cli(capsys, "inspect", model_path, "--method", "nope")
    line = _assert_one_error_line(code, err)
    assert "unknown method 'nope'" in line and "gradient" in line


def test_cli_error_unknown_layer(capsys, model_path, npy_input):
    code, _, err = _run_cli(capsys, "explain", model_path, npy_input, "--layer", "nowhere")
    line = _assert_one_error_line(code, err)
    assert "'nowhere'" in line


def test_cli_error_fixed_batch(capsys, fixed_batch_path, npy_input):
    code, _, err = _run_cli(capsys, "explain", fixed_batch_path, npy_input)
    line = _assert_one_error_line(code, err)
    assert "dynamic batch" in line


def test_cli_real_entry_point(files, npy_input, tmp_path):
    """`python -m tsgb_onnx.cli` exits non-zero with one stderr line and no traceback."""
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    cases = [
        ["explain", str(files["truncated"]), npy_input],
        ["explain", str(files["model"]), str(tmp_path / "missing.png")],
    ]
    for argv in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "tsgb_onnx.cli", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=str(tmp_path),
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("tsgb: error:"), proc.stderr
        assert proc.stdout == ""


def test_all_errors_are_tsgb_errors():
    for cls in (ModelError, UnsupportedOpError, InputError, TargetError, MethodError):
        assert issubclass(cls, TsgbError)

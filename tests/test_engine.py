"""Engine internals: program contents, recording only what is read, release, TF-style graphs."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tsgb_onnx import Explainer
from tsgb_onnx.backends.numpy_ops import NumpyOps
from tsgb_onnx.engine.executor import run_program


def test_gradient_records_only_what_rules_read(onnx_zoo):
    _, proto = onnx_zoo.get("vgg16_style", False)
    explainer = Explainer(proto, method="gradient")
    program = explainer.program()
    graph = explainer.graph
    relu_outputs = {n.outputs[0] for n in graph.nodes if n.op_type == "Relu"}
    pool_inputs = {n.inputs[0] for n in graph.nodes if n.op_type == "MaxPool"}
    # Conv/Gemm gradients need no activations (constant weights): only ReLU masks and pool arg-max
    assert set(program.record) == {graph.input_name} | relu_outputs | pool_inputs
    assert len(program) == len(graph.nodes)
    text = str(program)
    assert f"{len(program)} steps" in text and "gradient.conv" in text


def test_forward_tensors_released_after_last_use(onnx_zoo):
    _, proto = onnx_zoo.get("resnet50_style", False)
    explainer = Explainer(proto, method="tsgb")
    program = explainer.program()
    x = onnx_zoo.example("resnet50_style", 1, 0).numpy()
    logits, values, shapes = explainer.recorder.run(x, program.record, program.record_shapes)
    assert set(values) == set(program.record)
    released = [t for s in program.steps for t in s.release]
    assert len(released) == len(set(released)) == len(program.record) - 1
    seed = np.zeros_like(logits)
    seed[0, 0] = 1
    run_program(program, NumpyOps(), values, shapes, seed)
    assert set(values) == {program.layer}  # everything else was dropped on the way


def _tf_style_model():
    """NHWC input → Transpose → Conv(SAME_UPPER) → Relu → ReduceMean → MatMul + Add → Softmax."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3
    fc = rng.standard_normal((6, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["conv"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Relu", ["conv"], ["act"]),
        helper.make_node("ReduceMean", ["act"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tf_style",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 9, 9, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(fc, "fc"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8

    def torch_logits(x):
        h = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (1, 1, 1, 1))  # SAME for 9, k3, s2
        h = torch.relu(torch.nn.functional.conv2d(h, torch.as_tensor(w), stride=2))
        return h.mean((2, 3)) @ torch.as_tensor(fc) + torch.as_tensor(bias)

    return model, torch_logits


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
@pytest.mark.parametrize("method", ["gradient", "tsgb"])
def test_tensorflow_style_graph(method, backend):
    model, torch_logits = _tf_style_model()
    x = np.random.default_rng(1).standard_normal((2, 9, 9, 3)).astype(np.float32)
    explainer = Explainer(model, method=method, backend=backend)
    assert explainer.graph.logits_name == "logits"  # the Softmax is cut
    result = explainer.explain(x, target=[1, 3])
    assert result.signal.shape == x.shape
    assert result.saliency.shape == (2, 9, 9)  # channels-last input: summed over the last axis
    np.testing.assert_allclose(result.saliency, (result.signal * x).sum(-1), rtol=1e-6, atol=1e-9)
    if method == "gradient":
        xt = torch.as_tensor(x).requires_grad_(True)
        logits = torch_logits(xt)
        (logits[0, 1] + logits[1, 3]).backward()
        expected = xt.grad.numpy()
        assert np.abs(result.signal - expected).max() <= 1e-4 * np.abs(expected).max()
        np.testing.assert_allclose(result.logits, logits.detach().numpy(), rtol=1e-5, atol=1e-5)
    else:
        assert [s.rule.label for s in explainer.program().steps if s.node.op_type == "MatMul"] == [
            "tsgb._tsgb_fc"
        ]
        assert np.isfinite(result.saliency).all()


def test_div_stab_follows_the_spec():
    """a ⊘ d = a / (d + eps*sgn(d)) with sgn(0) = sgn(-0) = 1: finite for finite inputs."""
    d = np.array([0.0, -0.0, 1e-12, -2.0, 3.0], np.float32)
    out = NumpyOps().div_stab(np.ones(5, np.float32), d)
    expected = 1 / (d.astype(np.float64) + np.where(d >= 0, 1e-10, -1e-10))
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("method", ["gradient", "tsgb"])
def test_threaded_rows_equal_one_thread(onnx_zoo, method):
    _, proto = onnx_zoo.get("mobilenetv2_style", True)
    x = onnx_zoo.example("mobilenetv2_style", 5, 4).numpy()
    target = [0, 1, 2, 3, 4]
    one = Explainer(proto, method=method, threads=1, backend="numpy")
    three = Explainer(proto, method=method, threads=3, backend="numpy")
    assert three.program().batch_major
    a, b = one.explain(x, target=target), three.explain(x, target=target)
    np.testing.assert_array_equal(a.target, b.target)
    assert np.abs(a.saliency - b.saliency).max() <= 1e-6 * np.abs(a.saliency).max()


# -- the executor owns arity; fused steps get the composition's hints ---------------------------
def test_a_rule_returning_too_many_signals_is_named(onnx_zoo):
    from tsgb_onnx.engine.rule import Rule
    from tsgb_onnx.errors import ModelError

    _, proto = onnx_zoo.get("vgg16_style", False)
    explainer = Explainer(proto, method="gradient", backend="numpy", threads=1)
    program = explainer.program()
    index = next(i for i, s in enumerate(program.steps) if s.node.op_type == "Relu")
    step = program.steps[index]

    def too_many(ops, node, fwd, grads, opts):
        return [grads[0], None]  # a Relu has one input

    bad = Rule(too_many, step.rule.reads, "Relu", "test")
    program.steps[index] = type(step)(**{**step.__dict__, "rule": bad})
    x = onnx_zoo.example("vgg16_style", batch=1, seed=0).numpy()
    logits, values, shapes = explainer.recorder.run(x, program.record, program.record_shapes)
    seed = np.eye(logits.shape[1], dtype=np.float32)[[0]]
    with pytest.raises(
        ModelError,
        match=f"test.too_many returned 2 signals for node "
        f"'{step.node.name}' \\(Relu\\), which has 1 input",
    ):
        run_program(program, NumpyOps(), values, shapes, seed)


def test_rules_return_signals_only_for_inputs_they_differentiate(onnx_zoo):
    """Convs return one signal (not one per input): the executor pads with None."""
    _, proto = onnx_zoo.get("resnet50_style", False)
    explainer = Explainer(proto, method="tsgb", backend="numpy", threads=1)
    program = explainer.program()
    x = onnx_zoo.example("resnet50_style", batch=1, seed=0).numpy()
    logits, values, shapes = explainer.recorder.run(x, program.record, program.record_shapes)
    returned = []
    steps = []
    for step in program.steps:

        def wrapped(ops, node, fwd, grads, opts, _fn=step.rule.fn):
            out = _fn(ops, node, fwd, grads, opts)
            returned.append((node.op_type, len(out), len(node.inputs)))
            return out

        steps.append(
            type(step)(
                **{
                    **step.__dict__,
                    "rule": type(step.rule)(
                        wrapped, step.rule.reads, step.rule.op_type, step.rule.rule_set
                    ),
                }
            )
        )
    program.steps[:] = steps
    seed = np.eye(logits.shape[1], dtype=np.float32)[[1]]
    run_program(program, NumpyOps(), values, shapes, seed)
    convs = [(n, k) for op, n, k in returned if op == "Conv"]
    assert convs and all(n == 1 < k for n, k in convs)


def test_fused_step_receives_the_compositions_hints(onnx_zoo):
    """A kernel registered for a backend replaces the TSGB-Conv composition and gets the same
    shortcut hints (`nonnegative_x`, `sign_from_producer`) the composition would."""
    from tsgb_onnx.engine import ops as contract
    from tsgb_onnx.rules.tsgb import tsgb_conv_step

    seen: list[dict] = []

    class Probe(NumpyOps):
        name = "hint-probe"

    @contract.register_fused("hint-probe", "tsgb_conv")
    def probe(ops, x, y, g, win, groups, **hints):
        seen.append(hints)
        return tsgb_conv_step.portable(ops, x, y, g, win, groups, **hints)

    try:
        _, proto = onnx_zoo.get("vgg16_style", False)
        explainer = Explainer(proto, method="tsgb", backend="numpy", threads=1)
        x = onnx_zoo.example("vgg16_style", batch=2, seed=4).numpy()
        got = explainer.vjp(x, np.eye(10, dtype=np.float32)[[1, 3]])
        explainer._shared.ops = Probe()
        probed = explainer.vjp(x, np.eye(10, dtype=np.float32)[[1, 3]])
    finally:
        contract._FUSED.pop(("hint-probe", "tsgb_conv"))
    convs = sum(n.op_type == "Conv" for n in explainer.graph.nodes)
    assert len(seen) == convs
    assert all(set(h) == {"nonnegative_x", "sign_from_producer"} for h in seen)
    # every conv after the first reads a Relu output: both shortcuts hold there
    assert sum(h["nonnegative_x"] and h["sign_from_producer"] for h in seen) == convs - 1
    np.testing.assert_array_equal(probed, got)

"""ceil_mode pools: canonicalization writes them as ceil_mode=0 pools whose outputs are
exactly ONNX Runtime's, and the compiled MaxPool backward re-runs pools whose pads ONNX
Runtime would refuse. (The PyTorch nets fuzzing found are in test_fuzz.py.)"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ort = pytest.importorskip("onnxruntime")

from tsgb_onnx.ir.geometry import Window  # noqa: E402
from tsgb_onnx.ir.graph import (  # noqa: E402
    _infer_shapes,
    canonicalize,
    pool_output_size,
    resolve_ceil_pools,
)

_ONNX_OF = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def _model(nodes, x_shape, outputs, opset=19, dtype=np.float32, initializers=()):
    elem = _ONNX_OF[dtype]
    graph = helper.make_graph(
        nodes,
        "pools",
        [helper.make_tensor_value_info("x", elem, x_shape)],
        [helper.make_tensor_value_info(o, elem, None) for o in outputs],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, x):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})


def _inferred(model, name):
    """The static shape the model declares for `name` (value_info or output)."""
    g = model.graph
    for info in list(g.value_info) + list(g.output):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return tuple(d.dim_value for d in info.type.tensor_type.shape.dim)
    return None


def _ceil_attrs(node):
    return [a.i for a in node.attribute if a.name == "ceil_mode"]


def _pool_nodes(length):
    """Every ceil_mode pool over 1-D input `length` with kernel 1-3, stride 1-3, dilation
    1-2, pads 0-2 (< kernel) at each end, count_include_pad on and off."""
    nodes = []
    geometry = itertools.product(range(1, 4), range(1, 4), (1, 2), range(3), range(3))
    for k, s, d, begin, end in geometry:
        if begin >= k or end >= k or length + begin + end < (k - 1) * d + 1:
            continue
        for op, cip in (("MaxPool", 0), ("LpPool", 0), ("AveragePool", 0), ("AveragePool", 1)):
            attrs = dict(kernel_shape=[k], strides=[s], pads=[begin, end], ceil_mode=1)
            if d != 1:
                if op == "LpPool":
                    continue  # LpPool has no dilations
                attrs["dilations"] = [d]
            if op == "AveragePool":
                attrs["count_include_pad"] = cip
            name = f"{op}_k{k}s{s}d{d}p{begin}{end}c{cip}"
            nodes.append(helper.make_node(op, ["x"], [name], name=name, **attrs))
    return nodes


@pytest.mark.parametrize("length", range(1, 12))
def test_ceil_pools_rewritten_with_onnx_runtimes_outputs(length):
    """Each rewritten pool gives ONNX Runtime's output of the ceil_mode pool bit for bit, and
    ONNX's shape inference now says ONNX Runtime's size (including where the last window
    is dropped). Only dilated AveragePools that would need a pad >= kernel stay ceil_mode."""
    nodes = _pool_nodes(length)
    outputs = [n.output[0] for n in nodes]
    model = _model(nodes, [2, 3, length], outputs)
    x = np.random.default_rng(length).standard_normal((2, 3, length)).astype(np.float32)
    want = dict(zip(outputs, _run(model, x)))
    rewritten = canonicalize(model, fold=False)
    onnx.checker.check_model(rewritten, full_check=True)
    got = dict(zip(outputs, _run(rewritten, x)))
    kept = []
    for node in rewritten.graph.node:
        if _ceil_attrs(node) == [1]:
            kept.append(node.name)
            assert node.op_type == "AveragePool" and "d2" in node.name, node.name
    for name in outputs:
        assert got[name].shape == want[name].shape, name
        assert np.array_equal(got[name], want[name]), name
        if name not in kept:
            assert _inferred(rewritten, name) == want[name].shape, name
    assert len(kept) < len(outputs) // 10


def test_pool_output_size_drops_a_window_that_starts_in_the_padding():
    # 17, k2 s2 p1: the formula's 10th window would start at 18 - 1 = 17, past the input
    assert pool_output_size(17, 2, 2, 1, 1, 1, ceil=True) == 9
    assert pool_output_size(16, 2, 2, 1, 1, 1, ceil=True) == 9
    assert pool_output_size(17, 2, 2, 1, 1, 1, ceil=False) == 9
    assert pool_output_size(8, 2, 2, 2, 1, 1, ceil=True) == 5  # dilated: extent 3


def test_ceil_pools_in_2d_and_3d():
    """Per-axis geometry: one axis drops its last window, one gets an overhang."""
    nodes = [
        helper.make_node(
            "AveragePool",
            ["x"],
            ["avg"],
            kernel_shape=[2, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            ceil_mode=1,
            count_include_pad=1,
        ),
        helper.make_node(
            "MaxPool",
            ["x"],
            ["max"],
            kernel_shape=[2, 2],
            strides=[2, 2],
            dilations=[2, 1],
            pads=[1, 0, 1, 0],
            ceil_mode=1,
        ),
    ]
    x = np.random.default_rng(0).standard_normal((2, 2, 17, 8)).astype(np.float32)
    model = _model(nodes, list(x.shape), ["avg", "max"])
    want = _run(model, x)
    rewritten = canonicalize(model, fold=False)
    assert not any(_ceil_attrs(n) == [1] for n in rewritten.graph.node)
    for w, g in zip(want, _run(rewritten, x)):
        assert np.array_equal(w, g)
    assert _inferred(rewritten, "avg") == want[0].shape == (2, 2, 9, 5)
    x3 = np.random.default_rng(1).standard_normal((1, 2, 7, 6, 5)).astype(np.float32)
    pool3 = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=[2, 2, 3], strides=[2, 2, 2], ceil_mode=1
    )
    pool3.attribute.append(helper.make_attribute("pads", [1, 0, 1, 1, 1, 1]))
    pool3.attribute.append(helper.make_attribute("count_include_pad", 1))
    model3 = _model([pool3], list(x3.shape), ["y"])
    rewritten3 = canonicalize(model3, fold=False)
    assert np.array_equal(_run(model3, x3)[0], _run(rewritten3, x3)[0])


def test_pools_behind_a_dropped_window_are_rewritten_in_a_second_pass():
    """Pool 2's input shape was first inferred from pool 1's wrong (ONNX) size: it is
    rewritten only after pool 1's shapes are inferred again; the Flatten's width is ORT's."""
    pool = dict(kernel_shape=[2], strides=[2], pads=[1, 1], ceil_mode=1)
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p1"], **pool),
        helper.make_node("AveragePool", ["p1"], ["p2"], count_include_pad=1, **pool),
        helper.make_node("Flatten", ["p2"], ["y"]),
    ]
    x = np.random.default_rng(2).standard_normal((2, 3, 29)).astype(np.float32)
    model = _model(nodes, list(x.shape), ["y"])
    assert _inferred(_infer_shapes(model), "y") == (2, 3 * 9)  # ONNX: 16, then 9
    want = _run(model, x)[0]
    assert want.shape == (2, 3 * 8)  # ONNX Runtime: 15, then 8 (each last window dropped)
    rewritten = resolve_ceil_pools(_infer_shapes(model))
    onnx.checker.check_model(rewritten, full_check=True)
    assert not any(_ceil_attrs(n) == [1] for n in rewritten.graph.node)
    assert _inferred(rewritten, "y") == (2, 3 * 8)
    assert np.array_equal(_run(rewritten, x)[0], want)


@pytest.mark.parametrize("opset", [10, 13])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_dilated_maxpool_gets_an_explicit_lowest_pad(opset, dtype):
    """MaxPool k2 s2 d2 p1 ceil_mode over 8 needs end pad 2 = kernel: an explicit Pad of
    the lowest finite value (attribute form before opset 11) instead."""
    node = helper.make_node(
        "MaxPool",
        ["x"],
        ["y"],
        kernel_shape=[2, 2],
        strides=[2, 2],
        dilations=[2, 2],
        pads=[1, 1, 1, 1],
        ceil_mode=1,
    )
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(dtype)
    model = _model([node], list(x.shape), ["y"], opset=opset, dtype=dtype)
    rewritten = canonicalize(model, fold=False)
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops == ["Pad", "MaxPool"]
    want, got = _run(model, x)[0], _run(rewritten, x)[0]
    assert want.shape == got.shape == (2, 1, 5, 5)
    assert np.array_equal(want, got)


def test_maxpool_indices_output_is_kept_without_an_explicit_pad():
    """A MaxPool whose Indices output is used is not given an explicit Pad (its indices
    would index the padded tensor): with pads < kernel it is still rewritten."""
    plain = helper.make_node(
        "MaxPool", ["x"], ["y", "i"], kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1
    )
    x = np.random.default_rng(4).standard_normal((1, 2, 10)).astype(np.float32)
    model = _model([plain], list(x.shape), ["y"])
    model.graph.output.append(helper.make_tensor_value_info("i", TensorProto.INT64, None))
    rewritten = canonicalize(model, fold=False)
    assert _ceil_attrs(rewritten.graph.node[0]) == []
    for w, g in zip(_run(model, x), _run(rewritten, x)):
        assert np.array_equal(w, g)
    dilated = helper.make_node(
        "MaxPool",
        ["x"],
        ["y", "i"],
        kernel_shape=[2],
        strides=[2],
        dilations=[2],
        pads=[1, 1],
        ceil_mode=1,
    )
    x8 = x[..., :8].copy()
    model = _model([dilated], list(x8.shape), ["y"])
    model.graph.output.append(helper.make_tensor_value_info("i", TensorProto.INT64, None))
    rewritten = canonicalize(model, fold=False)
    assert [n.op_type for n in rewritten.graph.node] == ["MaxPool"]
    assert _ceil_attrs(rewritten.graph.node[0]) == [1]  # left as it is


@pytest.mark.parametrize(
    "win,spatial,out",
    [
        # dilated ceil_mode window: end pad 2 >= kernel 2 (fuzz seed 7340077's pool)
        (Window((2, 2), (2, 2), (2, 2), (1, 1, 1, 1)), (8, 8), (5, 5)),
        # auto_pad SAME with dilation 3: begin pad 1, end pad 2 >= kernel 2 on axis 0
        (Window((2, 3), (1, 2), (3, 1), (1, 1, 2, 1)), (7, 9), (7, 5)),
        # a wide end pad on one axis and input no window reads on the other
        (Window((2, 2), (2, 3), (3, 1), (0, 0, 2, 0)), (6, 9), (4, 3)),
    ],
)
def test_compiled_maxpool_backward_with_pads_onnx_runtime_refuses(win, spatial, out):
    """The ONNX emitter's MaxPool backward (indices re-run) matches the NumPy one where the
    re-run would need a pad >= kernel."""
    from tsgb_onnx.backends.numpy_ops import NumpyOps
    from tsgb_onnx.backends.onnx_ops import GraphBuilder, OnnxOps, Sym

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3) + spatial).astype(np.float32)
    gy = rng.standard_normal((2, 3) + out).astype(np.float32)
    want = NumpyOps().maxpool_input_grad(x, gy, win)
    builder = GraphBuilder(17, {"x", "gy"})
    result = OnnxOps(builder).maxpool_input_grad(
        Sym("x", x.shape, np.float32), Sym("gy", gy.shape, np.float32), win
    )
    assert any(n.op_type == "Pad" for n in builder.nodes)
    graph = helper.make_graph(
        builder.nodes + [helper.make_node("Identity", [result.name], ["gx"])],
        "backward",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
            helper.make_tensor_value_info("gy", TensorProto.FLOAT, list(gy.shape)),
        ],
        [helper.make_tensor_value_info("gx", TensorProto.FLOAT, list(x.shape))],
        initializer=builder.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x, "gy": gy})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

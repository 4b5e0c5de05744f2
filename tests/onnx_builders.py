"""Tiny ONNX graphs for rule tests, and a finite-difference oracle run in ONNX Runtime.

A test graph has one float input ``X`` and one output ``Y``::

    model = make_model([node("Relu", ["X"], ["Y"])], x_shape=(2, 3))
    fd = fd_vjp(model, x, seed)          # d sum(Y * seed) / dX by central differences

`fd_vjp` evaluates a float64 copy of the graph when ONNX Runtime implements every op of
it in double, else the float32 graph with a larger step and Richardson extrapolation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_names = itertools.count()


def node(
    op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str | None = None, **attrs
) -> onnx.NodeProto:
    """`helper.make_node` with a unique default name."""
    return helper.make_node(
        op_type,
        list(inputs),
        list(outputs),
        name=name or f"{op_type.lower()}_{next(_names)}",
        **attrs,
    )


def make_model(
    nodes: Sequence[onnx.NodeProto],
    x_shape: Sequence[int],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    dtype: int = TensorProto.FLOAT,
    check: bool = True,
    y_shape: Sequence[int] | None = None,
) -> onnx.ModelProto:
    """Model with input ``X`` of `x_shape`, output ``Y`` and the given initializers
    (`y_shape`: Y's declared shape, for ops ONNX's shape inference does not type)."""
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info("X", dtype, list(x_shape))],
        [helper.make_tensor_value_info("Y", dtype, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if y_shape is not None:
        model.graph.output[0].CopyFrom(helper.make_tensor_value_info("Y", dtype, list(y_shape)))
    else:  # the output's type needs a shape for the checker: take the inferred one
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        model.graph.output[0].CopyFrom(inferred.graph.output[0])
    if check:
        onnx.checker.check_model(model)
    return model


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of `model` computing in double: float inputs, outputs, initializers and
    tensor attributes become double; Cast-to-float becomes Cast-to-double."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name)
            )
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(
                    numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name)
                )
    return out


def session(model: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def evaluate(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(model).run(["Y"], {"X": x})[0]


def float64_session(model: onnx.ModelProto):
    """Session on the float64 copy, or None when ONNX Runtime lacks a double kernel."""
    try:
        return session(to_float64(model))
    except Exception as exc:  # NOT_IMPLEMENTED: no double kernel for some op
        if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc):
            return None
        # an op whose schema has no double type (Celu), an input that must stay float
        # (Resize's scales), an output typed by an attribute (LayerNormalization's Mean):
        # the double copy is not a valid model
        if "Type Error" in str(exc):
            return None
        raise


def _central(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float) -> np.ndarray:
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + eps
        hi = flat[i]  # the step actually taken (float32 rounds it)
        up = f(x)
        flat[i] = keep - eps
        lo = flat[i]
        down = f(x)
        flat[i] = keep
        grad.reshape(-1)[i] = (up - down) / (float(hi) - float(lo))
    return grad


def fd_vjp(
    model: onnx.ModelProto,
    x: np.ndarray,
    seed: np.ndarray,
    eps64: float = 1e-6,
    eps32: float = 1e-2,
    richardson: bool = True,
) -> tuple[np.ndarray, bool]:
    """Central-difference gradient of sum(Y * seed) at `x`; returns (grad, used_float64).

    In float32 the step is `eps32` (choose it away from kinks), refined by Richardson
    extrapolation (steps eps32 and eps32/2) unless `richardson` is False.
    """
    seed64 = np.asarray(seed, dtype=np.float64)
    sess = float64_session(model)
    if sess is not None:

        def f64(v):
            return float(np.sum(sess.run(["Y"], {"X": v})[0] * seed64))

        return _central(f64, np.array(x, dtype=np.float64), eps64), True
    sess = session(model)

    def f32(v):
        return float(np.sum(sess.run(["Y"], {"X": v})[0].astype(np.float64) * seed64))

    x32 = np.array(x, dtype=np.float32)
    coarse = _central(f32, x32, eps32)
    if not richardson:
        return coarse, False
    fine = _central(f32, x32, eps32 / 2)
    return (4 * fine - coarse) / 3, False


def quantize_static(source: str, out: str, x: np.ndarray, quant_format: str) -> None:
    """ONNX Runtime's static quantization of model file `source` into `out`, calibrated on
    the rows of `x` (fed one at a time as input "input"); `quant_format` "QDQ" or "QOperator"."""
    from onnxruntime import quantization

    class Rows(quantization.CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"input": x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.rows, None)

    quantization.quantize_static(
        source, out, Rows(), quant_format=getattr(quantization.QuantFormat, quant_format)
    )

"""Quantized models: the straight-through estimator through QDQ and dynamic quantization.

Oracles: PyTorch's fake-quantize autograd (a QDQ net exported from PyTorch), and hand-derived
straight-through gradients of hand-built dynamically quantized graphs (they are linear in the
dequantized values, so the expected gradient is exact). Quantization is piecewise constant, so
finite differences say nothing here; these tests stand in for `test_rules_fd.py`'s cases.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.numpy_helper import from_array
from onnx_builders import quantize_static

from tsgb_onnx import Explainer
from tsgb_onnx.engine.program import QUANTIZED_CARRIERS

# the ops whose backward is the straight-through estimator (no finite-difference case)
STE_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
}
BACKENDS = ("numpy", "compiled")


class _FakeQuant(torch.nn.Module):
    def __init__(self, scale: float, zero: int, low: int = 0, high: int = 255):
        super().__init__()
        self.scale, self.zero, self.low, self.high = scale, zero, low, high

    def forward(self, x):
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero, self.low, self.high)


class QatNet(torch.nn.Module):
    """Per-tensor uint8 activations (one saturating often), per-channel int8 weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = torch.nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, 5)
        # q1's range [0, 0.05 * 255] saturates for large activations: the mask matters
        self.q0, self.q1, self.q2 = _FakeQuant(0.02, 128), _FakeQuant(0.004, 0), _FakeQuant(0.05, 0)
        for conv in (self.c1, self.c2):
            scale = conv.weight.detach().abs().amax(dim=(1, 2, 3)) / 127
            conv.register_buffer("wscale", scale)
            conv.register_buffer("wzero", torch.zeros_like(scale, dtype=torch.int32))

    @staticmethod
    def _weight(conv):
        return torch.fake_quantize_per_channel_affine(
            conv.weight, conv.wscale, conv.wzero, 0, -128, 127
        )

    def forward(self, x):
        x = self.q0(x)
        x = torch.nn.functional.conv2d(x, self._weight(self.c1), self.c1.bias, padding=1)
        x = self.q1(torch.relu(x))
        x = torch.nn.functional.conv2d(x, self._weight(self.c2), self.c2.bias, stride=2, padding=1)
        x = self.q2(torch.relu(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def qat():
    net = QatNet().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            torch.zeros(1, 3, 12, 12),
            buffer,
            opset_version=17,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
        )
    return net, onnx.load_from_string(buffer.getvalue())


def _autograd(net, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    xt = torch.tensor(x, requires_grad=True)
    (net(xt) * torch.tensor(seed)).sum().backward()
    return xt.grad.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_qdq_gradient_equals_fake_quantize_autograd(qat, backend):
    net, proto = qat
    assert {n.op_type for n in proto.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    x = np.random.default_rng(3).standard_normal((3, 3, 12, 12)).astype(np.float32)
    explainer = Explainer(proto, method="gradient", backend=backend)
    # the quantized forward is the runtime's own; it equals torch's away from rounding ties
    np.testing.assert_allclose(explainer.infer(x), net(torch.tensor(x)).numpy(), atol=1e-5)
    seed = np.eye(5, dtype=np.float32)[[1, 3, 0]]
    want = _autograd(net, x, seed)
    got = explainer.vjp(x, seed)
    assert np.abs(want).max() > 0
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_qdq_saturated_values_get_no_signal(qat):
    """Outside the representable range the straight-through signal is zero: a net whose
    middle quantizer saturates everywhere passes nothing back."""
    net, proto = qat
    x = np.random.default_rng(4).standard_normal((2, 3, 12, 12)).astype(np.float32) * 50
    seed = np.eye(5, dtype=np.float32)[[2, 2]]
    want = _autograd(net, x, seed)
    got = Explainer(proto, method="gradient", backend="numpy").vjp(x, seed)
    assert (want == 0).mean() > 0.5  # the input quantizer saturates most pixels
    np.testing.assert_array_equal(got == 0, want == 0)


def _dynamic_model(op: str) -> tuple[onnx.ModelProto, np.ndarray]:
    """x -> DynamicQuantizeLinear -> MatMulInteger / ConvInteger(int8 weight, zero point)
    -> Cast -> Mul(x_scale * w_scale): the dequantized product. Returns the model and the
    dequantized weight."""
    rng = np.random.default_rng(5)
    if op == "MatMulInteger":
        w = rng.integers(-100, 100, (6, 4)).astype(np.int8)
        w_zero = np.int8(3)
        x_shape, y_shape = ["batch", 6], ["batch", 4]
        attrs: dict = {}
    else:
        w = rng.integers(-100, 100, (4, 2, 3, 3)).astype(np.int8)
        w_zero = np.int8(-2)
        x_shape, y_shape = ["batch", 2, 7, 7], ["batch", 4, 4, 4]
        attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    w_scale = np.float32(0.01)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node(op, ["xq", "w", "xz", "wz"], ["acc"], **attrs),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "ws"], ["scale"]),
        helper.make_node("Mul", ["accf", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [
            from_array(w, "w"),
            from_array(np.array(w_zero), "wz"),
            from_array(np.array(w_scale), "ws"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, (w.astype(np.float32) - np.float32(w_zero)) * w_scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["MatMulInteger", "ConvInteger"])
def test_dynamic_quantization_is_straight_through(op, backend):
    """Every x is representable (the scale comes from x's own range), so the signal is the
    gradient of the same product with dequantized weights."""
    model, w = _dynamic_model(op)
    rng = np.random.default_rng(6)
    shape = (2, 6) if op == "MatMulInteger" else (2, 2, 7, 7)
    x = rng.standard_normal(shape).astype(np.float32)
    explainer = Explainer(model, method="gradient", backend=backend)
    seed = rng.standard_normal(explainer.infer(x).shape).astype(np.float32)
    if op == "MatMulInteger":
        want = seed @ w.T
    else:
        xt = torch.tensor(x, requires_grad=True)
        y = torch.nn.functional.conv2d(xt, torch.tensor(w), stride=2, padding=1)
        (y * torch.tensor(seed)).sum().backward()
        want = xt.grad.numpy()
    got = explainer.vjp(x, seed)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_every_straight_through_rule_is_exercised(qat):
    """The ops of STE_OPS are exactly the gradient rules tested here instead of by finite
    differences, and each appears in a program these tests run."""
    from tsgb_onnx.rules.gradient import GRADIENT

    assert GRADIENT.op_types() >= STE_OPS and QUANTIZED_CARRIERS <= STE_OPS
    used: set[str] = set()
    for model in (qat[1], _dynamic_model("MatMulInteger")[0], _dynamic_model("ConvInteger")[0]):
        used |= {s.node.op_type for s in Explainer(model, method="gradient").program().steps}
    assert used >= STE_OPS, f"not exercised: {sorted(STE_OPS - used)}"


# -- float16 models: fed in their own dtype, explained in float32 ------------------------------
@pytest.fixture(scope="module")
def half_models(onnx_zoo):
    float16 = pytest.importorskip("onnxconverter_common.float16")
    models = {}
    for net in ("vgg16_style", "resnet50_style", "silu_se_net", "cnn1d"):
        _, proto = onnx_zoo.get(net, False)
        models[net] = (proto, float16.convert_float_to_float16(proto, keep_io_types=False))
        # a mixed graph: float32 input and logits, float16 inside (Casts at both ends)
        models[net + "-mixed"] = (
            proto,
            float16.convert_float_to_float16(proto, keep_io_types=True),
        )
    return models


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "net", ["vgg16_style", "resnet50_style", "silu_se_net", "cnn1d", "resnet50_style-mixed"]
)
def test_float16_model_explains_like_its_float32_twin(half_models, onnx_zoo, net, backend):
    """The float16 model takes a float16 input (fed by the explainer from float32), records
    float16 activations, and the backward runs in float32: maps are float32. Bound: TSGB's map
    within 2e-2 of the float32 model's (max |diff| / max |map|); the exact gradient crosses
    ReLU kinks where float16 rounding moves a pre-activation, so its bound is on rank
    (Spearman >= 0.9)."""
    from tsgb_onnx.evaluation.metrics import spearman

    full, half = half_models[net]
    mixed = net.endswith("-mixed")
    want_type = TensorProto.FLOAT if mixed else TensorProto.FLOAT16
    assert half.graph.input[0].type.tensor_type.elem_type == want_type
    x = onnx_zoo.example(net.removesuffix("-mixed"), 2, 1).numpy()
    for method in ("tsgb", "gradient"):
        want = Explainer(full, method=method).explain(x)
        got = Explainer(half, method=method, backend=backend).explain(x, target=want.target)
        assert got.saliency.dtype == np.float32 and got.logits.dtype == np.float32
        np.testing.assert_array_equal(got.logits.argmax(1), want.logits.argmax(1))
        if method == "tsgb":
            err = np.abs(got.saliency - want.saliency).max() / np.abs(want.saliency).max()
            assert err <= 2e-2, f"{err:.3g}"
        else:
            assert min(spearman(got.saliency[i], want.saliency[i]) for i in range(2)) >= 0.9


def test_float16_input_beyond_its_range_is_one_line(half_models):
    from tsgb_onnx import InputError

    _, half = half_models["vgg16_style"]
    x = np.full((1, 3, 64, 64), 1e6, np.float32)
    with pytest.raises(InputError, match="beyond the range of the model's float16 input"):
        Explainer(half, method="gradient").explain(x)


def test_operator_format_quantization_is_refused_naming_op_and_dtype(tmp_path):
    """QLinearConv & co. (QuantFormat.QOperator) have no rules: one error naming the node,
    its op and its dtype, when the explainer is built (quantize with QuantFormat.QDQ)."""
    from pathlib import Path

    from tsgb_onnx import UnsupportedOpError
    from tsgb_onnx.evaluation.datasets import load_dataset

    pytest.importorskip("onnxruntime.quantization")
    vgg = Path(__file__).resolve().parents[1] / "tsgb_onnx" / "data" / "synthetic_vgg.onnx"
    x = load_dataset("synthetic:2:3").x.astype(np.float32)

    out = tmp_path / "qop.onnx"
    quantize_static(str(vgg), str(out), x, "QOperator")
    with pytest.raises(UnsupportedOpError) as info:
        Explainer(str(out), method="gradient")
    message = str(info.value)
    assert "QLinearConv, uint8)" in message or "QLinearConv, int8)" in message, message
    name = next(n for n, op in info.value.nodes if op == "QLinearConv")
    assert f"node '{name}'" in message

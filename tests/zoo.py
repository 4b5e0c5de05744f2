"""The zoo: architectures other teams wrote (timm, Keras Applications), built with random
weights at a small input, exported, and checked as a user would run them.

`check(entry, exporter)` exports one architecture and returns a `ZooResult`: the exact
gradient against the framework's own autograd in float64, and whether tsgb, gradcam and
input_x_gradient run without NaN/Inf. `tools/zoo.py` prints the coverage table;
`tests/test_zoo.py` asserts it.

The kink-sensitivity control (as the fuzz oracle's; it never loosens the bound): an input is
used only if the float64 gradient at an input jittered by JITTER of its max agrees with the
one at the input, and the framework's own float32 gradient agrees with its float64 one, both
within STABLE; else another input is drawn (INPUT_TRIES in all). A pre-activation within
float32 rounding of a ReLU / ReLU6 / hard-swish kink makes every float32 engine's gradient
depend on its rounding order, so no float32 engine can be held to 1e-4 there.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

BOUND = 1e-4  # max |product - oracle| / max |oracle|
STABLE = 0.25 * BOUND  # the framework's float32 gradient this close to its float64 one
JITTER = 4e-6  # the float64 gradient must not move when the input moves by this (of its max)
INPUT_TRIES = 6
MAP_METHODS = ("tsgb", "gradcam", "input_x_gradient")


@dataclass(frozen=True)
class ZooEntry:
    name: str  # the architecture's name in its library
    source: str  # "timm" | "keras"
    size: int  # input height = width
    kwargs: tuple = ()  # extra constructor arguments, as (key, value) pairs
    family: str = ""


# at least one of each family the issue lists; the smallest variant of each
TIMM = [
    ZooEntry("resnet18", "timm", 64, family="resnet"),
    ZooEntry("resnext26ts", "timm", 64, family="resnext"),
    ZooEntry("seresnext26ts", "timm", 64, family="seresnet"),
    ZooEntry("densenet121", "timm", 64, family="densenet"),
    ZooEntry("mobilenetv2_050", "timm", 64, family="mobilenetv2"),
    ZooEntry("mobilenetv3_small_050", "timm", 64, family="mobilenetv3"),
    ZooEntry("efficientnet_b0", "timm", 64, family="efficientnet"),
    ZooEntry("tf_mobilenetv3_small_100", "timm", 64, family="mobilenetv3 (TF 'SAME' pads)"),
    ZooEntry("regnetx_002", "timm", 64, family="regnet"),
    ZooEntry("ghostnet_100", "timm", 64, family="ghostnet"),
    ZooEntry("rexnet_100", "timm", 64, family="rexnet"),
    ZooEntry("dla34", "timm", 64, family="dla"),
    ZooEntry("dpn68", "timm", 64, family="dpn"),
    ZooEntry("res2net50_14w_8s", "timm", 64, family="res2net"),
    ZooEntry("resnest14d", "timm", 64, family="resnest"),
    ZooEntry("repvgg_a0", "timm", 64, family="repvgg"),
    ZooEntry("mobileone_s0", "timm", 64, family="mobileone"),
    ZooEntry("hrnet_w18_small", "timm", 64, family="hrnet"),
    ZooEntry("inception_v3", "timm", 96, family="inception_v3"),
    ZooEntry("xception41", "timm", 64, family="xception"),
    ZooEntry("ese_vovnet19b_dw", "timm", 64, family="vovnet"),
    ZooEntry("convnext_atto", "timm", 64, family="convnext"),
    ZooEntry("convnextv2_atto", "timm", 64, family="convnextv2"),
    ZooEntry("mobilevit_xxs", "timm", 64, family="mobilevit"),
    ZooEntry("vit_tiny_patch16_224", "timm", 64, (("img_size", 64),), family="vit"),
    ZooEntry("mixer_s16_224", "timm", 64, (("img_size", 64),), family="mlp-mixer"),
]

KERAS = [
    ZooEntry("ResNet50", "keras", 64, family="resnet"),
    ZooEntry("MobileNetV2", "keras", 64, family="mobilenetv2"),
    ZooEntry("MobileNetV3Small", "keras", 64, family="mobilenetv3"),
    ZooEntry("EfficientNetB0", "keras", 64, family="efficientnet"),
    ZooEntry("EfficientNetV2B0", "keras", 64, family="efficientnetv2"),
    ZooEntry("DenseNet121", "keras", 64, family="densenet"),
    ZooEntry("Xception", "keras", 71, family="xception"),
    ZooEntry("InceptionV3", "keras", 75, family="inception_v3"),
    ZooEntry("NASNetMobile", "keras", 64, family="nasnet"),
]

ZOO = TIMM + KERAS
NUM_CLASSES = 10


@dataclass
class ZooResult:
    entry: ZooEntry
    exporter: str  # "torchscript" | "dynamo" | "tf2onnx"
    status: str = "ok"  # "ok" | "mismatch" | "refused" | "export failed" | "error"
    gradient_error: float | None = None  # product vs float64 oracle
    framework_error: float | None = None  # the framework's own float32 vs its float64
    jitter_error: float | None = None  # float64 at a jittered input vs float64
    input_tries: int = 0
    methods_ok: list[str] = field(default_factory=list)
    methods_failed: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "ok" and not self.methods_failed


def _short(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# -- PyTorch / timm ----------------------------------------------------------------------------
def build_timm(entry: ZooEntry):
    import torch
    from torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        entry.name, pretrained=False, num_classes=NUM_CLASSES, **dict(entry.kwargs)
    )
    _randomize_norms(model)
    _randomize_zero_weights(model)
    return model.eval()


def _randomize_norms(model) -> None:
    """BatchNorm statistics away from the identity, so the folded graphs are not trivial."""
    import torch

    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)


def _randomize_zero_weights(model) -> None:
    """Layers initialized to zero (timm's MLP-Mixer head, layer-scale gammas) get random
    values: a zero head makes every gradient zero and the comparison empty."""
    import torch

    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1 and p.numel() > 1 and not p.abs().any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _jittered(x: np.ndarray, rng) -> np.ndarray:
    scale = np.abs(x).reshape(len(x), -1).max(axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
    return x + JITTER * scale * rng.choice([-1.0, 1.0], size=x.shape)


def _draw_input(result: ZooResult, rng, draw, gradient64, gradient32):
    """(x, target, float64 gradient) of the first drawn input away from every kink (the
    control above), or of the last of INPUT_TRIES draws."""
    for attempt in range(INPUT_TRIES):
        result.input_tries = attempt + 1
        x = draw()
        target = rng.integers(0, NUM_CLASSES, size=2)
        oracle = gradient64(x, target)
        moved = gradient64(_jittered(x, rng), target)
        if _stable(result, gradient32(x, target), moved, oracle):
            break
    return x, target, oracle


def _stable(result: ZooResult, own, moved, oracle) -> bool:
    """Record the control's errors; True when the input is away from every kink."""
    scale = np.abs(oracle).max()
    result.framework_error = _rel(own, oracle, scale)
    result.jitter_error = _rel(moved, oracle, scale)
    return result.framework_error <= STABLE and result.jitter_error <= STABLE


def _torch_gradient(model, x: np.ndarray, target: np.ndarray, dtype) -> np.ndarray:
    import torch

    xt = torch.as_tensor(x, dtype=dtype).requires_grad_(True)
    logits = model(xt)
    logits[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    return xt.grad.detach().numpy().astype(np.float64)


def _rel(a, b, scale) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(scale, 1e-30))


def check_timm(entry: ZooEntry, exporter: str) -> ZooResult:
    import copy

    import torch

    from tsgb_onnx.io.export import from_torch

    result = ZooResult(entry, exporter)
    start = time.perf_counter()
    model = build_timm(entry)
    model64 = copy.deepcopy(model).double()
    rng = np.random.default_rng(0)
    shape = (2, 3, entry.size, entry.size)
    try:
        with _quiet(), torch.no_grad():
            proto = from_torch(model, torch.zeros(shape[1:])[None], dynamo=exporter == "dynamo")
    except Exception as exc:
        result.status, result.reason = "export failed", _short(exc)
        result.seconds = time.perf_counter() - start
        return result
    x, target, oracle = _draw_input(
        result,
        rng,
        lambda: rng.standard_normal(shape).astype(np.float32),
        lambda x, t: _torch_gradient(model64, x, t, torch.float64),
        lambda x, t: _torch_gradient(model, x, t, torch.float32),
    )
    _run_product(result, proto, x, target, oracle)
    result.seconds = time.perf_counter() - start
    return result


def _run_product(result: ZooResult, proto, x, target, oracle) -> None:
    from tsgb_onnx import Explainer
    from tsgb_onnx.errors import TsgbError

    try:
        with _quiet():
            got = Explainer(proto, method="gradient").explain(x, target=target)
    except TsgbError as exc:
        result.status, result.reason = "refused", _short(exc)
        return
    except Exception as exc:  # a crash: what the zoo is here to find
        result.status, result.reason = "error", _short(exc)
        return
    if not np.abs(oracle).max() > 0:
        result.status, result.reason = "mismatch", "the oracle's gradient is zero: nothing compared"
        return
    signal = got.signal
    if signal.shape != oracle.shape and signal.ndim == 4:  # a channels-last graph input
        signal = np.moveaxis(signal, -1, 1) if oracle.shape[1] == signal.shape[-1] else signal
    result.gradient_error = _rel(signal, oracle, np.abs(oracle).max())
    if not result.gradient_error <= BOUND:
        result.status = "mismatch"
        result.reason = f"gradient {result.gradient_error:.1e} off the float64 oracle"
    for method in MAP_METHODS:
        try:
            with _quiet():
                saliency = Explainer(proto, method=method).explain(x, target=target).saliency
            if not np.isfinite(saliency).all():
                result.methods_failed[method] = "NaN/Inf in the map"
            elif saliency.shape != (len(x), result.entry.size, result.entry.size):
                result.methods_failed[method] = f"map of shape {saliency.shape}"
            else:
                result.methods_ok.append(method)
        except Exception as exc:
            result.methods_failed[method] = _short(exc)


# -- Keras Applications --------------------------------------------------------------------------
def build_keras(entry: ZooEntry):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    cls = getattr(tf.keras.applications, entry.name)
    return cls(
        weights=None,
        input_shape=(entry.size, entry.size, 3),
        classes=NUM_CLASSES,
        classifier_activation=None,
    )


def _keras_float64(entry: ZooEntry, model):
    """The same architecture built in float64 (Keras fixes each layer's dtype when it is
    built: a clone of a float32 model stays float32) with `model`'s weights."""
    import tensorflow as tf

    policy = tf.keras.config.dtype_policy()
    tf.keras.config.set_dtype_policy("float64")
    try:
        model64 = build_keras(entry)
    finally:
        tf.keras.config.set_dtype_policy(policy)
    model64.set_weights([w.astype(np.float64) for w in model.get_weights()])
    if model64.weights[0].dtype != "float64":
        raise RuntimeError(
            f"{entry.name}: the float64 oracle was built in {model64.weights[0].dtype}"
        )
    return model64


def _keras_gradient(model, x_nhwc: np.ndarray, target: np.ndarray, dtype) -> np.ndarray:
    import tensorflow as tf

    xt = tf.constant(x_nhwc.astype(dtype))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = model(xt, training=False)
        score = tf.reduce_sum(tf.gather(logits, target, batch_dims=1))
    return tape.gradient(score, xt).numpy().astype(np.float64)


def check_keras(entry: ZooEntry, exporter: str = "tf2onnx") -> ZooResult:

    from tsgb_onnx.io.export import from_keras

    result = ZooResult(entry, exporter)
    start = time.perf_counter()
    model = build_keras(entry)
    try:
        with _quiet():
            proto = from_keras(model)
    except Exception as exc:
        result.status, result.reason = "export failed", _short(exc)
        result.seconds = time.perf_counter() - start
        return result
    model64 = _keras_float64(entry, model)
    rng = np.random.default_rng(0)
    shape = (2, entry.size, entry.size, 3)
    x, target, oracle = _draw_input(
        result,
        rng,
        lambda: rng.uniform(0, 255, shape).astype(np.float32),  # Keras apps preprocess inside
        lambda x, t: _keras_gradient(model64, x, t, np.float64),
        lambda x, t: _keras_gradient(model, x, t, np.float32),
    )
    _run_product(result, proto, x, target, oracle)
    result.seconds = time.perf_counter() - start
    return result


def check(entry: ZooEntry, exporter: str) -> ZooResult:
    return check_keras(entry) if entry.source == "keras" else check_timm(entry, exporter)


def exporters_for(entry: ZooEntry) -> tuple[str, ...]:
    return ("tf2onnx",) if entry.source == "keras" else ("torchscript", "dynamo")

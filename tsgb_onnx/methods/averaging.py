"""SmoothGrad and Integrated Gradients around any method, batched.

All noisy / interpolated copies of every image go through the base method in a few large
batches (`batch_size` rows each), never one call per copy. Both are registered as map
methods (`smoothgrad`, `integrated_gradients`) with option `base` (default "gradient");
options they do not define go to the base method (e.g. `alpha` for base "tsgb").
"""

from __future__ import annotations

import numpy as np

from tsgb_onnx.errors import MethodError
from tsgb_onnx.methods.cam import chunk_rows
from tsgb_onnx.methods.result import Explanation

_OWN = {
    "smoothgrad": ("base", "n", "sigma", "sigma_mode", "seed", "batch_size"),
    "integrated_gradients": ("base", "steps", "baseline", "quadrature", "batch_size"),
}


def _base_explainer(explainer, options, name):
    base = options["base"]
    if base in _OWN:
        raise MethodError(f"{name}: base must be a method other than the wrappers, got '{base}'")
    rest = {k: v for k, v in options.items() if k not in _OWN[name]}
    return explainer.sub_explainer(base, **rest)


def _explain_rows(base, copies, targets, layer, chunk):
    """Explain `copies` in chunks of `chunk` rows; (saliency, signal or None) stacked."""
    maps, signals = [], []
    for lo in range(0, len(copies), chunk):
        part = base.explain(copies[lo : lo + chunk], target=targets[lo : lo + chunk], layer=layer)
        maps.append(part.saliency)
        signals.append(part.signal)
    signal = None if any(s is None for s in signals) else np.concatenate(signals)
    return np.concatenate(maps), signal, part.layer


SIGMA_MODES = ("range", "absolute")
QUADRATURES = ("midpoint", "gausslegendre")


def smoothgrad_noise(
    x: np.ndarray, n: int, sigma: float, seed: int, sigma_mode: str = "range"
) -> np.ndarray:
    """The `n` noisy copies of every row of `x` ([B*n, ...], row b's copies contiguous):
    Gaussian noise with std `sigma` times the row's value range (`sigma_mode` "range", the
    SmoothGrad paper's) or `sigma` itself ("absolute", Captum's `stdevs`). The `n` noise draws
    (``default_rng(seed).standard_normal([n, ...])``) are the same for every row, so a row's
    copies, and its map, do not depend on the rest of the batch."""
    rng = np.random.default_rng(seed)
    flat = x.reshape(x.shape[0], -1)
    spread = (flat.max(axis=1) - flat.min(axis=1)).reshape((-1,) + (1,) * (x.ndim - 1))
    if sigma_mode == "absolute":
        spread = np.ones_like(spread)
    copies = np.repeat(x, n, axis=0)
    noise = rng.standard_normal((n,) + x.shape[1:]).astype(np.float32)
    noise = np.tile(noise, (x.shape[0],) + (1,) * (x.ndim - 1))
    return (copies + noise * np.repeat(spread * np.float32(sigma), n, axis=0)).astype(np.float32)


def smoothgrad(
    explainer,
    x,
    target=None,
    layer=None,
    *,
    base="gradient",
    n=25,
    sigma=0.15,
    sigma_mode="range",
    seed=0,
    batch_size=64,
    **base_options,
):
    """Mean of the base method's maps (and signals) over `n` noisy copies of each image.

    The target of every copy is the clean image's (None: its top-1 class)."""
    options = {
        "base": base,
        "n": n,
        "sigma": sigma,
        "sigma_mode": sigma_mode,
        "seed": seed,
        "batch_size": batch_size,
        **base_options,
    }
    sub = _base_explainer(explainer, options, "smoothgrad")
    logits = explainer.infer(x)
    targets = explainer.targets(target, logits)
    copies = smoothgrad_noise(x, n, sigma, seed, sigma_mode)
    maps, signals, layer_name = _explain_rows(
        sub, copies, np.repeat(targets, n), layer, chunk_rows(explainer, batch_size)
    )
    saliency = maps.reshape((len(x), n) + maps.shape[1:]).mean(axis=1)
    signal = (
        None if signals is None else signals.reshape((len(x), n) + signals.shape[1:]).mean(axis=1)
    )
    return Explanation(
        saliency=saliency,
        signal=signal,
        logits=logits,
        target=targets,
        layer=layer_name,
        method="smoothgrad",
    )


def integrated_gradients(
    explainer,
    x,
    target=None,
    layer=None,
    *,
    base="gradient",
    steps=32,
    baseline=0.0,
    quadrature="midpoint",
    batch_size=64,
    **base_options,
):
    """Integrated Gradients with the base method's input signal over `steps` points on the
    straight path from `baseline` to `x` (`quadrature` "midpoint", or "gausslegendre" as
    Captum's default); map sum_c (x - x0) * weighted mean signal."""
    graph = explainer.graph
    if layer not in (None, graph.input_name):
        raise MethodError("integrated_gradients integrates at the model input: do not give a layer")
    options = {
        "base": base,
        "steps": steps,
        "baseline": baseline,
        "quadrature": quadrature,
        "batch_size": batch_size,
        **base_options,
    }
    if not explainer.method_named(base).single_pass:
        raise MethodError(
            f"integrated_gradients: base must be a one-backward-pass method "
            f"(gradient, tsgb, ...), not the map method '{base}'"
        )
    sub = _base_explainer(explainer, options, "integrated_gradients")
    x0 = np.broadcast_to(np.asarray(baseline, dtype=np.float32), x.shape)
    logits = explainer.infer(x)
    targets = explainer.targets(target, logits)
    points, weights = path_points(steps, quadrature)
    alphas = points.reshape((1, steps) + (1,) * (x.ndim - 1))
    path = (x0[:, None] + alphas * (x - x0)[:, None]).reshape((-1,) + x.shape[1:])
    _, signals, _ = _explain_rows(
        sub,
        path.astype(np.float32),
        np.repeat(targets, steps),
        None,
        chunk_rows(explainer, batch_size),
    )
    per_step = signals.reshape((len(x), steps) + x.shape[1:])
    mean_signal = np.tensordot(per_step, weights, axes=([1], [0])).astype(np.float32)  # [B, ...]
    product = (x - x0) * mean_signal
    axis = graph.channel_axis(graph.input_name)
    saliency = product.sum(axis=axis) if product.ndim > 1 else product
    return Explanation(
        saliency=saliency,
        signal=mean_signal,
        logits=logits,
        target=targets,
        layer=graph.input_name,
        method="integrated_gradients",
        activation=(x - x0).astype(np.float32),  # attribution: Captum's (x - x0) * mean grad
    )


def path_points(steps: int, quadrature: str) -> tuple[np.ndarray, np.ndarray]:
    """Points in (0, 1) on the path and their weights (summing to 1)."""
    if quadrature == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return ((nodes + 1) / 2).astype(np.float32), (weights / 2).astype(np.float32)
    points = (np.arange(steps, dtype=np.float32) + 0.5) / steps
    return points, np.full(steps, 1.0 / steps, dtype=np.float32)


def _positive_int(name, key):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise MethodError(f"{name}: {key} must be an integer >= 1, got {value!r}")

    return check


def check_smoothgrad(options: dict) -> None:
    _positive_int("smoothgrad", "n")(options["n"])
    _positive_int("smoothgrad", "batch_size")(options["batch_size"])
    sigma = options["sigma"]
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, (int, float, np.floating))
        or not np.isfinite(sigma)
        or sigma < 0
    ):
        raise MethodError(f"smoothgrad: sigma must be a finite number >= 0, got {sigma!r}")
    if options["sigma_mode"] not in SIGMA_MODES:
        raise MethodError(
            f"smoothgrad: sigma_mode must be one of {', '.join(SIGMA_MODES)}, "
            f"got {options['sigma_mode']!r}"
        )
    if not isinstance(options["seed"], (int, np.integer)):
        raise MethodError(f"smoothgrad: seed must be an integer, got {options['seed']!r}")


def check_integrated_gradients(options: dict) -> None:
    _positive_int("integrated_gradients", "steps")(options["steps"])
    _positive_int("integrated_gradients", "batch_size")(options["batch_size"])
    if options["quadrature"] not in QUADRATURES:
        raise MethodError(
            f"integrated_gradients: quadrature must be one of {', '.join(QUADRATURES)}, "
            f"got {options['quadrature']!r}"
        )
    try:
        value = np.asarray(options["baseline"], dtype=np.float32)
    except (TypeError, ValueError):
        raise MethodError(
            "integrated_gradients: baseline must be a number or an array, "
            f"got {options['baseline']!r}"
        ) from None
    if not np.isfinite(value).all():
        raise MethodError("integrated_gradients: baseline holds NaN or Inf")


def _call(fn, name):
    def compute(explainer, x, target, layer, options):
        return fn(explainer, x, target, layer, **options)

    compute.__name__ = name
    return compute


smoothgrad_map = _call(smoothgrad, "smoothgrad")
integrated_gradients_map = _call(integrated_gradients, "integrated_gradients")

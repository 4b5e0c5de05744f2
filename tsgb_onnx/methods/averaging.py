"""SmoothGrad and Integrated Gradients around any method, batched.

All noisy / interpolated copies of every image go through the base method in a few large
batches (at most `batch_size` rows each), never one call per copy, and each batch's maps
are folded into the means as they come. Both are registered as map methods (`smoothgrad`,
`integrated_gradients`) with option `base` (default "gradient"); options they do not define
go to the base method (e.g. `alpha` for base "tsgb").
"""

from __future__ import annotations

import numpy as np

from tsgb_onnx.errors import MethodError
from tsgb_onnx.methods.cam import chunk_rows
from tsgb_onnx.methods.result import Explanation

_OWN = {
    "smoothgrad": ("base", "n", "sigma", "sigma_mode", "seed", "batch_size", "samples_per_batch"),
    "integrated_gradients": ("base", "steps", "baseline", "quadrature", "batch_size"),
}


def _base_explainer(explainer, options, name):
    base = options["base"]
    if base in _OWN:
        raise MethodError(f"{name}: base must be a method other than the wrappers, got '{base}'")
    rest = {k: v for k, v in options.items() if k not in _OWN[name]}
    return explainer.sub_explainer(base, **rest)


def _weighted_means(base, n_rows, copies, weights, targets, layer, chunk, saliency=True):
    """Per input row, the weighted sums over its copies of the base method's maps (and
    signals): row b's copies are copies b*k .. b*k+k-1 (k = len(weights)), copy j weighted
    weights[j]. `copies(lo, hi)` builds copies lo..hi-1: one chunk (at most `chunk` rows,
    the chunks of near-equal size, so none is a small remainder) exists at a time, and each
    chunk's results are folded into the sums as they come, never stacked. Returns (maps or
    None, signals or None, layer).

    The folding is NumPy's own einsum, not a BLAS product: BLAS worker threads spin after
    each product and slowed the next chunk's row threads (the whole method 1.5-1.75x slower
    on the small nets, tools/bench_averaging.py)."""
    k = len(weights)
    total = n_rows * k
    sums: dict[str, np.ndarray | None] = {}
    layer_name = None
    parts = -(-total // chunk)
    bounds = [total * i // parts for i in range(parts + 1)]
    for lo, hi in zip(bounds, bounds[1:]):
        part = base.explain(copies(lo, hi), target=targets[lo:hi], layer=layer)
        layer_name = part.layer
        for key, value in (("map", part.saliency if saliency else None), ("signal", part.signal)):
            if value is None or (key in sums and sums[key] is None):
                sums[key] = None  # a base method without signals has none
                continue
            acc = sums.setdefault(key, np.zeros((n_rows,) + value.shape[1:], np.float32))
            for row in range(lo // k, (hi - 1) // k + 1):  # the rows this chunk's copies are of
                first, last = max(lo, row * k), min(hi, (row + 1) * k)
                step = weights[first - row * k : last - row * k]
                acc[row] += np.einsum("j,j...->...", step, value[first - lo : last - lo])
    return sums.get("map"), sums.get("signal"), layer_name


SIGMA_MODES = ("range", "absolute")
QUADRATURES = ("midpoint", "gausslegendre")


def _noise(x, n, sigma, seed, sigma_mode) -> tuple[np.ndarray, np.ndarray]:
    """SmoothGrad's `n` noise draws [n, ...] and each row's noise scale [B, 1, ...]: noise
    with std `sigma` times the row's value range (`sigma_mode` "range", the SmoothGrad
    paper's) or `sigma` itself ("absolute", Captum's `stdevs`). The draws
    (``default_rng(seed).standard_normal([n, ...])``) are the same for every row, so a row's
    copies, and its map, do not depend on the rest of the batch."""
    rng = np.random.default_rng(seed)
    flat = x.reshape(x.shape[0], -1)
    spread = (flat.max(axis=1) - flat.min(axis=1)).reshape((-1,) + (1,) * (x.ndim - 1))
    if sigma_mode == "absolute":
        spread = np.ones_like(spread)
    noise = rng.standard_normal((n,) + x.shape[1:]).astype(np.float32)
    return noise, (spread * np.float32(sigma)).astype(np.float32)


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
    samples_per_batch=None,
    **base_options,
):
    """Mean of the base method's maps (and signals) over `n` noisy copies of each image.

    The target of every copy is the clean image's (None: its top-1 class). The copies run
    `batch_size` rows at a time, or with `samples_per_batch` (Captum's
    `nt_samples_batch_size`) that many noisy copies of the whole batch at a time."""
    options = {
        "base": base,
        "n": n,
        "sigma": sigma,
        "sigma_mode": sigma_mode,
        "seed": seed,
        "batch_size": batch_size,
        "samples_per_batch": samples_per_batch,
        **base_options,
    }
    if samples_per_batch is not None:
        batch_size = samples_per_batch * len(x)
    sub = _base_explainer(explainer, options, "smoothgrad")
    logits = explainer.infer_before_rows(x)
    targets = explainer.targets(target, logits)
    noise, scale = _noise(x, n, sigma, seed, sigma_mode)

    def copies(lo, hi):
        index = np.arange(lo, hi)
        return (x[index // n] + noise[index % n] * scale[index // n]).astype(np.float32)

    saliency, signal, layer_name = _weighted_means(
        sub,
        len(x),
        copies,
        np.full(n, 1.0 / n, dtype=np.float32),
        np.repeat(targets, n),
        layer,
        chunk_rows(explainer, batch_size),
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
    logits = explainer.infer_before_rows(x)
    targets = explainer.targets(target, logits)
    points, weights = path_points(steps, quadrature)
    unit = (1,) * (x.ndim - 1)

    def copies(lo, hi):
        index = np.arange(lo, hi)
        rows, alphas = index // steps, points[index % steps].reshape((-1,) + unit)
        return (x0[rows] + alphas * (x[rows] - x0[rows])).astype(np.float32)

    _, mean_signal, _ = _weighted_means(
        sub,
        len(x),
        copies,
        weights,
        np.repeat(targets, steps),
        None,
        chunk_rows(explainer, batch_size),
        saliency=False,
    )
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
    if options["samples_per_batch"] is not None:
        _positive_int("smoothgrad", "samples_per_batch")(options["samples_per_batch"])
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

"""Saliency metrics of the papers: deletion/insertion, pointing game, localization error,
sanity checks (weight randomization) and class sensitivity, plus a NumPy Spearman.

All functions work on NumPy arrays; the model is called through `predict(x) -> logits`
(e.g. `Explainer.infer`) so every perturbed image of a batch goes through it in chunks of
`batch_size`. Boxes are (x0, y0, x1, y1) in pixels, end-exclusive.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tsgb_onnx.errors import InputError
from tsgb_onnx.io.progress import Progress

Predict = Callable[[np.ndarray], np.ndarray]
Box = Sequence[int]
RANDOMIZED_OPS = ("Conv", "Gemm", "MatMul")


# --------------------------------------------------------------------------- ranks
def rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a flattened array; ties get the average of their ranks."""
    a = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    ordered = a[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(new_group) - 1
    bounds = np.flatnonzero(np.r_[new_group, True])
    average = (bounds[:-1] + bounds[1:] - 1) / 2.0 + 1.0
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = average[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally sized arrays (average ranks for ties).

    A constant array carries no ranking: the correlation is then defined as 0.
    """
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.size != b.size:
        raise InputError(f"spearman needs equal sizes, got {a.size} and {b.size}")
    ra, rb = rankdata(a) - (a.size + 1) / 2.0, rankdata(b) - (b.size + 1) / 2.0
    denom = np.sqrt(np.dot(ra, ra) * np.dot(rb, rb))
    return float(np.dot(ra, rb) / denom) if denom > 0 else 0.0


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman per row of two [N, ...] arrays."""
    return np.array([spearman(u, v) for u, v in zip(a, b)], dtype=np.float64)


# --------------------------------------------------------------------------- scores
def class_scores(logits: np.ndarray, targets: np.ndarray, score: str = "softmax") -> np.ndarray:
    """Score of each row's target: softmax probability (default) or sigmoid of the logit."""
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(logits))
    if score == "softmax":
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        return (p[rows, targets] / p.sum(axis=1)).astype(np.float64)
    if score == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits[rows, targets]))
    raise InputError(f"score must be 'softmax' or 'sigmoid', got {score!r}")


# --------------------------------------------------------------------------- deletion / insertion
def gaussian_blur(x: np.ndarray, sigma: float = 5.0, size: int = 11) -> np.ndarray:
    """Separable Gaussian blur of [..., H, W] (reflect padding), as the RISE substrate."""
    half = size // 2
    t = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = np.asarray(x, dtype=np.float64)
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (half, half)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > half else "edge")
        n = out.shape[axis]
        out = sum(k[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(size))
    return out.astype(np.float32)


def _substrate(x: np.ndarray, substrate) -> np.ndarray:
    if isinstance(substrate, str):
        if substrate != "blur":
            raise InputError(f"substrate must be 'blur', a number or an array, got {substrate!r}")
        return gaussian_blur(x)
    return np.broadcast_to(np.asarray(substrate, dtype=np.float32), x.shape)


@dataclass
class PerturbationResult:
    """AUC per sample and the score curves [N, steps + 1] at `fractions` of pixels changed."""

    auc: np.ndarray
    curves: np.ndarray
    fractions: np.ndarray


def perturbation(
    predict: Predict,
    x: np.ndarray,
    saliency: np.ndarray,
    targets: np.ndarray,
    mode: str = "deletion",
    step: float = 0.01,
    substrate="blur",
    score: str = "softmax",
    batch_size: int = 128,
    progress: bool = False,
) -> PerturbationResult:
    """RISE deletion / insertion: change `step` of the pixels per step in saliency order.

    Deletion replaces the most salient pixels of the image with the substrate (a blurred copy
    by default); insertion reveals them on the substrate. The AUC of the target's score over
    the fraction of pixels changed (trapezoid rule, x from 0 to 1) is lower-is-better for
    deletion and higher-is-better for insertion. x: [N, C, H, W]; saliency: [N, H, W].
    """
    if mode not in ("deletion", "insertion"):
        raise InputError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if not 0 < step <= 1:
        raise InputError(f"step must be a fraction in (0, 1], got {step}")
    x = np.asarray(x, dtype=np.float32)
    saliency = np.asarray(saliency, dtype=np.float64)
    n_img = len(x)
    spatial = saliency.shape[1:]
    if saliency.shape[0] != n_img or tuple(x.shape[2:]) != tuple(spatial):
        raise InputError(f"saliency {saliency.shape} does not match the images {x.shape}")
    targets = np.broadcast_to(np.asarray(targets, dtype=np.int64), (n_img,))
    pixels = int(np.prod(spatial))
    per_step = max(1, int(np.ceil(step * pixels)))
    steps = int(np.ceil(pixels / per_step))
    counts = np.minimum(np.arange(steps + 1) * per_step, pixels)
    fractions = counts / pixels
    base = _substrate(x, substrate)
    curves = np.empty((n_img, steps + 1), dtype=np.float64)
    bar = Progress(mode, n_img, progress)
    per_group = max(1, batch_size // (steps + 1))
    for g0 in range(0, n_img, per_group):
        idx = np.arange(g0, min(n_img, g0 + per_group))
        images = []
        for i in idx:
            flat = saliency[i].ravel()
            flat = np.where(np.isfinite(flat), flat, -np.inf)
            order = np.argsort(-flat, kind="stable")
            rank = np.empty(pixels, dtype=np.int64)
            rank[order] = np.arange(pixels)
            changed = (rank[None, :] < counts[:, None]).reshape((steps + 1, 1) + tuple(spatial))
            first, second = (base[i], x[i]) if mode == "deletion" else (x[i], base[i])
            images.append(np.where(changed, first[None], second[None]))
        batch = np.concatenate(images, axis=0)
        logits = np.concatenate(
            [
                np.asarray(predict(batch[j : j + batch_size]))
                for j in range(0, len(batch), batch_size)
            ],
            axis=0,
        )
        tgt = np.repeat(targets[idx], steps + 1)
        curves[idx] = class_scores(logits, tgt, score).reshape(len(idx), steps + 1)
        bar.update(len(idx))
    auc = (
        np.trapezoid(curves, fractions, axis=1)
        if hasattr(np, "trapezoid")
        else np.trapz(curves, fractions, axis=1)
    )
    return PerturbationResult(np.asarray(auc, dtype=np.float64), curves, fractions)


# --------------------------------------------------------------------------- pointing game
def pointing_hit(
    saliency: np.ndarray,
    boxes: Sequence[Box] = (),
    mask: np.ndarray | None = None,
    tolerance: float = 0.0,
) -> bool:
    """A hit if the map's arg-max lies within `tolerance` pixels of a box or of the mask.

    A map without a maximum (constant, or not finite) is a miss.
    """
    sal = np.asarray(saliency, dtype=np.float64)
    if not np.isfinite(sal).all() or sal.max() == sal.min():
        return False
    py, px = np.unravel_index(int(np.argmax(sal)), sal.shape)
    tol2 = float(tolerance) ** 2
    for x0, y0, x1, y1 in boxes:
        dx = max(x0 - px, 0, px - (x1 - 1))
        dy = max(y0 - py, 0, py - (y1 - 1))
        if dx * dx + dy * dy <= tol2:
            return True
    if mask is not None:
        ys, xs = np.nonzero(mask)
        if ys.size and float(np.min((ys - py) ** 2 + (xs - px) ** 2)) <= tol2:
            return True
    return False


def pointing_game(hits: Sequence[bool], labels: Sequence) -> tuple[float, dict]:
    """Mean over classes of the per-class hit rate, and the per-class rates."""
    per_class: dict = {}
    for hit, label in zip(hits, labels):
        per_class.setdefault(label, []).append(bool(hit))
    rates = {label: float(np.mean(v)) for label, v in per_class.items()}
    return (float(np.mean(list(rates.values()))) if rates else float("nan")), rates


# --------------------------------------------------------------------------- localization
def _components(binary: np.ndarray) -> tuple[np.ndarray, int]:
    try:
        from scipy.ndimage import label
    except ImportError:  # pragma: no cover - scipy comes with scikit-image
        return _label_numpy(binary)
    labels, count = label(binary, structure=np.ones((3, 3), dtype=bool))
    return labels, int(count)


def _label_numpy(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components by flood fill (fallback without SciPy)."""
    labels = np.zeros(binary.shape, dtype=np.int32)
    count = 0
    h, w = binary.shape
    for sy, sx in zip(*np.nonzero(binary)):
        if labels[sy, sx]:
            continue
        count += 1
        stack = [(sy, sx)]
        labels[sy, sx] = count
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < h and 0 <= u < w and binary[v, u] and not labels[v, u]:
                        labels[v, u] = count
                        stack.append((v, u))
    return labels, count


def saliency_box(saliency: np.ndarray, threshold: float, component: str = "largest"):
    """Box of the map thresholded at `threshold` × its maximum (negatives count as 0).

    component="largest": box of the largest 8-connected region; "all": box of every pixel
    above the threshold. None when the map has no positive value.
    """
    sal = np.maximum(np.nan_to_num(np.asarray(saliency, dtype=np.float64), nan=0.0), 0)
    top = sal.max()
    if top <= 0:
        return None
    binary = sal >= threshold * top
    if component == "largest":
        labels, count = _components(binary)
        if count > 1:
            sizes = np.bincount(labels.ravel())[1:]
            binary = labels == int(np.argmax(sizes)) + 1
    elif component != "all":
        raise InputError(f"component must be 'largest' or 'all', got {component!r}")
    ys, xs = np.nonzero(binary)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two end-exclusive boxes."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def localized(
    saliency: np.ndarray,
    boxes: Sequence[Box],
    threshold: float,
    component: str = "largest",
    iou: float = 0.5,
) -> bool:
    """True when the map's box overlaps a ground-truth box with IoU >= `iou`."""
    box = saliency_box(saliency, threshold, component)
    return box is not None and any(box_iou(box, gt) >= iou for gt in boxes)


THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))


@dataclass
class LocalizationResult:
    error: float  # on the test split, at `threshold`
    threshold: float  # chosen on the held-out split
    held_out_error: float
    correct: np.ndarray  # per sample, at `threshold` (all samples)
    test: np.ndarray  # boolean: sample belongs to the test split
    test_groups: int = 0  # groups (images) the error is measured on
    held_out_groups: int = 0  # groups (images) the threshold is chosen on


def localization_table(
    saliency: Sequence[np.ndarray],
    boxes: Sequence[Sequence[Box]],
    thresholds=THRESHOLDS,
    component: str = "largest",
) -> np.ndarray:
    """[samples, thresholds] booleans: is sample i localized at threshold t (`localized`).
    The per-image part of the localization error: it needs one map at a time, so it is
    computed as the maps are made and only these booleans are kept."""
    return np.array(
        [[localized(s, b, t, component) for t in thresholds] for s, b in zip(saliency, boxes)],
        dtype=bool,
    ).reshape(len(saliency), len(thresholds))


def choose_threshold(errors: np.ndarray) -> int:
    """Index of the threshold with the lowest error; among equal lowest errors, the middle
    of the longest run of neighbouring thresholds that share it (the first such run).

    On a small held-out split many thresholds tie; the lowest of them, the old choice, sits
    at the edge of the plateau (for every method the grid's first value, 0.05, whenever
    the lowest thresholds tied), so the test split was scored at a threshold no image had
    chosen. The middle of the plateau is the choice a slightly different split moves least.
    """
    errors = np.asarray(errors, dtype=np.float64)
    tied = np.isclose(errors, errors.min(), rtol=0.0, atol=1e-12)
    best_start, best_len, start = 0, 0, None
    for i, t in enumerate(np.r_[tied, False]):
        if t and start is None:
            start = i
        elif not t and start is not None:
            if i - start > best_len:
                best_start, best_len = start, i - start
            start = None
    return best_start + (best_len - 1) // 2


def localization_reduce(
    table: np.ndarray,
    groups: Sequence[int] | None = None,
    thresholds=THRESHOLDS,
    held_out: float = 0.5,
    seed: int = 0,
) -> LocalizationResult:
    """The localization error from `localization_table`'s booleans: a seeded `held_out`
    share of the groups (images) chooses the threshold (`choose_threshold`), the others are
    scored with it. With a single group, both splits are all samples. This is the step
    that needs the whole set; it reads only the booleans, so `tsgb evaluate --engine ray`
    runs it on the driver after the workers' map step."""
    table = np.asarray(table, dtype=bool)
    n = table.shape[0]
    groups = np.arange(n) if groups is None else np.asarray(groups)
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(unique)[: int(round(held_out * len(unique)))]
    calib = np.isin(groups, chosen)
    test = ~calib
    if not calib.any() or not test.any():
        calib = test = np.ones(n, dtype=bool)
    errors = 1.0 - table[calib].mean(axis=0)
    best = choose_threshold(errors)
    return LocalizationResult(
        error=float(1.0 - table[test, best].mean()),
        threshold=float(thresholds[best]),
        held_out_error=float(errors[best]),
        correct=table[:, best],
        test=test,
        test_groups=len(np.unique(groups[test])),
        held_out_groups=len(np.unique(groups[calib])),
    )


def localization_error(
    saliency: Sequence[np.ndarray],
    boxes: Sequence[Sequence[Box]],
    groups: Sequence[int] | None = None,
    thresholds=THRESHOLDS,
    component: str = "largest",
    held_out: float = 0.5,
    seed: int = 0,
) -> LocalizationResult:
    """Localization error (1 - fraction with IoU >= 0.5), threshold searched on a held-out split.

    Samples are split by `groups` (e.g. the image index, so one image's samples stay together):
    a seeded `held_out` share of groups chooses the threshold with the lowest error, the rest
    is scored with it. With a single group, both splits are all samples.
    """
    table = localization_table(saliency, boxes, thresholds, component)
    return localization_reduce(table, groups, thresholds, held_out, seed)


# --------------------------------------------------------------------------- randomization
def randomizable_layers(model) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes with weight initializers, from the output down."""
    inits = {t.name for t in model.graph.initializer}
    names = [
        node.name or f"{node.op_type}_{i}"
        for i, node in enumerate(model.graph.node)
        if node.op_type in RANDOMIZED_OPS and any(v in inits for v in node.input[:2])
    ]
    return names[::-1]


def randomize_layers(model, layers: Sequence[str], seed: int = 0):
    """A copy of `model` whose `layers` have new Gaussian weights and biases (same std each)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    wanted = set(layers)
    by_name = {t.name: t for t in out.graph.initializer}
    rng = np.random.default_rng(seed)
    done = set()
    for i, node in enumerate(out.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if name not in wanted:
            continue
        for value in node.input[:3]:
            tensor = by_name.get(value)
            if tensor is None or value in done or tensor.data_type != onnx.TensorProto.FLOAT:
                continue
            old = numpy_helper.to_array(tensor)
            std = float(old.std()) or 0.01
            new = rng.normal(0.0, std, size=old.shape).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(new, value))
            done.add(value)
    return out


def sanity_check(
    model,
    method: str,
    x: np.ndarray,
    targets: np.ndarray,
    original: np.ndarray,
    mode: str = "cascading",
    options: dict | None = None,
    seed: int = 0,
    explainer_args: dict | None = None,
    progress: bool = False,
    absolute: bool = True,
    points: int | None = None,
    batch_size: int | None = None,
):
    """Spearman correlation between `original` maps and maps of randomized models.

    mode="cascading": the top k layers randomized, k = 1..L; "independent": one layer at a
    time. Maps are compared by their absolute values (`absolute`, as in Adebayo et al.), so
    a sign flip does not pass for a change. `points`: at most this many of the L steps,
    evenly spaced, the first and the last (full randomization) always among them
    (`sanity_steps`; None: all L); a step's value is the same as in the full run (same
    layers, same seed). `batch_size`: rows per explain call. Returns (the layer of each step
    from the top, correlations [steps, N]).
    """
    from tsgb_onnx.explainer import Explainer

    if mode not in ("cascading", "independent"):
        raise InputError(f"sanity mode must be 'cascading' or 'independent', got {mode!r}")
    proto = _as_proto(model)
    layers = randomizable_layers(proto)
    steps = sanity_steps(len(layers), points)
    rows = []
    bar = Progress(f"sanity {mode} {method}", len(steps), progress)
    chunk = batch_size or max(1, len(x))
    for k in steps:
        chosen = layers[: k + 1] if mode == "cascading" else [layers[k]]
        randomized = randomize_layers(proto, chosen, seed=seed + k)
        ex = Explainer(randomized, method=method, **(explainer_args or {}), **(options or {}))
        maps = np.concatenate(
            [
                ex.explain(x[i : i + chunk], target=targets[i : i + chunk]).saliency
                for i in range(0, len(x), chunk)
            ]
        )
        del ex
        gc.collect()  # an explainer and its sub-explainers form cycles: free its sessions now
        if absolute:
            rows.append(spearman_rows(np.abs(original), np.abs(maps)))
        else:
            rows.append(spearman_rows(original, maps))
        bar.update()
    return [layers[k] for k in steps], np.array(rows).reshape(len(steps), len(x))


def sanity_steps(count: int, points: int | None = None) -> list[int]:
    """Which of `count` randomization steps to run: all, or `points` evenly spaced ones
    with the first and the last among them."""
    if points is None or points <= 0 or points >= count:
        return list(range(count))
    if points == 1:
        return [count - 1]
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, points)})


def _as_proto(model):
    from tsgb_onnx.ir.graph import load_model

    return load_model(model)


# --------------------------------------------------------------------------- class sensitivity
def class_sensitivity(explainer, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Spearman between the maps of the most and the least likely class, per image."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        logits = explainer.infer(xb)
        top = explainer.explain(xb, target=np.argmax(logits, axis=1)).saliency
        bottom = explainer.explain(xb, target=np.argmin(logits, axis=1)).saliency
        out.append(spearman_rows(top, bottom))
    return np.concatenate(out) if out else np.zeros(0)

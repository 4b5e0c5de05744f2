"""Evaluate explanation methods on a data set with ground truth: a method × metric table.

`evaluate(model, data, methods, metrics)` explains every annotated object of every image
(target: the object's class the model scores highest), then computes the chosen metrics:

=====================  ==========================================================  ========
key                    meaning                                                     better
=====================  ==========================================================  ========
pointing               pointing game, mean over classes of the hit rate            higher
loc_error              localization error (threshold searched on a held-out half)  lower
deletion / insertion   RISE AUC of the target's score                              lower / higher
class_sensitivity      Spearman(most-likely map, least-likely map), mean           lower
sanity_cascading       Spearman(original, all layers randomized), mean             lower
sanity_independent     Spearman(original, one layer randomized), mean over layers  lower
images_per_s           maps per second (batched, after one warm-up call)           higher
nan_maps               maps holding NaN or Inf                                     0
=====================  ==========================================================  ========
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tsgb_onnx.errors import InputError, TsgbError
from tsgb_onnx.evaluation import metrics as M
from tsgb_onnx.evaluation.datasets import Dataset, load_dataset
from tsgb_onnx.io.progress import Progress

METRICS = ("pointing", "localization", "deletion", "insertion", "class_sensitivity", "sanity")
# table columns: (key, header, better)
COLUMNS = (
    ("pointing", "pointing game ↑", "higher"),
    ("loc_error", "loc. error ↓", "lower"),
    ("deletion", "deletion AUC ↓", "lower"),
    ("insertion", "insertion AUC ↑", "higher"),
    ("class_sensitivity", "class sensitivity ↓", "lower"),
    ("sanity_cascading", "sanity cascading ↓", "lower"),
    ("sanity_independent", "sanity independent ↓", "lower"),
    ("images_per_s", "images/s ↑", "higher"),
)


@dataclass
class Settings:
    """Protocol settings (defaults follow the papers)."""

    batch_size: int = 32  # images per explain call
    predict_batch: int = 256  # perturbed images per forward call (deletion/insertion)
    step: float = 0.01  # share of pixels per deletion/insertion step
    score: str = "softmax"  # target score in deletion/insertion: softmax or sigmoid
    tolerance: float | None = None  # pointing tolerance in pixels; None: 15 px at 224, scaled
    component: str = "largest"  # localization box: largest connected region, or all pixels
    sanity_samples: int = 8  # samples re-explained per randomized model
    seed: int = 0
    progress: bool = False
    backend: str = "auto"


@dataclass
class Samples:
    """One (image, target) pair per annotated class of an image."""

    image: np.ndarray  # [S] image index
    target: np.ndarray  # [S] class index explained
    label: list  # [S] class name (pointing game groups by it)
    boxes: list  # [S] list of boxes of that class in the image
    mask: list  # [S] union mask or None


@dataclass
class MethodResult:
    method: str
    values: dict = field(default_factory=dict)  # summary metrics
    details: dict = field(default_factory=dict)  # per class / per layer / per sample
    error: str | None = None
    maps: np.ndarray | None = None  # [S, H, W] (not in the JSON)


@dataclass
class Evaluation:
    model: str
    data: str
    images: int
    samples: Samples
    settings: Settings
    metrics: tuple
    results: list
    dataset: Dataset
    inference_images_per_s: float = float("nan")

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "data": self.data,
            "images": self.images,
            "samples": len(self.samples.target),
            "metrics": list(self.metrics),
            "settings": dict(vars(self.settings)),
            "inference_images_per_s": _round(self.inference_images_per_s),
            "methods": {
                r.method: (
                    {"error": r.error}
                    if r.error
                    else {
                        "values": {k: _round(v) for k, v in r.values.items()},
                        "details": _jsonable(r.details),
                    }
                )
                for r in self.results
            },
        }

    def table(self) -> tuple[list[str], list[tuple[str, list[tuple[str, bool]]]], list[str]]:
        """(column headers, [(method, [(cell text, is best)])], one line per failed method)."""
        cols = [c for c in COLUMNS if any(c[0] in r.values for r in self.results)]
        best = {}
        for key, _, better in cols:
            vals = [
                r.values[key] for r in self.results if key in r.values and _finite(r.values[key])
            ]
            if vals:
                best[key] = max(vals) if better == "higher" else min(vals)
        rows = []
        for r in self.results:
            if r.error:
                rows.append((r.method, [("—", False)] * len(cols)))
                continue
            cells = []
            for key, _, _ in cols:
                v = r.values.get(key)
                text = "n/a" if v is None else f"{v:.1f}" if key == "images_per_s" else _fmt(v)
                cells.append((text, v is not None and best.get(key) == v and len(self.results) > 1))
            rows.append((r.method, cells))
        errors = [f"{r.method}: could not run — {r.error}" for r in self.results if r.error]
        return [h for _, h, _ in cols], rows, errors

    def markdown(self, title: str | None = None) -> str:
        headers, rows, errors = self.table()
        lines = [f"### {title}", ""] if title else []
        lines.append("| method | " + " | ".join(headers) + " |")
        lines.append("|---|" + "---:|" * len(headers))
        for method, cells in rows:
            lines.append(
                f"| {method} | " + " | ".join(f"**{t}**" if bold else t for t, bold in cells) + " |"
            )
        if errors:
            lines.append("")
            lines += [f"* {e}" for e in errors]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """The same table as HTML (best values bold)."""
        from html import escape

        headers, rows, errors = self.table()
        out = [
            "<table class=results><tr><th>method</th>"
            + "".join(f"<th>{escape(h)}</th>" for h in headers)
            + "</tr>"
        ]
        for method, cells in rows:
            out.append(
                f"<tr><td>{escape(method)}</td>"
                + "".join(
                    f"<td class=num>{'<b>' if bold else ''}{escape(t)}{'</b>' if bold else ''}</td>"
                    for t, bold in cells
                )
                + "</tr>"
            )
        out.append("</table>")
        out += [f"<p class=fail>{escape(e)}</p>" for e in errors]
        return "".join(out)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _fmt(v) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
    return str(v)


def _round(v):
    if isinstance(v, float):
        return round(v, 6) if math.isfinite(v) else None
    return v


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return _round(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# --------------------------------------------------------------------------- samples
def make_samples(dataset: Dataset, logits: np.ndarray) -> Samples:
    """One sample per (image, label); the target is the label's class with the highest logit."""
    image, target, label, boxes, mask = [], [], [], [], []
    classes = logits.shape[1]
    for i, objs in enumerate(dataset.objects):
        grouped: dict[str, list] = {}
        for obj in objs:
            grouped.setdefault(obj.label, []).append(obj)
        for name, group in grouped.items():
            cls = sorted({c for o in group for c in o.classes})
            bad = [c for c in cls if not 0 <= c < classes]
            if bad:
                raise InputError(
                    f"data set image '{dataset.names[i]}': class {bad[0]} of "
                    f"'{name}' is out of range (the model has {classes} classes)"
                )
            masks = [o.mask for o in group if o.mask is not None]
            image.append(i)
            target.append(max(cls, key=lambda c: logits[i, c]))
            label.append(name)
            boxes.append([o.box for o in group if o.box is not None])
            mask.append(np.logical_or.reduce(masks) if masks else None)
    if not image:
        raise InputError(f"data set '{dataset.name}' has no annotated objects to explain")
    return Samples(np.array(image), np.array(target, dtype=np.int64), label, boxes, mask)


def _batched(fn, n: int, size: int):
    return [fn(slice(i, min(n, i + size))) for i in range(0, n, size)]


# --------------------------------------------------------------------------- evaluation
def parse_metrics(metrics: Sequence[str] | str | None) -> tuple:
    if metrics is None or metrics == "all":
        return METRICS
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric '{unknown[0]}'; available: {', '.join(METRICS)}")
    return tuple(metrics)


def parse_methods(methods: Sequence[str] | str | None) -> list[str]:
    from tsgb_onnx.methods.table import available_methods, get_method

    if methods is None or methods == "all":
        return available_methods()
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)  # unknown name: MethodError listing the registered ones
    return list(methods)


def evaluate(
    model,
    data: Dataset | str,
    methods: Sequence[str] | str | None = None,
    metrics: Sequence[str] | str | None = None,
    options: dict | None = None,
    settings: Settings | None = None,
    output: str | None = None,
    strict: bool = False,
) -> Evaluation:
    """Run `methods` (default: every registered one) on `data` and compute `metrics`.

    options: {method: {option: value}}. A method that fails on this model is reported with
    its error (or raised when `strict`).
    """
    from tsgb_onnx.engine.record import ForwardRecorder
    from tsgb_onnx.ir.graph import build_graph

    settings = settings or Settings()
    metric_list = parse_metrics(metrics)
    method_list = parse_methods(methods)
    graph = build_graph(model, output=output)
    nhwc = graph.channel_axis(graph.input_name) == -1
    shape = graph.input_shape or ()
    size = shape[1 if nhwc else 2] if len(shape) == 4 else None
    size = size if isinstance(size, int) and size > 0 else None
    dataset = data if isinstance(data, Dataset) else load_dataset(data, size=size)
    recorder = ForwardRecorder(graph)
    to_model = (lambda b: np.ascontiguousarray(b.transpose(0, 2, 3, 1))) if nhwc else (lambda b: b)

    def predict(batch: np.ndarray) -> np.ndarray:
        return recorder.infer(to_model(np.asarray(batch, dtype=np.float32)))

    start = time.perf_counter()
    logits = np.concatenate(
        _batched(lambda s: predict(dataset.x[s]), len(dataset), settings.predict_batch)
    )
    infer_rate = len(dataset) / max(time.perf_counter() - start, 1e-9)
    samples = make_samples(dataset, logits)
    results = []
    for name in method_list:
        try:
            results.append(
                _evaluate_method(
                    model,
                    name,
                    (options or {}).get(name, {}),
                    dataset,
                    samples,
                    metric_list,
                    settings,
                    predict,
                    output,
                    to_model,
                )
            )
        except TsgbError as exc:
            if strict:
                raise
            results.append(MethodResult(name, error=str(exc)))
        except Exception as exc:  # a broken method must not stop the others; it is reported
            if strict:
                raise TsgbError(f"method '{name}' failed: {type(exc).__name__}: {exc}") from exc
            results.append(MethodResult(name, error=f"{type(exc).__name__}: {exc}"))
    label = model if isinstance(model, str) else getattr(model, "name", "model")
    return Evaluation(
        str(label),
        dataset.name,
        len(dataset),
        samples,
        settings,
        metric_list,
        results,
        dataset,
        infer_rate,
    )


def _evaluate_method(
    model, name, opts, dataset, samples, metric_list, st: Settings, predict, output, to_model
) -> MethodResult:
    """Explain every sample with method `name` and compute the metrics (x kept NCHW here;
    `to_model` converts a batch to the model's layout)."""
    from tsgb_onnx.explainer import Explainer

    ex = Explainer(model, method=name, output=output, backend=st.backend, **opts)
    x = to_model(dataset.x[samples.image])
    n = len(x)
    ex.explain(x[:1], target=samples.target[:1])  # warm-up: builds the compiled session
    bar = Progress(f"explain {name}", n, st.progress)
    start = time.perf_counter()
    maps = []
    for i in range(0, n, st.batch_size):
        rows = slice(i, i + st.batch_size)
        maps.append(ex.explain(x[rows], target=samples.target[rows]).saliency)
        bar.update(len(maps[-1]))
    elapsed = time.perf_counter() - start
    maps = np.concatenate(maps).astype(np.float64)
    result = MethodResult(name, maps=maps)
    v, d = result.values, result.details
    v["images_per_s"] = n / max(elapsed, 1e-9)
    finite = np.isfinite(maps.reshape(n, -1)).all(axis=1)
    v["nan_maps"] = int((~finite).sum())
    spatial = dataset.x.shape[2:]
    if maps.shape[1:] != spatial:
        raise InputError(
            f"method '{name}' gives maps of shape {maps.shape[1:]}, not the image's {spatial}"
        )
    if "pointing" in metric_list:
        tol = st.tolerance if st.tolerance is not None else 15.0 * min(maps.shape[1:]) / 224
        hits = [
            M.pointing_hit(s, b, m, tol) if (b or m is not None) else None
            for s, b, m in zip(maps, samples.boxes, samples.mask)
        ]
        scored = [(h, lab) for h, lab in zip(hits, samples.label) if h is not None]
        v["pointing"], d["pointing_per_class"] = M.pointing_game(
            [h for h, _ in scored], [lab for _, lab in scored]
        )
        d["pointing_tolerance"], d["pointing_hits"] = tol, hits
    if "localization" in metric_list:
        keep = [i for i, b in enumerate(samples.boxes) if b]
        if keep:
            loc = M.localization_error(
                [maps[i] for i in keep],
                [samples.boxes[i] for i in keep],
                samples.image[keep],
                component=st.component,
                seed=st.seed,
            )
            v["loc_error"] = loc.error
            d["loc_threshold"], d["loc_held_out_error"] = loc.threshold, loc.held_out_error
            d["loc_component"] = st.component
    for mode in ("deletion", "insertion"):
        if mode in metric_list:
            res = M.perturbation(
                predict,
                dataset.x[samples.image],
                np.nan_to_num(maps),
                samples.target,
                mode=mode,
                step=st.step,
                score=st.score,
                batch_size=st.predict_batch,
                progress=st.progress,
            )
            v[mode] = float(res.auc.mean())
            d[f"{mode}_auc"] = res.auc
    if "class_sensitivity" in metric_list:
        unique = np.unique(samples.image)
        cs = M.class_sensitivity(ex, to_model(dataset.x[unique]), st.batch_size)
        v["class_sensitivity"] = float(cs.mean())
    if "sanity" in metric_list:
        k = min(n, st.sanity_samples)
        args = {"output": output, "backend": st.backend}
        layers, casc = M.sanity_check(
            model,
            name,
            x[:k],
            samples.target[:k],
            maps[:k],
            "cascading",
            opts,
            st.seed,
            args,
            st.progress,
        )
        _, ind = M.sanity_check(
            model,
            name,
            x[:k],
            samples.target[:k],
            maps[:k],
            "independent",
            opts,
            st.seed,
            args,
            st.progress,
        )
        if layers:
            v["sanity_cascading"] = float(casc[-1].mean())
            v["sanity_independent"] = float(ind.mean())
        d["sanity_layers"] = layers
        d["sanity_cascading_by_layer"] = casc.mean(axis=1) if layers else []
        d["sanity_independent_by_layer"] = ind.mean(axis=1) if layers else []
    return result

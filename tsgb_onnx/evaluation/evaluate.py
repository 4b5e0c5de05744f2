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

The work is split in two steps, so that it streams and so that `tsgb evaluate --engine ray`
(`tsgb_onnx.scale`) computes the same table: a *map step* (`score_batch`) explains one
batch of images and reduces every map to per-sample values at once (pointing hit, the
localization booleans per threshold, deletion / insertion AUC, the image's class
sensitivity); a *reduce step* (`reduce_scores`) turns the per-sample values of the whole
set into the table (means, the pointing game per class, the localization threshold search
on a held-out half). Only the sanity check re-explains: the first `sanity_samples` samples,
on randomized models, after the map step. Images are loaded one batch at a time from the
data set spec and maps are dropped once scored, so memory does not grow with the number of
images; every model run takes at most the rows `Settings.memory_budget` allows.
"""

from __future__ import annotations

import gc
import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tsgb_onnx.errors import InputError, TsgbError
from tsgb_onnx.evaluation import metrics as M
from tsgb_onnx.evaluation.datasets import Dataset, Item, Source, open_source
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
# a localization error measured on fewer test images than this is flagged under the table
FEW_LOC_IMAGES = 10
# bytes one row of a model run takes, per byte of the model's activations of one row
# (measured on EfficientNet-Lite0 with ONNX Runtime 1.32: plain inference ~0.3-0.6, TSGB's
# compiled explainer ~1.4, the gradient's ~0.6; docs/benchmarks.md)
EXPLAIN_ROW_FACTOR = 1.5
INFER_ROW_FACTOR = 0.6


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
    # randomization steps of each sanity test (evenly spaced, the last = every layer
    # randomized always among them; each step's value is the full protocol's); 0: all
    sanity_layers: int = 12
    # MiB one model run may take: the rows of explain calls, of deletion/insertion's forward
    # calls and of SmoothGrad / Integrated Gradients / Group-CAM chunks are capped so that
    # rows × (the model's activation bytes per row × a measured factor) fit; 0: no cap
    memory_budget: float = 1024
    # keep every map in `MethodResult.maps` ([S, H, W]); None: when `data` is an in-memory
    # `Dataset` (a spec is streamed and its maps dropped once scored)
    keep_maps: bool | None = None
    keep_worst: int = 0  # per method, the maps of this many worst samples (validate's page)


@dataclass
class Samples:
    """One (image, target) pair per annotated class of an image."""

    image: np.ndarray  # [S] image index
    target: np.ndarray  # [S] class index explained
    label: list  # [S] class name (pointing game groups by it)
    boxes: list  # [S] list of boxes of that class in the image
    mask: list  # [S] union mask or None (None throughout when the data set was streamed)


@dataclass
class Worst:
    """One of a method's worst samples, kept for a report: its map and picture."""

    sample: int
    badness: tuple
    saliency: np.ndarray
    rgb: np.ndarray
    name: str


@dataclass
class MethodResult:
    method: str
    values: dict = field(default_factory=dict)  # summary metrics
    details: dict = field(default_factory=dict)  # per class / per layer / per sample
    error: str | None = None
    maps: np.ndarray | None = None  # [S, H, W] (not in the JSON; see Settings.keep_maps)
    worst: list = field(default_factory=list)  # Worst, worst first (Settings.keep_worst)


@dataclass
class Evaluation:
    model: str
    data: str
    images: int
    samples: Samples
    settings: Settings
    metrics: tuple
    results: list
    dataset: Dataset | Source
    inference_images_per_s: float = float("nan")
    engine: str = "in-process"
    failed: list = field(default_factory=list)  # images that could not be read (Ray engine)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "data": self.data,
            "images": self.images,
            "samples": len(self.samples.target),
            "metrics": list(self.metrics),
            "settings": dict(vars(self.settings)),
            "engine": self.engine,
            "failed": list(self.failed),
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
        """(column headers, [(method, [(cell text, is best)])], lines under the table: one
        per failed method, and a note where a value cannot rank methods).

        A column's best value is bold only where it is better than another method's: when
        every method has the same value, none is best."""
        cols = [c for c in COLUMNS if any(c[0] in r.values for r in self.results)]
        best = {}
        for key, _, better in cols:
            vals = [
                r.values[key] for r in self.results if key in r.values and _finite(r.values[key])
            ]
            if vals and min(vals) != max(vals):
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
                cells.append((text, v is not None and best.get(key) == v))
            rows.append((r.method, cells))
        lines = [f"{r.method}: could not run — {r.error}" for r in self.results if r.error]
        lines += self._notes()
        return [h for _, h, _ in cols], rows, lines

    def _notes(self) -> list[str]:
        done = [r for r in self.results if not r.error and "loc_error" in r.values]
        if not done:
            return []
        d = done[0].details
        test, held = d.get("loc_test_images", 0), d.get("loc_held_out_images", 0)
        if test >= FEW_LOC_IMAGES:
            return []
        return [
            f"loc. error: threshold chosen on {held} image(s), error measured on {test} "
            f"(fewer than {FEW_LOC_IMAGES}): too few to rank methods; use more annotated "
            "images"
        ]

    def markdown(self, title: str | None = None) -> str:
        headers, rows, lines_below = self.table()
        lines = [f"### {title}", ""] if title else []
        lines.append("| method | " + " | ".join(headers) + " |")
        lines.append("|---|" + "---:|" * len(headers))
        for method, cells in rows:
            lines.append(
                f"| {method} | " + " | ".join(f"**{t}**" if bold else t for t, bold in cells) + " |"
            )
        if lines_below:
            lines.append("")
            lines += [f"* {e}" for e in lines_below]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """The same table as HTML (best values bold)."""
        from html import escape

        headers, rows, lines_below = self.table()
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
        out += [f"<p class=fail>{escape(e)}</p>" for e in lines_below]
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
def _grouped(objects, logits_row: np.ndarray | None, targets, name: str):
    """(label, target, boxes, mask) per class name of one image's objects, in order."""
    grouped: dict[str, list] = {}
    for obj in objects:
        grouped.setdefault(obj.label, []).append(obj)
    out = []
    for k, (label, group) in enumerate(grouped.items()):
        cls = sorted({c for o in group for c in o.classes})
        if logits_row is not None:
            classes = logits_row.shape[0]
            bad = [c for c in cls if not 0 <= c < classes]
            if bad:
                raise InputError(
                    f"data set image '{name}': class {bad[0]} of "
                    f"'{label}' is out of range (the model has {classes} classes)"
                )
            target = max(cls, key=lambda c: logits_row[c])
        else:
            target = targets[k]
        masks = [o.mask for o in group if o.mask is not None]
        out.append(
            (
                label,
                int(target),
                [o.box for o in group if o.box is not None],
                np.logical_or.reduce(masks) if masks else None,
            )
        )
    return out


def samples_of(items: Sequence[Item], logits: np.ndarray | None = None, targets=None) -> Samples:
    """The samples of loaded images: one per class name of an image's objects, the target
    its class the model scores highest (`logits`, one row per item) or given (`targets`:
    per item, the list of its samples' targets)."""
    image, target, label, boxes, mask = [], [], [], [], []
    for k, it in enumerate(items):
        row = None if logits is None else logits[k]
        given = None if targets is None else targets[k]
        for lab, t, b, m in _grouped(it.objects, row, given, it.name):
            image.append(it.index)
            target.append(t)
            label.append(lab)
            boxes.append(b)
            mask.append(m)
    image_index = np.array(image, dtype=np.int64)
    return Samples(image_index, np.array(target, dtype=np.int64), label, boxes, mask)


def make_samples(dataset: Dataset, logits: np.ndarray) -> Samples:
    """One sample per (image, label); the target is the label's class with the highest logit."""
    samples = samples_of([dataset.load(i) for i in range(len(dataset))], logits)
    if not len(samples.target):
        raise InputError(f"data set '{dataset.name}' has no annotated objects to explain")
    return samples


def concat_samples(parts: Sequence[Samples], keep_masks: bool = True) -> Samples:
    parts = list(parts)
    mask = (
        [m for p in parts for m in p.mask]
        if keep_masks
        else [None] * sum(len(p.target) for p in parts)
    )
    return Samples(
        np.concatenate([p.image for p in parts]) if parts else np.zeros(0, np.int64),
        np.concatenate([p.target for p in parts]) if parts else np.zeros(0, np.int64),
        [lab for p in parts for lab in p.label],
        [b for p in parts for b in p.boxes],
        mask,
    )


# --------------------------------------------------------------------------- memory
def activation_bytes(graph) -> int:
    """Bytes of one row of the model's float activations (every node output whose
    dimensions after the batch are known), at least one input row."""
    total = 0
    for node in graph.nodes:
        for out in node.outputs:
            shape = graph.shapes.get(out)
            if (
                out
                and shape
                and graph.is_float(out)
                and all(isinstance(d, int) and d > 0 for d in shape[1:])
            ):
                total += int(np.prod(shape[1:], dtype=np.int64)) * 4
    shape = graph.input_shape or ()
    if shape and all(isinstance(d, int) and d > 0 for d in shape[1:]):
        total = max(total, int(np.prod(shape[1:], dtype=np.int64)) * 4)
    return total


def budget_rows(graph, budget_mib: float, factor: float, cap: int) -> int:
    """Rows per model run within `budget_mib` (at most `cap`; `cap` when there is no
    budget or the model's sizes are unknown)."""
    per_row = activation_bytes(graph) * factor
    if not budget_mib or budget_mib <= 0 or per_row <= 0:
        return max(1, int(cap))
    return int(max(1, min(cap, budget_mib * 2**20 // per_row)))


@dataclass
class Plan:
    """What scoring needs besides the explainer: metrics, settings and the rows per call."""

    metrics: tuple
    settings: Settings
    explain_rows: int  # rows per explain call
    predict_rows: int  # rows per forward call of deletion / insertion

    @classmethod
    def for_graph(cls, graph, metrics: tuple, st: Settings) -> Plan:
        return cls(
            metrics,
            st,
            budget_rows(graph, st.memory_budget, EXPLAIN_ROW_FACTOR, st.batch_size),
            budget_rows(graph, st.memory_budget, INFER_ROW_FACTOR, st.predict_batch),
        )


def method_options(method: str, options: dict, rows: int) -> dict:
    """`options` plus, for a method that runs copies of the batch in chunks (SmoothGrad,
    Integrated Gradients, Group-CAM: the option `batch_size`), chunks of `rows` unless the
    options say otherwise."""
    from tsgb_onnx.methods.table import get_method

    chunked = "batch_size" in get_method(method).defaults
    aliases = ("nt_samples_batch_size", "samples_per_batch", "internal_batch_size")
    if chunked and not any(k in options for k in ("batch_size", *aliases)):
        return {**options, "batch_size": int(rows)}
    return dict(options)


def model_layout(graph):
    """(channels-last?, NCHW batch → the model's layout)."""
    nhwc = graph.channel_axis(graph.input_name) == -1
    if nhwc:
        return True, lambda b: np.ascontiguousarray(np.asarray(b).transpose(0, 2, 3, 1))
    return False, lambda b: b


def model_size(graph) -> int | None:
    nhwc = graph.channel_axis(graph.input_name) == -1
    shape = graph.input_shape or ()
    size = shape[1 if nhwc else 2] if len(shape) == 4 else None
    return size if isinstance(size, int) and size > 0 else None


# --------------------------------------------------------------------------- the map step
def explain_rows(ex, x: np.ndarray, targets: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(ex.explain(x[i : i + rows], target=targets[i : i + rows]).saliency)
            for i in range(0, len(x), rows)
        ]
    )


def score_batch(ex, name: str, predict, to_model, items, samples: Samples, plan: Plan) -> dict:
    """Explain the samples of one batch of loaded images with `ex` and reduce every map to
    per-sample values at once. Returns {"maps": [S, H, W] float64, "explain_s": seconds,
    "nan": [S] bool, "pointing": [S] bool or None (no box or mask), "loc": [S] bool
    [thresholds] or None (no box), "deletion" / "insertion": [S] AUC, "class_sensitivity":
    [S] (the value of the sample's image)}, the metrics asked for only."""
    st, metrics = plan.settings, plan.metrics
    out: dict = {}
    if not len(samples.target):
        return out
    position = {it.index: k for k, it in enumerate(items)}
    x_images = np.stack([it.x for it in items])
    xs = x_images[[position[int(i)] for i in samples.image]]
    start = time.perf_counter()
    maps = explain_rows(ex, to_model(xs), samples.target, plan.explain_rows)
    out["explain_s"] = time.perf_counter() - start
    maps = maps.astype(np.float64)
    spatial = xs.shape[2:]
    if maps.shape[1:] != spatial:
        raise InputError(
            f"method '{name}' gives maps of shape {maps.shape[1:]}, not the image's {spatial}"
        )
    out["maps"] = maps
    out["nan"] = ~np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)
    if "pointing" in metrics:
        tol = out["tolerance"] = pointing_tolerance(st, spatial)
        out["pointing"] = [
            M.pointing_hit(s, b, m, tol) if (b or m is not None) else None
            for s, b, m in zip(maps, samples.boxes, samples.mask)
        ]
    if "localization" in metrics:
        out["loc"] = [
            M.localization_table([s], [b], component=st.component)[0] if b else None
            for s, b in zip(maps, samples.boxes)
        ]
    for mode in ("deletion", "insertion"):
        if mode in metrics:
            res = M.perturbation(
                predict,
                xs,
                np.nan_to_num(maps),
                samples.target,
                mode=mode,
                step=st.step,
                score=st.score,
                batch_size=plan.predict_rows,
            )
            out[mode] = res.auc
    if "class_sensitivity" in metrics:
        unique = np.unique(samples.image)
        cs = M.class_sensitivity(
            ex, to_model(x_images[[position[int(i)] for i in unique]]), plan.explain_rows
        )
        by_image = dict(zip(unique.tolist(), cs))
        out["class_sensitivity"] = np.array([by_image[int(i)] for i in samples.image])
    return out


def pointing_tolerance(st: Settings, spatial) -> float:
    return st.tolerance if st.tolerance is not None else 15.0 * min(spatial) / 224


def badness(part: dict, i: int) -> tuple:
    """How bad sample `i` of a scored batch is, for a report's worst cases: a NaN map, then
    a pointing miss, then the highest deletion AUC, then the lowest insertion AUC."""
    nan = int(bool(part["nan"][i])) if "nan" in part else 0
    miss = int(part["pointing"][i] is False) if "pointing" in part else 0
    dele = float(part["deletion"][i]) if "deletion" in part else 0.0
    ins = -float(part["insertion"][i]) if "insertion" in part else 0.0
    return (nan, miss, dele, ins)


# --------------------------------------------------------------------------- the reduce step
def reduce_scores(name: str, parts: Sequence[dict], samples: Samples, plan: Plan) -> MethodResult:
    """The table's values of one method from the per-sample values of every batch
    (`score_batch`'s dicts, in sample order), and the details the JSON holds."""
    st, metrics = plan.settings, plan.metrics
    parts = [p for p in parts if p]
    n = len(samples.target)

    def joined(key):
        return [v for p in parts for v in p[key]]

    result = MethodResult(name)
    v, d = result.values, result.details
    v["images_per_s"] = n / max(sum(p["explain_s"] for p in parts), 1e-9)
    v["nan_maps"] = int(sum(int(np.sum(p["nan"])) for p in parts))
    if "pointing" in metrics:
        hits = joined("pointing")
        scored = [(h, lab) for h, lab in zip(hits, samples.label) if h is not None]
        v["pointing"], d["pointing_per_class"] = M.pointing_game(
            [h for h, _ in scored], [lab for _, lab in scored]
        )
        d["pointing_tolerance"] = parts[0].get("tolerance") if parts else None
        d["pointing_hits"] = hits
    if "localization" in metrics:
        rows = joined("loc")
        keep = [i for i, r in enumerate(rows) if r is not None]
        if keep:
            loc = M.localization_reduce(
                np.stack([rows[i] for i in keep]), samples.image[keep], seed=st.seed
            )
            v["loc_error"] = loc.error
            d["loc_threshold"], d["loc_held_out_error"] = loc.threshold, loc.held_out_error
            d["loc_component"] = st.component
            d["loc_test_images"], d["loc_held_out_images"] = loc.test_groups, loc.held_out_groups
    for mode in ("deletion", "insertion"):
        if mode in metrics:
            auc = np.asarray(joined(mode), dtype=np.float64)
            v[mode] = float(auc.mean())
            d[f"{mode}_auc"] = auc
    if "class_sensitivity" in metrics:
        per_image = dict(zip(samples.image.tolist(), joined("class_sensitivity")))
        v["class_sensitivity"] = float(np.mean(list(per_image.values())))
    return result


def run_sanity(
    result: MethodResult,
    model,
    name: str,
    opts: dict,
    x: np.ndarray,
    targets: np.ndarray,
    maps: np.ndarray,
    plan: Plan,
    output: str | None,
) -> None:
    """The sanity checks of `result`'s method on the first samples (`x` in the model's
    layout, their targets and original maps), into its values and details."""
    st = plan.settings
    args = {"output": output, "backend": st.backend}
    opts = method_options(name, opts, plan.explain_rows)  # chunks within the budget too
    runs = {}
    for mode in ("cascading", "independent"):
        runs[mode] = M.sanity_check(
            model,
            name,
            x,
            targets,
            maps,
            mode,
            opts,
            st.seed,
            args,
            st.progress,
            points=st.sanity_layers or None,
            batch_size=plan.explain_rows,
        )
    (layers, casc), (_, ind) = runs["cascading"], runs["independent"]
    v, d = result.values, result.details
    if layers:
        v["sanity_cascading"] = float(casc[-1].mean())
        v["sanity_independent"] = float(ind.mean())
    d["sanity_layers"] = layers
    d["sanity_cascading_by_layer"] = casc.mean(axis=1) if layers else []
    d["sanity_independent_by_layer"] = ind.mean(axis=1) if layers else []


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


def open_data(data, size: int | None) -> Dataset | Source:
    """`data` as something with `load(i)` / `batches(n)`: an in-memory `Dataset` or a
    `Source` as given, a spec opened lazily."""
    if isinstance(data, (Dataset, Source)):
        return data
    return open_source(data, size=size)


def evaluate(
    model,
    data: Dataset | Source | str,
    methods: Sequence[str] | str | None = None,
    metrics: Sequence[str] | str | None = None,
    options: dict | None = None,
    settings: Settings | None = None,
    output: str | None = None,
    strict: bool = False,
) -> Evaluation:
    """Run `methods` (default: every registered one) on `data` and compute `metrics`.

    options: {method: {option: value}}. A method that fails on this model is reported with
    its error (or raised when `strict`). `data` given as a spec (a path, 'skimage',
    'synthetic:N') is streamed: memory does not grow with its size.
    """
    from tsgb_onnx.engine.record import ForwardRecorder
    from tsgb_onnx.ir.graph import build_graph

    settings = settings or Settings()
    metric_list = parse_metrics(metrics)
    method_list = parse_methods(methods)
    graph = build_graph(model, output=output)
    _, to_model = model_layout(graph)
    source = open_data(data, model_size(graph))
    keep_maps = settings.keep_maps
    if keep_maps is None:
        keep_maps = isinstance(source, Dataset)
    plan = Plan.for_graph(graph, metric_list, settings)
    recorder = ForwardRecorder(graph)

    def predict(batch: np.ndarray) -> np.ndarray:
        return recorder.infer(to_model(np.asarray(batch, dtype=np.float32)))

    # first pass: the targets (the annotated class the model scores highest), plain inference
    bar = Progress("targets", len(source), settings.progress)
    parts, targets, elapsed = [], [], 0.0
    for items in source.batches(settings.batch_size):
        x = np.stack([it.x for it in items])
        start = time.perf_counter()
        logits = np.concatenate(
            [predict(x[i : i + plan.predict_rows]) for i in range(0, len(x), plan.predict_rows)]
        )
        elapsed += time.perf_counter() - start
        part = samples_of(items, logits)
        parts.append(concat_samples([part], keep_masks=False))
        per_item: dict[int, list] = {}
        for i, t in zip(part.image, part.target):
            per_item.setdefault(int(i), []).append(int(t))
        targets += [per_item.get(it.index, []) for it in items]
        bar.update(len(items))
    bar.close()
    samples = concat_samples(parts, keep_masks=False)
    if not len(samples.target):
        raise InputError(f"data set '{source.name}' has no annotated objects to explain")
    infer_rate = len(source) / max(elapsed, 1e-9)
    results = []
    for name in method_list:
        try:
            results.append(
                _evaluate_method(
                    model,
                    name,
                    (options or {}).get(name, {}),
                    source,
                    targets,
                    samples,
                    plan,
                    predict,
                    to_model,
                    output,
                    keep_maps,
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
        finally:  # the method's sessions are gone: hand their arena memory back
            gc.collect()
            recorder.release_memory()
    label = model if isinstance(model, str) else getattr(model, "name", "model")
    return Evaluation(
        str(label),
        source.name,
        len(source),
        samples,
        settings,
        metric_list,
        results,
        source,
        infer_rate,
    )


def _evaluate_method(
    model,
    name: str,
    opts: dict,
    source,
    targets: list,
    samples: Samples,
    plan: Plan,
    predict,
    to_model,
    output: str | None,
    keep_maps: bool,
) -> MethodResult:
    """Explain every sample with method `name`, batch by batch, scoring each map as it is
    made; then reduce and run the sanity checks."""
    from tsgb_onnx.explainer import Explainer

    st = plan.settings
    ex = Explainer(
        model,
        method=name,
        output=output,
        backend=st.backend,
        **method_options(name, opts, plan.explain_rows),
    )
    n = len(samples.target)
    k = min(n, st.sanity_samples) if "sanity" in plan.metrics else 0
    bar = Progress(f"explain {name}", n, st.progress)
    parts, maps, first, worst = [], [], [], []
    done = 0
    for items in source.batches(st.batch_size):
        batch = samples_of(items, targets=[targets[it.index] for it in items])
        if not len(batch.target):
            continue
        if done == 0:  # warm-up: builds the compiled session outside the timing
            x0 = to_model(np.stack([it.x for it in items])[:1])
            ex.explain(x0, target=batch.target[:1])
        part = score_batch(ex, name, predict, to_model, items, batch, plan)
        batch_maps = part.pop("maps")
        if keep_maps:
            maps.append(batch_maps)
        by_index = {it.index: it for it in items}
        for j in range(min(k - len(first), len(batch_maps))):
            first.append((by_index[int(batch.image[j])].x, batch.target[j], batch_maps[j]))
        for j in range(len(batch_maps)) if st.keep_worst else ():
            entry = (badness(part, j), -(done + j))
            if len(worst) == st.keep_worst and entry <= worst[0][:2]:
                continue
            it = by_index[int(batch.image[j])]
            kept = Worst(done + j, entry[0], batch_maps[j].astype(np.float32), it.rgb, it.name)
            if len(worst) < st.keep_worst:
                heapq.heappush(worst, (*entry, kept))
            else:
                heapq.heapreplace(worst, (*entry, kept))
        parts.append(part)
        done += len(batch_maps)
        bar.update(len(batch_maps))
    bar.close()
    result = reduce_scores(name, parts, samples, plan)
    if keep_maps:
        result.maps = np.concatenate(maps)
    result.worst = [w[2] for w in sorted(worst, key=lambda w: w[:2], reverse=True)]
    del ex
    gc.collect()  # the method's sessions go before the sanity checks build theirs
    if k:
        x = to_model(np.stack([f[0] for f in first]))
        run_sanity(
            result,
            model,
            name,
            opts,
            x,
            np.array([f[1] for f in first], dtype=np.int64),
            np.stack([f[2] for f in first]),
            plan,
            output,
        )
    return result

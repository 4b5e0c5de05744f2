"""`tsgb evaluate --engine ray`: the evaluation's map step on Ray, its reduce step here.

The driver opens the data set lazily (`evaluation.datasets.open_source`: one small JSON
spec per image, no pixels) and hands the specs to Ray Data. `EvaluateWorker`, an actor
class, builds one explainer per method once (sub-explainers of one `Explainer`: the model
is parsed once per actor, its bytes shipped once), then per batch loads the images,
finds the samples' targets, and runs the in-process evaluation's own map step
(`evaluation.evaluate.score_batch`) for every method. It writes one Parquet part per
batch: a row per image × object × method with the per-sample values (pointing hit, the
localization booleans per threshold, deletion / insertion AUC, the image's class
sensitivity, the map). The driver then reads the parts back (never the maps but the
first few) and runs the in-process reduce step (`reduce_scores`: means, the pointing game
per class, the localization threshold chosen on a seeded held-out half of the images)
and the sanity checks (first `sanity_samples` samples, on the driver): the same table
as in-process.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tsgb_onnx.errors import InputError, TsgbError
from tsgb_onnx.scale import store
from tsgb_onnx.scale.explain import RunSummary, map_columns, map_of, resolve
from tsgb_onnx.scale.runtime import connect, peak_rss_mb, ray_module


@dataclass
class EvaluateJob:
    methods: list = field(default_factory=list)
    metrics: list = field(default_factory=list)
    options: dict = field(default_factory=dict)  # {method: {option: value}}
    settings: dict = field(default_factory=dict)  # evaluation.evaluate.Settings fields
    output: str | None = None
    prep: dict = field(default_factory=dict)  # the data set's preprocessing
    out_dir: str = "tsgb_eval"
    threads: int | None = None


class EvaluateWorker:
    """One Ray actor: the explainers of every method on one parsed model; `__call__`
    scores a batch of images and writes its Parquet part."""

    def __init__(self, model, job: dict):
        from tsgb_onnx.evaluation.evaluate import Plan, Settings, method_options, model_layout
        from tsgb_onnx.explainer import Explainer

        self.job = EvaluateJob(**job)
        self.settings = Settings(**self.job.settings)
        model = resolve(model)
        self.base = Explainer(
            model,
            method="gradient",
            output=self.job.output,
            backend=self.settings.backend,
            threads=self.job.threads,
        )
        graph = self.base.graph
        self.plan = Plan.for_graph(graph, tuple(self.job.metrics), self.settings)
        _, self.to_model = model_layout(graph)
        self.explainers, self.failed, self.warm = {}, {}, set()
        for name in self.job.methods:
            opts = method_options(name, self.job.options.get(name, {}), self.plan.explain_rows)
            try:
                self.explainers[name] = self.base.sub_explainer(name, **opts)
            except TsgbError as exc:
                self.failed[name] = str(exc)
        self.root = Path(self.job.out_dir)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.base.recorder.infer(self.to_model(np.asarray(batch, dtype=np.float32)))

    def __call__(self, batch: dict) -> dict:
        from tsgb_onnx.evaluation.datasets import load_item

        start = time.perf_counter()
        keys = [str(k) for k in batch["key"]]
        items, keyed, errors = [], {}, []
        for key, spec in zip(keys, batch["spec"]):
            spec = json.loads(str(spec))
            try:
                item = load_item(spec, self.job.prep)
            except InputError as exc:
                errors.append((key, int(spec["index"]), spec["name"], str(exc)))
                continue
            items.append(item)
            keyed[item.index] = key
        rows: list[dict] = []
        infer_s = 0.0
        samples, items = self._samples(items, keyed, errors) if items else (None, [])
        if items:
            infer_s = samples.pop("infer_s")
            rows = self._score(items, keyed, samples["samples"])
        for r in rows:
            r["infer_s"] = infer_s / len(rows)
        store.write_batch(
            self.root,
            keys,
            {
                store.RESULTS: result_columns(rows) if rows else None,
                store.ERRORS: _error_columns(errors) if errors else None,
            },
        )
        failed = {e[0] for e in errors}
        count: dict[str, int] = {}
        for r in rows:
            count[r["key"]] = count.get(r["key"], 0) + 1
        seconds = (time.perf_counter() - start) / max(len(keys), 1)
        return {
            "key": np.array(keys, dtype=object),
            "rows": np.array([count.get(k, 0) for k in keys], dtype=np.int64),
            "failed": np.array([k in failed for k in keys]),
            "pid": np.full(len(keys), os.getpid(), dtype=np.int64),
            "rss_mb": np.full(len(keys), peak_rss_mb()),
            "seconds": np.full(len(keys), seconds),
        }

    def _samples(self, items, keyed, errors):
        """The samples of the loaded images (targets from one forward pass); an image
        whose annotation the model cannot have (a class out of range) is an error."""
        from tsgb_onnx.evaluation.evaluate import concat_samples, samples_of

        x = np.stack([it.x for it in items])
        rows = self.plan.predict_rows
        start = time.perf_counter()
        logits = np.concatenate([self.predict(x[i : i + rows]) for i in range(0, len(x), rows)])
        infer_s = time.perf_counter() - start
        parts, kept = [], []
        for k, it in enumerate(items):
            try:
                parts.append(samples_of([it], logits[k : k + 1]))
            except InputError as exc:
                errors.append((keyed[it.index], it.index, it.name, str(exc)))
                continue
            kept.append(it)
        return {"samples": concat_samples(parts), "infer_s": infer_s}, kept

    def _score(self, items, keyed, samples) -> list[dict]:
        from tsgb_onnx.evaluation.evaluate import score_batch

        rows: list[dict] = []
        if not len(samples.target):
            return [_row(keyed[it.index], it, None) for it in items]  # nothing annotated
        position = np.zeros(len(samples.target), dtype=np.int64)
        for j in range(1, len(samples.target)):
            same = samples.image[j] == samples.image[j - 1]
            position[j] = position[j - 1] + 1 if same else 0
        by_index = {it.index: it for it in items}
        for name in self.job.methods:
            ex = self.explainers.get(name)
            error = self.failed.get(name)
            part: dict = {}
            if ex is not None:
                try:
                    if name not in self.warm:  # builds the sessions outside the timing
                        x0 = self.to_model(by_index[int(samples.image[0])].x[None])
                        ex.explain(x0, target=samples.target[:1])
                        self.warm.add(name)
                    part = score_batch(
                        ex, name, self.predict, self.to_model, items, samples, self.plan
                    )
                except TsgbError as exc:
                    error = str(exc)
                except Exception as exc:  # as in-process: a broken method is reported
                    error = f"{type(exc).__name__}: {exc}"
            if error is not None:  # a row per image, so that each image is in the part
                rows += [{**_row(keyed[it.index], it, name), "error": error} for it in items]
                continue
            n = len(samples.target)
            for j in range(n):
                i = int(samples.image[j])
                rows.append(
                    {
                        **_row(keyed[i], by_index[i], name),
                        "sample": int(position[j]),
                        "label": samples.label[j],
                        "target": int(samples.target[j]),
                        "boxes": json.dumps([list(map(int, b)) for b in samples.boxes[j]]),
                        "pointing": _get(part, "pointing", j),
                        "loc": _get(part, "loc", j),
                        "deletion": _get(part, "deletion", j),
                        "insertion": _get(part, "insertion", j),
                        "class_sensitivity": _get(part, "class_sensitivity", j),
                        "nan": bool(part["nan"][j]),
                        "explain_s": part["explain_s"] / n,
                        "tolerance": part.get("tolerance"),
                        "saliency": part["maps"][j].astype(np.float32),
                    }
                )
        return rows


def _row(key: str, item, method) -> dict:
    return {"key": key, "image": int(item.index), "name": item.name, "method": method}


def _get(part: dict, key: str, j: int):
    if key not in part:
        return None
    value = part[key][j]
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value.astype(bool).tolist()
    return value.item() if hasattr(value, "item") else value


RESULT_TYPES = {
    "key": "string",
    "image": "int64",
    "name": "string",
    "method": "string",
    "error": "string",
    "sample": "int32",
    "label": "string",
    "target": "int64",
    "boxes": "string",
    "pointing": "bool_",
    "deletion": "float64",
    "insertion": "float64",
    "class_sensitivity": "float64",
    "nan": "bool_",
    "explain_s": "float64",
    "infer_s": "float64",
    "tolerance": "float64",
}


def result_columns(rows: list[dict]) -> dict:
    pa, _ = store.pyarrow_modules()
    columns = {
        name: pa.array([r.get(name) for r in rows], type=getattr(pa, kind)())
        for name, kind in RESULT_TYPES.items()
    }
    columns["loc"] = pa.array([r.get("loc") for r in rows], type=pa.list_(pa.bool_()))
    maps = [r.get("saliency") for r in rows]
    shaped = [m if m is not None else np.zeros(0, np.float32) for m in maps]
    saliency, shapes = map_columns(shaped)
    columns["saliency"], columns["shape"] = saliency, shapes
    return columns


def _error_columns(errors: list[tuple]) -> dict:
    return {
        "key": [e[0] for e in errors],
        "image": [e[1] for e in errors],
        "name": [e[2] for e in errors],
        "reason": [e[3] for e in errors],
    }


# -- the driver --------------------------------------------------------------------------------
def run_evaluate(
    model: str,
    data,
    methods,
    metrics,
    options: dict | None,
    settings,
    output: str | None,
    out_dir: str | Path,
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    batch_size: int | None = None,
):
    """`evaluate` with its map step on Ray: (Evaluation, RunSummary)."""
    from tsgb_onnx.evaluation.datasets import open_source
    from tsgb_onnx.evaluation.evaluate import Settings, model_size, parse_methods, parse_metrics
    from tsgb_onnx.ir.graph import build_graph
    from tsgb_onnx.scale.explain import _jsonable, _map

    ray = ray_module()
    settings = settings or Settings()
    metric_list = parse_metrics(metrics)
    method_list = parse_methods(methods)
    data_bytes = Path(model).read_bytes()
    graph = build_graph(data_bytes, output=output)
    source = open_source(data, size=model_size(graph))
    records = [
        {"key": str(s["index"]), "spec": json.dumps(s, sort_keys=True)} for s in source.specs
    ]
    run = {
        "command": "evaluate",
        "model": store.digest(data_bytes),
        "data": source.name,
        "images": len(records),
        "methods": method_list,
        "metrics": list(metric_list),
        "options": _jsonable(options or {}),
        "settings": _jsonable(
            {k: v for k, v in asdict(settings).items() if k not in ("progress", "keep_maps")}
        ),
        "output": output,
    }
    job = EvaluateJob(
        methods=method_list,
        metrics=list(metric_list),
        options=options or {},
        settings={**asdict(settings), "progress": False, "keep_maps": False, "keep_worst": 0},
        output=output,
        prep=source.prep,
        out_dir=str(out_dir),
    )
    summary = RunSummary(inputs=len(records))
    with store.OutDir(out_dir, run) as out:
        done = out.done_keys()
        todo = [r for r in records if r["key"] not in done]
        summary.before = len(records) - len(todo)
        start = time.perf_counter()
        with connect(address, workers, progress) as cluster:
            if progress:
                import sys

                print(
                    f"tsgb: {len(todo)} of {len(records)} images to score on {cluster.describe()}",
                    file=sys.stderr,
                )
            job.threads = cluster.threads
            size = batch_size or settings.batch_size
            for row in _map(ray, todo, EvaluateWorker, data_bytes, asdict(job), size, cluster):
                summary.add(row)
        summary.seconds = time.perf_counter() - start
        evaluation = reduce_run(
            out.root, source, data_bytes, method_list, metric_list, options or {}, settings, output
        )
        evaluation.model = str(model)
        summary.failed = len(evaluation.failed)
        summary.complete = True
        out.write_summary({**asdict(summary), "rate": summary.rate, "busy_rate": summary.busy_rate})
    return evaluation, summary


def reduce_run(root, source, model_bytes, methods, metrics, options, settings, output):
    """The evaluation table from the parts under `root` (the reduce step, then the sanity
    checks on the first samples)."""
    from tsgb_onnx.evaluation.datasets import load_item
    from tsgb_onnx.evaluation.evaluate import (
        Evaluation,
        MethodResult,
        Plan,
        Samples,
        model_layout,
        reduce_scores,
        run_sanity,
    )
    from tsgb_onnx.ir.graph import build_graph

    graph = build_graph(model_bytes, output=output)
    plan = Plan.for_graph(graph, tuple(metrics), settings)
    _, to_model = model_layout(graph)
    wanted = [c for c in RESULT_TYPES if c != "name"] + ["loc"]
    table = store.read_parts(root, store.RESULTS, wanted)  # not the maps
    errors = store.read_parts(root, store.ERRORS, ["key", "image", "name", "reason"])
    failed = [] if errors is None else sorted(errors.to_pylist(), key=lambda e: e["image"])
    rows = [] if table is None else table.to_pylist()
    sample_rows = [r for r in rows if r["method"] is not None and r["error"] is None]
    del table
    order = {m: k for k, m in enumerate(methods)}
    sample_rows.sort(key=lambda r: (r["image"], r["sample"], order.get(r["method"], 0)))
    # the samples: the rows of any one method (every method has the same samples)
    seen, ids = set(), []
    for r in sample_rows:
        if (r["image"], r["sample"]) not in seen:
            seen.add((r["image"], r["sample"]))
            ids.append(r)
    samples = Samples(
        np.array([r["image"] for r in ids], dtype=np.int64),
        np.array([r["target"] for r in ids], dtype=np.int64),
        [r["label"] for r in ids],
        [[tuple(b) for b in json.loads(r["boxes"])] for r in ids],
        [None] * len(ids),
    )
    if not len(samples.target):
        raise InputError(f"data set '{source.name}' has no annotated objects to explain")
    results = []
    for name in methods:
        errs = [r["error"] for r in rows if r["method"] == name and r["error"] is not None]
        if errs:
            results.append(MethodResult(name, error=errs[0]))
            continue
        mine = [r for r in sample_rows if r["method"] == name]
        part = {
            "explain_s": sum(r["explain_s"] for r in mine),
            "nan": np.array([r["nan"] for r in mine]),
        }
        if mine and mine[0]["tolerance"] is not None:
            part["tolerance"] = mine[0]["tolerance"]
        for key in ("pointing", "loc", "deletion", "insertion", "class_sensitivity"):
            if key in _present(metrics):
                values = [r[key] for r in mine]
                if key == "loc":
                    values = [None if v is None else np.array(v, dtype=bool) for v in values]
                part[key] = values
        result = reduce_scores(name, [part], samples, plan)
        if "sanity" in metrics:
            k = min(len(mine), settings.sanity_samples)
            first = mine[:k]
            maps = _maps_of(root, name, [(r["image"], r["sample"]) for r in first])
            items = {
                i: load_item(source.specs[i], source.prep) for i in {r["image"] for r in first}
            }
            x = to_model(np.stack([items[r["image"]].x for r in first]))
            run_sanity(
                result,
                model_bytes,
                name,
                options.get(name, {}),
                x,
                np.array([r["target"] for r in first], dtype=np.int64),
                maps,
                plan,
                output,
            )
        results.append(result)
    infer_s = sum(r["infer_s"] or 0.0 for r in rows)
    images = len({r["image"] for r in rows})
    evaluation = Evaluation(
        "model",
        source.name,
        len(source),
        samples,
        settings,
        tuple(metrics),
        results,
        source,
        images / infer_s if infer_s > 0 else float("nan"),
        engine="ray",
        failed=[{"image": e["name"], "reason": e["reason"]} for e in failed],
    )
    return evaluation


def _maps_of(root, method: str, wanted: list[tuple[int, int]]) -> np.ndarray:
    """The maps of `method` at (image, sample) pairs, read from only those parts' rows."""
    images = sorted({i for i, _ in wanted})
    table = store.read_parts(
        root,
        store.RESULTS,
        ["image", "sample", "method", "saliency", "shape"],
        filters=[("image", "in", images), ("method", "=", method)],
    )
    where = {
        (table.column("image")[i].as_py(), table.column("sample")[i].as_py()): i
        for i in range(table.num_rows)
    }
    return np.stack([map_of(table, where[w]) for w in wanted]).astype(np.float64)


def _present(metrics) -> set:
    keys = set()
    for m in metrics:
        keys.add("loc" if m == "localization" else m)
    return keys

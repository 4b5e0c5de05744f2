"""`tsgb explain --engine ray`: explain a folder (or list) of images / .npy files on Ray.

The driver lists the inputs (one small record each: key, path, display name, file stem,
row offset), leaves out those a previous run already wrote (`store.OutDir.done_keys`),
and hands the rest to Ray Data as a dataset. `map_batches` runs `ExplainWorker`, an actor
class: each actor builds one `Explainer` from the model bytes (put in Ray's object store
once, not sent per batch), then per batch reads its inputs, explains them, and writes one
Parquet part (a row per input row × target: path, name, target, class name, logit and
probability, the map as a float32 list column with its shape, its PNG path when asked)
and, when an input cannot be read or explained, an errors part with the reason. What
comes back to the driver is one summary row per input (rows written, failed, worker pid
and peak memory), so nothing large crosses Ray but the model once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsgb_onnx.errors import InputError, TargetError, TsgbError
from tsgb_onnx.scale import store
from tsgb_onnx.scale.runtime import actor_pool, connect, peak_rss_mb, ray_module


@dataclass
class ExplainJob:
    """Everything a worker needs besides the model bytes (JSON-able)."""

    method: str = "tsgb"
    options: dict = field(default_factory=dict)
    output: str | None = None
    backend: str = "auto"
    prep: dict = field(default_factory=dict)  # Preprocessing fields
    target: Any = None  # None (top-1), an int, or one per input row
    top_k: int = 1
    layer: str | None = None
    labels: list | None = None
    formats: tuple = ()  # of "npy", "png", "html" (html implies the PNG files)
    colormap: str = "positive"
    cmap: str | None = None
    out_dir: str = "tsgb_maps"
    batch_size: int = 8
    threads: int | None = None
    # a dense output's target: `target` is then the channel, scored over this mask (nested
    # lists of the output positions) or box (y0, x0, y1, x1); both None: class targets
    mask: list | None = None
    box: list | None = None

    @property
    def dense(self) -> bool:
        return self.mask is not None or self.box is not None

    def dense_target(self, channel: int):
        """The DenseTarget of `channel` with this job's mask or box."""
        from tsgb_onnx.methods.result import DenseTarget

        mask = None if self.mask is None else np.asarray(self.mask, dtype=np.float32)
        return DenseTarget(
            int(channel), mask=mask, box=None if self.box is None else tuple(self.box)
        )


@dataclass
class RunSummary:
    """What a run did (the driver's summary line and summary.json)."""

    inputs: int = 0  # inputs of the command
    before: int = 0  # done by an earlier run
    now: int = 0  # done by this run
    failed: int = 0  # inputs in the errors table (all runs)
    rows: int = 0  # result rows written by this run
    seconds: float = 0.0
    workers: dict = field(default_factory=dict)  # pid -> peak resident MiB
    busy: dict = field(default_factory=dict)  # pid -> seconds spent in batches
    complete: bool = False

    def add(self, row: dict) -> None:
        """Count one worker summary row (one input)."""
        pid = int(row["pid"])
        self.now += 1
        self.rows += int(row["rows"])
        self.workers[pid] = max(self.workers.get(pid, 0.0), float(row["rss_mb"]))
        self.busy[pid] = self.busy.get(pid, 0.0) + float(row["seconds"])

    @property
    def busy_rate(self) -> float:
        """Inputs per second while the workers ran (the busiest worker's time: Ray's and
        the actors' start left out)."""
        return self.now / max(max(self.busy.values(), default=0.0), 1e-9)

    @property
    def rate(self) -> float:
        return self.now / max(self.seconds, 1e-9)

    def line(self, unit: str = "inputs") -> str:
        before = f", {self.before} done before" if self.before else ""
        return (
            f"tsgb: {self.inputs} {unit} ({self.now} now{before}) in {self.seconds:.1f} s, "
            f"{self.rate:.2f} {unit}/s; {self.failed} failed"
        )

    def memory_line(self) -> str | None:
        if not self.workers:
            return None
        peaks = ", ".join(f"{mb:.0f}" for _, mb in sorted(self.workers.items()))
        return f"tsgb: peak memory per worker (MiB): {peaks}"


# -- the worker --------------------------------------------------------------------------------
class ExplainWorker:
    """One Ray actor: one `Explainer`, built once; `__call__` explains a batch of inputs
    and writes its Parquet part(s)."""

    def __init__(self, model: bytes, job: dict):
        from tsgb_onnx.explainer import Explainer
        from tsgb_onnx.io.preprocess import Preprocessing

        self.job = ExplainJob(**job)
        model = resolve(model)
        self.explainer = Explainer(
            model,
            method=self.job.method,
            output=self.job.output,
            backend=self.job.backend,
            threads=self.job.threads,
            **self.job.options,
        )
        self.prep = Preprocessing(**self.job.prep)
        self.rank = len(self.explainer.graph.input_shape or (0, 0, 0, 0))
        self.root = Path(self.job.out_dir)

    def __call__(self, batch: dict) -> dict:
        start = time.perf_counter()
        keys = [str(k) for k in batch["key"]]
        read, errors = [], []
        for key, path, name, stem, offset in zip(
            keys, batch["path"], batch["name"], batch["stem"], batch["offset"]
        ):
            try:
                loaded = self._read(path, name)
                read.append((key, str(path), str(name), str(stem), int(offset), *loaded))
            except InputError as exc:
                errors.append((key, str(path), str(name), str(exc)))
        results: list[dict] = []
        for group in self._explained(read, errors):
            results += self._rows(*group)
        store.write_batch(
            self.root,
            keys,
            {
                store.RESULTS: _result_columns(results) if results else None,
                store.ERRORS: error_columns(errors) if errors else None,
            },
        )
        failed = {e[0] for e in errors}
        written: dict[str, int] = {}
        for r in results:
            written[r["key"]] = written.get(r["key"], 0) + 1
        seconds = (time.perf_counter() - start) / max(len(keys), 1)
        return {
            "key": np.array(keys, dtype=object),
            "rows": np.array([written.get(k, 0) for k in keys], dtype=np.int64),
            "failed": np.array([k in failed for k in keys]),
            "pid": np.full(len(keys), os.getpid(), dtype=np.int64),
            "rss_mb": np.full(len(keys), peak_rss_mb()),
            "seconds": np.full(len(keys), seconds),
        }

    def _read(self, path, name):
        from tsgb_onnx.io.preprocess import read_input

        rows, pictures, names = read_input(Path(str(path)), str(name), self.prep, self.rank)
        if rows.size == 0:
            raise InputError(f"input '{path}' has shape {tuple(rows.shape)}: it holds no values")
        return rows, pictures, names

    def _explained(self, read, errors):
        """(inputs, x, per-rank (saliency, target), logits) for the batch; when the batch
        fails as a whole, each input alone, so one bad input does not sink the others."""
        if not read:
            return []
        try:
            return [self._explain(read)]
        except TsgbError:
            if len(read) == 1:
                errors.append((*read[0][:3], str(sys.exc_info()[1])))
                return []
        done = []
        for one in read:
            try:
                done.append(self._explain([one]))
            except TsgbError as exc:
                errors.append((*one[:3], str(exc)))
        return done

    def _explain(self, read):
        x = np.concatenate([r[5] for r in read]).astype(np.float32, copy=False)
        target = self.job.target
        if isinstance(target, list):
            target = [target[r[4] + i] for r in read for i in range(len(r[5]))]
        if self.job.dense:  # one channel per row (the CLI allows no --top-k with it)
            channels = target if isinstance(target, list) else [target] * len(x)
            target = [self.job.dense_target(c) for c in channels]
        step = max(1, self.job.batch_size)
        maps, logits = [], []
        for lo in range(0, len(x), step):
            fixed = target[lo : lo + step] if isinstance(target, list) else target
            first = self._one(x[lo : lo + step], fixed)
            per_rank = [(first.saliency, first.target)]
            if self.job.top_k > 1:
                ranked = np.argsort(-first.logits, axis=1, kind="stable")[:, : self.job.top_k]
            for r in range(1, self.job.top_k):
                res = self._one(x[lo : lo + step], ranked[:, r])
                per_rank.append((res.saliency, res.target))
            maps.append(per_rank)
            logits.append(first.logits)
        ranks = [
            (np.concatenate([m[r][0] for m in maps]), np.concatenate([m[r][1] for m in maps]))
            for r in range(self.job.top_k)
        ]
        return read, x, ranks, np.concatenate(logits)

    def _one(self, x, target):
        explainer, layout = self.explainer, self.prep.layout
        try:
            res = explainer.explain(x, target=target, layer=self.job.layer)
        except InputError as exc:
            if "dynamic batch" in str(exc):
                raise InputError(f"{exc} (tsgb explain: --batch-size 1)") from None
            raise
        graph = explainer.graph
        if (  # a channels-last model with no Transpose at its input (as `tsgb explain`)
            layout == "nhwc"
            and self.job.layer is None
            and x.ndim == 4
            and res.signal is not None
            and graph.channel_axis(graph.input_name) != -1
            and np.shape(res.signal) == x.shape
        ):
            res.saliency = np.sum(np.asarray(res.signal) * x, axis=-1)
        return res

    def _rows(self, read, x, ranks, logits) -> list[dict]:
        from tsgb_onnx.io.labels import label_of
        from tsgb_onnx.io.render import sign_balance

        rows, at = [], 0
        dense = self.job.dense  # no class probabilities: the masked score instead
        probs = None if dense else _softmax(logits.astype(np.float64))
        for key, path, _name, stem, _offset, xs, pictures, names in read:
            for i in range(len(xs)):
                row_stem = stem if len(xs) == 1 else f"{stem}[{i}]"
                files = {}
                if "npy" in self.job.formats:
                    files["npy"] = self._npy(row_stem, [ranks[r][0][at] for r in range(len(ranks))])
                input_png = None
                if self._pictures:
                    input_png = self._input_png(row_stem, pictures[i], xs[i])
                for r, (sal, tgt) in enumerate(ranks):
                    t = int(tgt[at].channel) if dense else int(tgt[at])
                    score = tgt[at].score(logits[at]) if dense else None
                    balance = sign_balance(sal[at], self.job.colormap)
                    png = None
                    if self._pictures:
                        png = self._map_png(row_stem, t, sal[at], pictures[i], xs[i], balance.note)
                    rows.append(
                        {
                            "key": key,
                            "path": path,
                            "name": names[i],
                            "row": i,
                            "rank": r + 1,
                            "target": t,
                            "label": label_of(t, self.job.labels),
                            "logit": None if dense else float(logits[at, t]),
                            "prob": None if dense else float(probs[at, t]),
                            "score": score,
                            "saliency": np.asarray(sal[at], dtype=np.float32),
                            "png": png,
                            "input_png": input_png,
                            "npy": files.get("npy"),
                            "positive_mass": balance.positive_mass,
                            "negative_mass": balance.negative_mass,
                            "note": balance.note,
                        }
                    )
                at += 1
        return rows

    @property
    def _pictures(self) -> bool:
        return bool({"png", "html"} & set(self.job.formats))

    def _file(self, rel: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _npy(self, stem: str, maps) -> str:
        from tsgb_onnx.io.atomic import atomic_open

        rel = f"{stem}.npy"
        with atomic_open(self._file(rel)) as f:
            np.save(f, np.stack(maps))
        return rel

    def _input_png(self, stem: str, picture, x) -> str | None:
        from tsgb_onnx.io.atomic import write_bytes_atomic
        from tsgb_onnx.io.render import png_bytes

        pic = _row_picture(picture, x, self.prep.layout)
        if pic is None:
            return None
        rel = f"{stem}.input.png"
        write_bytes_atomic(self._file(rel), png_bytes(pic))
        return rel

    def _map_png(self, stem, target, sal, picture, x, note) -> str:
        from tsgb_onnx.io.atomic import write_bytes_atomic
        from tsgb_onnx.io.render import png_bytes

        rel = f"{stem}.class{target}.png"
        pic = _overlay(sal, picture, self.job.colormap, self.job.cmap, note, self.job.layer)
        write_bytes_atomic(self._file(rel), png_bytes(pic))
        return rel


def resolve(model):
    """The model bytes of an actor's constructor argument (Ray Data passes the object
    reference through as it is)."""
    ray = ray_module()
    if isinstance(model, list):  # [ref]: a nested reference keeps the argument inline
        model = model[0]
    return ray.get(model) if isinstance(model, ray.ObjectRef) else model


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _row_picture(picture, x, layout: str):
    from tsgb_onnx.io.render import input_picture, upscale

    if picture is not None:
        return picture
    x = np.moveaxis(x, -1, 0) if layout == "nhwc" and x.ndim == 3 else x
    pic = input_picture(x)
    return None if pic is None else upscale(pic)


def _overlay(sal, picture, colormap: str, cmap: str | None, note, layer) -> np.ndarray:
    """The heat map as `tsgb explain` draws it (legend when diverging or noted)."""
    from tsgb_onnx.io.render import default_cmap, heatmap, upscale, with_legend

    if not 1 <= np.ndim(sal) <= 3:
        at = f"--layer '{layer}'" if layer else "the explained tensor"
        raise InputError(
            f"the map at {at} has shape {np.shape(sal)} per input: a heat map needs 1 to 3 "
            "spatial axes; leave --format png/html out (the Parquet results hold the maps)"
        )
    cmap = cmap or default_cmap(colormap == "diverging")
    if picture is not None:
        pic = heatmap(sal, picture, colormap=colormap, cmap=cmap)
    else:
        pic = upscale(heatmap(sal, None, colormap=colormap, cmap=cmap))
    if note is not None or colormap == "diverging":
        pic = with_legend(pic, sal, colormap, cmap, note)
    return pic


def error_columns(errors: list[tuple]) -> dict:
    """(key, path, name, reason) per failed input."""
    return {
        "key": [e[0] for e in errors],
        "path": [e[1] for e in errors],
        "name": [e[2] for e in errors],
        "reason": [e[3] for e in errors],
    }


def _result_columns(rows: list[dict]) -> dict:
    pa, _ = store.pyarrow_modules()
    columns: dict = {}
    for name in ("key", "path", "name", "label", "png", "input_png", "npy", "note"):
        columns[name] = pa.array([r[name] for r in rows], type=pa.string())
    for name in ("row", "rank"):
        columns[name] = pa.array([r[name] for r in rows], type=pa.int32())
    columns["target"] = pa.array([r["target"] for r in rows], type=pa.int64())
    for name in ("logit", "prob", "positive_mass", "negative_mass"):
        columns[name] = pa.array([r[name] for r in rows], type=pa.float64())
    if rows[0]["score"] is not None:  # a dense target's masked score (a dense run only)
        columns["score"] = pa.array([r["score"] for r in rows], type=pa.float64())
    columns["saliency"], columns["shape"] = map_columns([r["saliency"] for r in rows])
    return columns


def map_columns(maps: Sequence[np.ndarray]):
    """Maps as a float32 list column (row-major values) and an int32 list of their shapes."""
    pa, _ = store.pyarrow_modules()
    flat = [np.ascontiguousarray(m, dtype=np.float32).ravel() for m in maps]
    offsets = np.zeros(len(flat) + 1, dtype=np.int32)
    np.cumsum([f.size for f in flat], out=offsets[1:])
    values = np.concatenate(flat) if flat else np.zeros(0, np.float32)
    saliency = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    shapes = pa.array([list(m.shape) for m in maps], type=pa.list_(pa.int32()))
    return saliency, shapes


def map_of(table, i: int) -> np.ndarray:
    """Row `i`'s map from a results table (`map_columns`' layout)."""
    values = table.column("saliency")[i].values.to_numpy(zero_copy_only=False)
    return values.reshape(table.column("shape")[i].as_py())


# -- the driver --------------------------------------------------------------------------------
def input_records(files: Sequence[tuple[Path, str]], rank: int) -> list[dict]:
    """One record per input file: key (its resolved path; a file listed twice is one
    input), path, display name, a file stem no other input gets, and the offset of its
    first row among all rows (for one --target per input)."""
    records, seen, stems, offset = [], set(), set(), 0
    for path, name in files:
        key = str(Path(path).resolve())
        rows = _count_rows(Path(path), rank)
        if key in seen:
            offset += rows
            continue
        seen.add(key)
        base = _safe_name(name)
        stem, n = base, 1
        while stem.casefold() in stems:
            n += 1
            stem = f"{base}~{n}"
        stems.add(stem.casefold())
        records.append(
            {"key": key, "path": str(path), "name": name, "stem": stem, "offset": offset}
        )
        offset += rows
    return records


def _safe_name(name: str) -> str:
    import re

    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", p).strip(".") or "_" for p in name.split("/")]
    return "/".join(parts)


def _count_rows(path: Path, rank: int) -> int:
    if path.suffix.lower() != ".npy":
        return 1
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:
        return 1
    return int(a.shape[0]) if a.ndim == rank else 1


def run_explain(
    model: str,
    files: Sequence[tuple[Path, str]],
    job: ExplainJob,
    address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    model_bytes: bytes | None = None,
) -> RunSummary:
    """Explain `files` on Ray into `job.out_dir` (resuming what is there); the summary."""
    from tsgb_onnx.ir.graph import build_graph

    ray = ray_module()
    data = model_bytes if model_bytes is not None else Path(model).read_bytes()
    graph = build_graph(data, output=job.output)
    rank = len(graph.input_shape or (0, 0, 0, 0))
    records = input_records(files, rank)
    total_rows = sum(_count_rows(Path(r["path"]), rank) for r in records)
    if isinstance(job.target, list) and len(job.target) != total_rows:
        raise TargetError(
            f"got {len(job.target)} targets for {total_rows} inputs: give one per input or one "
            "for all"
        )
    run = {
        "command": "explain",
        "model": store.digest(data),
        "method": job.method,
        "options": _jsonable(job.options),
        "output": job.output,
        "layer": job.layer,
        "target": job.target,
        "top_k": job.top_k,
        "prep": _jsonable(job.prep),
        "formats": sorted(job.formats),
        "colormap": job.colormap,
        "cmap": job.cmap,
    }
    if job.dense:  # the mask by its digest: run.json stays small
        mask = None if job.mask is None else np.asarray(job.mask, np.float32)
        run["dense"] = {
            "mask": None if mask is None else f"{list(mask.shape)} {store.digest(mask.tobytes())}",
            "box": job.box,
        }
    summary = RunSummary(inputs=len(records))
    with store.OutDir(job.out_dir, run) as out:
        done = out.done_keys()
        todo = [r for r in records if r["key"] not in done]
        summary.before = len(records) - len(todo)
        start = time.perf_counter()
        with connect(address, workers, progress) if todo else _nothing() as cluster:
            if progress and todo:
                print(
                    f"tsgb: {len(todo)} of {len(records)} inputs to explain on "
                    f"{cluster.describe()}",
                    file=sys.stderr,
                )
            if todo:
                job = ExplainJob(**{**asdict(job), "threads": job.threads or cluster.threads})
            for row in _map(ray, todo, ExplainWorker, data, asdict(job), job.batch_size, cluster):
                summary.add(row)
        summary.seconds = time.perf_counter() - start
        summary.failed = _count_errors(out.root)
        summary.complete = True
        if "html" in job.formats:
            write_index(out.root, job, records)
        out.write_summary({**asdict(summary), "rate": summary.rate, "busy_rate": summary.busy_rate})
    return summary


@contextlib.contextmanager
def _nothing():
    """In place of `connect` when every input is done already: no Ray to start."""
    yield None


def _map(ray, todo: list[dict], worker, model: bytes, job: dict, batch_size: int, cluster):
    """Run `worker` over `todo` on Ray Data; yields the workers' summary rows."""
    if not todo:
        return
    blocks = max(1, min(len(todo), math.ceil(len(todo) / batch_size)))
    ds = ray.data.from_items(todo, override_num_blocks=blocks)
    model_ref = ray.put(model)  # once; the actors' constructor argument (kept alive here)
    ds = ds.map_batches(
        worker,
        fn_constructor_args=([model_ref], job),
        batch_size=batch_size,
        batch_format="numpy",
        compute=actor_pool(ray, cluster.workers),
        num_cpus=cluster.cpus_per_worker,
    )
    try:
        yield from ds.iter_rows()
    except ray.exceptions.RayError as exc:
        raise TsgbError(f"the Ray run failed: {ray_cause(exc)}") from exc


def ray_cause(exc: BaseException) -> str:
    """The worker's own exception a Ray failure carries, as one line: Ray passes it on as
    text (the worker's traceback), whose first `Name: message` line is the original."""
    import re

    text = str(exc)
    for line in text.splitlines():
        found = re.match(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.*)$", line.strip())
        if found and not found.group(1).startswith("ray."):
            name = found.group(1).rsplit(".", 1)[-1]
            message = found.group(2).strip()
            return message if found.group(1).startswith("tsgb_onnx.") else f"{name}: {message}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _count_errors(root: Path) -> int:
    table = store.read_parts(root, store.ERRORS, ["key"])
    return 0 if table is None else len(set(table.column("key").to_pylist()))


INDEX_COLUMNS = ("key", "name", "row", "rank", "target", "label", "logit", "prob", "png")
INDEX_COLUMNS += ("input_png", "note")


def write_index(root: Path, job: ExplainJob, records: list[dict]) -> Path:
    """index.html of the whole folder (every run's parts), in input order."""
    from tsgb_onnx.io.report import InputEntry, MapEntry
    from tsgb_onnx.io.report import write_index as write_html

    results = store.read_parts(
        root,
        store.RESULTS,
        INDEX_COLUMNS,
    )
    errors = store.read_parts(root, store.ERRORS, ["key", "name", "reason"])
    by_key: dict[str, list[dict]] = {}
    if results is not None:
        for r in results.to_pylist():
            by_key.setdefault(r["key"], []).append(r)
    failed = {} if errors is None else {e["key"]: e for e in errors.to_pylist()}
    entries = []
    for rec in records:
        if rec["key"] in failed:
            entries.append(InputEntry(rec["name"], None, error=failed[rec["key"]]["reason"]))
            continue
        rows = sorted(by_key.get(rec["key"], []), key=lambda r: (r["row"], r["rank"]))
        for row in sorted({r["row"] for r in rows}):
            maps = [r for r in rows if r["row"] == row]
            entry = InputEntry(maps[0]["name"], maps[0]["input_png"])
            entry.maps = [
                MapEntry(
                    m["rank"], m["target"], m["label"], m["logit"], m["prob"], m["png"], m["note"]
                )
                for m in maps
            ]
            entries.append(entry)
    path = root / "index.html"
    meta = {"method": job.method, "colormap": job.colormap, "inputs": str(len(records))}
    if failed:
        meta["failed"] = str(len(failed))
    write_html(path, entries, f"tsgb explain: {job.method} saliency", meta)
    return path


def _jsonable(obj):
    def plain(v):
        return v.tolist() if hasattr(v, "tolist") else str(v)

    return json.loads(json.dumps(obj, default=plain))

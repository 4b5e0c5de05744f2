"""`tsgb explain` over files and folders: batches, top-k classes, progress, PNG/NPY/HTML output."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from tsgb_onnx.cli.args import (
    add_engine_flags,
    add_method_flags,
    box,
    check_out,
    floats,
    load_mask,
    method_options,
    positive_int,
    size,
)
from tsgb_onnx.errors import InputError, TargetError
from tsgb_onnx.explainer import Explainer
from tsgb_onnx.io.atomic import atomic_open, write_bytes_atomic, write_text_atomic
from tsgb_onnx.io.labels import (
    check_count,
    label_of,
    labels_from_metadata,
    load_labels,
    parse_targets,
)
from tsgb_onnx.io.preprocess import (
    PREPROCESS_KEY,
    Preprocessing,
    discover,
    preset_settings,
    read_input,
    resolve_preprocessing,
    settings_from_json,
)
from tsgb_onnx.io.progress import Progress
from tsgb_onnx.io.render import (
    check_cmap,
    default_cmap,
    heatmap,
    input_picture,
    png_bytes,
    sign_balance,
    upscale,
    with_legend,
)
from tsgb_onnx.methods.result import DenseTarget

FORMATS = ("npy", "png", "html")


@dataclass
class Settings:
    """What the command line asked for (after parsing, before any work)."""

    inputs: Sequence[str]
    target: str = "top1"
    top_k: int = 1
    labels: str | None = None
    preset: str | None = None
    explicit: dict[str, Any] = field(default_factory=dict)  # Preprocessing fields from flags
    batch_size: int = 8
    progress: bool | None = None  # None: when stderr is a terminal
    out: Path | None = None  # single-file output (.npy or .png)
    out_dir: Path | None = None
    formats: tuple[str, ...] = ()
    colormap: str = "positive"
    cmap: str | None = None
    layer: str | None = None
    mask: np.ndarray | None = None  # --target-mask: the output positions explained
    box: tuple[int, ...] | None = None  # --target-box

    @property
    def dense(self) -> bool:
        """Whether --target is an output channel over a mask or box (a dense output)."""
        return self.mask is not None or self.box is not None


@dataclass
class Row:
    """One explained input row."""

    name: str
    x: np.ndarray  # the model input row
    picture: np.ndarray | None  # uint8 RGB (images), else None
    targets: list[int] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    logits: np.ndarray | None = None
    layer: str = ""
    scores: list[float] | None = None  # dense targets: each map's channel summed over the mask


@dataclass
class Skipped:
    """An input a folder run could not read: reported, listed in the index, not explained."""

    name: str
    path: Path
    reason: str


# -- set-up --------------------------------------------------------------------------------------


def model_metadata(graph) -> dict[str, str]:
    return {p.key: p.value for p in graph.model.metadata_props}


def detected_settings(graph) -> dict[str, Any]:
    """Layout and size read from the graph itself (the lowest-priority settings)."""
    layout = "nhwc" if graph.channel_axis(graph.input_name) == -1 else "nchw"
    out: dict[str, Any] = {"layout": layout}
    shape = graph.input_shape
    if shape is not None and len(shape) == 4:
        hw = shape[2:4] if layout == "nchw" else shape[1:3]
        if all(isinstance(v, int) and v > 0 for v in hw):
            out["size"] = (int(hw[0]), int(hw[1]))
    return out


def choose_preprocessing(graph, preset: str | None, explicit: dict[str, Any]) -> Preprocessing:
    """Defaults < what the graph shows < model metadata < --preset < explicit flags."""
    meta = model_metadata(graph)
    from_meta = (
        settings_from_json(meta[PREPROCESS_KEY], f"model metadata '{PREPROCESS_KEY}'")
        if PREPROCESS_KEY in meta
        else {}
    )
    from_preset = preset_settings(preset) if preset else {}
    return resolve_preprocessing(detected_settings(graph), from_meta, from_preset, explicit)


def choose_labels(graph, spec: str | None) -> list[str] | None:
    if spec is not None:
        labels, where = load_labels(spec), f"--labels '{spec}'"
    else:
        labels, where = labels_from_metadata(model_metadata(graph)), "the model's label metadata"
    if labels is not None:
        check_count(labels, graph.num_classes, where)
    return labels


def count_rows(path: Path, rank: int) -> int:
    """Rows a file will give (without reading a .npy's data)."""
    if path.suffix.lower() != ".npy":
        return 1
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:
        return 1  # read_input reports the problem with its own message
    return int(a.shape[0]) if a.ndim == rank else 1


def safe_name(name: str) -> str:
    """A relative file name from an input's display name (folders kept)."""
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", p).strip(".") or "_" for p in name.split("/")]
    return "/".join(parts)


# -- the run -------------------------------------------------------------------------------------


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _batches(files, prep: Preprocessing, rank: int, size: int, skip_bad: bool):
    """Yield lists of (name, x row, picture, row index) of at most `size` rows, and a
    `Skipped` for each file that cannot be read when `skip_bad` (the rows read before it are
    yielded first, so the output keeps the input order)."""
    pending: list[tuple[str, np.ndarray, np.ndarray | None, int]] = []
    index = 0  # position of the next row among all inputs (the per-input --target list)
    for path, name in files:
        try:
            rows, pictures, names = _read(path, name, prep, rank)
        except InputError as exc:
            if not skip_bad:
                raise
            if pending:
                yield pending
                pending = []
            index += count_rows(path, rank)
            yield Skipped(name, path, str(exc))
            continue
        pending += [(n, r, p, index + i) for i, (n, r, p) in enumerate(zip(names, rows, pictures))]
        index += len(rows)
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


def _read(path: Path, name: str, prep: Preprocessing, rank: int):
    rows, pictures, names = read_input(path, name, prep, rank)
    if rows.size == 0:
        raise InputError(f"input '{path}' has shape {tuple(rows.shape)}: it holds no values")
    return rows, pictures, names


def explain_rows(explainer, settings: Settings, prep: Preprocessing, target, top_k: int):
    """Explain every input; yields finished Rows batch by batch (and, in a folder run with
    --out-dir, a `Skipped` for each input that cannot be read, after a note on stderr)."""
    graph = explainer.graph
    rank = len(graph.input_shape or (0, 0, 0, 0))
    files = discover(settings.inputs)
    for path, _ in files:
        if not path.exists():
            raise InputError(f"input '{path}' does not exist")
    total = sum(count_rows(path, rank) for path, _ in files)
    if isinstance(target, list) and len(target) != total:
        raise TargetError(
            f"got {len(target)} targets for {total} inputs: give one per input or one for all"
        )
    progress = Progress(
        "tsgb explain",
        total,
        sys.stderr.isatty() if settings.progress is None else settings.progress,
        unit="inputs",
    )
    skip_bad = settings.out_dir is not None
    try:
        for batch in _batches(files, prep, rank, settings.batch_size, skip_bad):
            if isinstance(batch, Skipped):
                progress.close()  # the note goes on its own line
                print(f"tsgb: note: skipped '{batch.path}': {batch.reason}", file=sys.stderr)
                progress.update(count_rows(batch.path, rank))
                yield batch
                continue
            for row in _explain_batch(explainer, settings, prep, batch, target, top_k):
                notes = sign_notes(row, settings) if _draws(settings) else []
                if notes:
                    progress.close()  # the notes go on their own lines
                    for line in notes:
                        print(f"tsgb: note: {line}", file=sys.stderr)
                yield row
            progress.update(len(batch))
    finally:
        progress.close()


def _explain_batch(explainer, settings: Settings, prep: Preprocessing, batch, target, top_k: int):
    x = np.stack([row for _, row, _, _ in batch]).astype(np.float32, copy=False)
    fixed = [target[i] for _, _, _, i in batch] if isinstance(target, list) else target
    first = _explain(explainer, x, fixed, settings.layer, prep.layout)
    logits = first.logits
    maps, targets = [first.saliency], [first.target]
    if top_k > 1:
        ranked = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    for r in range(1, top_k):
        res = _explain(explainer, x, ranked[:, r], settings.layer, prep.layout)
        maps.append(res.saliency)
        targets.append(res.target)
    dense = first.target.dtype == object  # resolved DenseTargets
    for i, (name, row, picture, _) in enumerate(batch):
        yield Row(
            name=name,
            x=row,
            picture=picture,
            targets=[int(t[i].channel) if dense else int(t[i]) for t in targets],
            maps=[np.asarray(m[i]) for m in maps],
            logits=np.asarray(logits[i]),
            layer=first.layer,
            scores=[t[i].score(logits[i]) for t in targets] if dense else None,
        )


def _explain(explainer, x, target, layer, layout: str = "nchw"):
    try:
        res = explainer.explain(x, target=target, layer=layer)
    except InputError as exc:
        if "dynamic batch" in str(exc):
            raise InputError(f"{exc} (tsgb explain: --batch-size 1)") from None
        raise
    graph = explainer.graph
    if (
        layout == "nhwc"
        and layer is None
        and x.ndim == 4
        and res.signal is not None
        and graph.channel_axis(graph.input_name) != -1
        and np.shape(res.signal) == x.shape
    ):
        # a channels-last model with no Transpose at its input (e.g. a JAX export): the graph
        # cannot show the channel axis, the preprocessing's layout does
        res.saliency = np.sum(np.asarray(res.signal) * x, axis=-1)
    return res


def describe(row: Row, labels, top_k: int) -> list[str]:
    if row.scores is not None:
        return [
            describe_dense(row, t, sal, score, labels)
            for t, sal, score in zip(row.targets, row.maps, row.scores)
        ]
    probs = _softmax(row.logits.astype(np.float64))
    lines = []
    for r, (t, sal) in enumerate(zip(row.targets, row.maps)):
        label = label_of(t, labels)
        named = f" '{label}'" if label else ""
        rank = f"top-{r + 1}, " if top_k > 1 else ""
        lines.append(
            f"{row.name}: target {t}{named} ({rank}logit {row.logits[t]:.4f}, "
            f"p {probs[t]:.3f}), saliency {tuple(sal.shape)} range "
            f"[{sal.min():.3g}, {sal.max():.3g}]"
        )
    return lines


def describe_dense(row: Row, channel: int, sal: np.ndarray, score: float, labels) -> str:
    """The line of one map of a dense target: the channel and its score over the mask."""
    label = label_of(channel, labels)
    named = f" '{label}'" if label else ""
    return (
        f"{row.name}: target channel {channel}{named} (score {score:.4f}: the channel summed "
        f"over the mask), saliency {tuple(sal.shape)} range [{sal.min():.3g}, {sal.max():.3g}]"
    )


def dense_targets(target, settings: Settings):
    """--target with --target-mask / --target-box: a DenseTarget, or one per input."""
    if target is None:
        raise TargetError(
            "--target-mask / --target-box explain one output channel: give --target CHANNEL "
            "(an index or a label), or one per input"
        )

    def one(channel: int) -> DenseTarget:
        return DenseTarget(channel, mask=settings.mask, box=settings.box)

    return [one(c) for c in target] if isinstance(target, list) else one(target)


def sign_notes(row: Row, settings: Settings) -> list[str]:
    """One line per map of `row` whose positive part is empty or small (`sign_balance`)."""
    lines = []
    for t, sal in zip(row.targets, row.maps):
        note = sign_balance(sal, settings.colormap).note
        if note is not None:
            lines.append(f"{row.name}, target {t}: {note}")
    return lines


def drawable(shape: tuple[int, ...], layer: str | None) -> None:
    """Refuse a map that cannot be drawn as a heat map (no spatial axes, or more than 3)."""
    if 1 <= len(shape) <= 3:
        return
    at = f"--layer '{layer}'" if layer else "the explained tensor"
    raise InputError(
        f"the map at {at} has shape {tuple(shape)} per input: a heat map needs 1 to 3 spatial "
        "axes; write it with --out FILE.npy, or pick a spatial layer "
        "(`tsgb inspect MODEL --tensors`)"
    )


def check_layer_drawable(graph, layer: str | None) -> None:
    """Before any work: a --layer whose tensor has no spatial axis cannot be a heat map."""
    shape = graph.shapes.get(layer) if layer else None
    if shape is not None and len(shape) <= 2:
        drawable(tuple(shape[2:]), layer)


def overlay(row: Row, sal: np.ndarray, settings: Settings) -> np.ndarray:
    """The heat map of `sal` (over the row's picture when it has one), with a legend strip
    under it (colour bar, range, and the sign-balance note) when the view is diverging or
    the map's positive part is empty or small."""
    drawable(np.shape(sal), settings.layer)
    cmap = settings.cmap or default_cmap(settings.colormap == "diverging")
    if row.picture is not None:
        pic = heatmap(sal, row.picture, colormap=settings.colormap, cmap=cmap)
    else:
        pic = upscale(heatmap(sal, None, colormap=settings.colormap, cmap=cmap))
    note = sign_balance(sal, settings.colormap).note
    if note is not None or settings.colormap == "diverging":
        pic = with_legend(pic, sal, settings.colormap, cmap, note)
    return pic


def row_picture(row: Row, layout: str) -> np.ndarray | None:
    if row.picture is not None:
        return row.picture
    x = np.moveaxis(row.x, -1, 0) if layout == "nhwc" and row.x.ndim == 3 else row.x
    pic = input_picture(x)
    return None if pic is None else upscale(pic)


def run(explainer, settings: Settings, prep: Preprocessing) -> int:
    """Explain, print one line per map, write what was asked for.

    0: every input explained; 1: a folder run (--out-dir) skipped an input it could not
    read (each said on stderr and listed in index.html / results.json).
    """
    labels = choose_labels(explainer.graph, settings.labels)
    target = parse_targets(settings.target, labels)
    top_k = settings.top_k
    if target is not None and top_k > 1:
        raise InputError("--target and --top-k > 1 exclude each other: give one of them")
    classes = explainer.graph.num_classes
    if classes is not None and top_k > classes:
        raise InputError(f"--top-k {top_k} is more than the model's {classes} classes")
    if settings.dense:
        target = dense_targets(target, settings)
    writer = OutDirWriter(settings, labels, prep) if settings.out_dir is not None else None
    kept: list[Row] = []
    finished = False
    try:
        for row in explain_rows(explainer, settings, prep, target, top_k):
            if isinstance(row, Skipped):
                writer.skip(row)
                continue
            for line in describe(row, labels, top_k):
                print(line)
            if writer is not None:
                writer.add(row)
            if settings.out is not None:
                kept.append(row)
        finished = True
    finally:  # Ctrl-C or an error mid-folder: an index of what was done
        if writer is not None:
            writer.finish(explainer, complete=finished)
    if settings.out is not None:
        write_single(settings, kept, top_k)
    return 1 if writer is not None and writer.skipped else 0


class UniqueNames:
    """File stems that never repeat: a stem taken before gets `~2`, `~3`, ... (compared
    case-insensitively, as some file systems do)."""

    def __init__(self):
        self.used: set[str] = set()

    def take(self, base: str) -> str:
        stem, n = base, 1
        while stem.casefold() in self.used:
            n += 1
            stem = f"{base}~{n}"
        self.used.add(stem.casefold())
        return stem


def single_png_paths(out: Path, rows: list[Row], top_k: int) -> list[list[Path]]:
    """`--out x.png`: per row, per map, a file name that no other map of the run gets."""
    names = UniqueNames()
    paths = []
    for row in rows:
        part = out.stem if len(rows) == 1 else f"{out.stem}_{safe_name(row.name).replace('/', '_')}"
        stem = names.take(part)
        suffixes = [f"_top{r + 1}" for r in range(len(row.maps))] if top_k > 1 else [""]
        paths.append([out.with_name(stem + s + out.suffix) for s in suffixes])
    return paths


def write_single(settings: Settings, rows: list[Row], top_k: int) -> None:
    """`--out x.npy` (all maps, [B, *spatial] or [B, K, *spatial]) or `--out x.png`."""
    out = settings.out
    if out.suffix.lower() == ".npy":
        maps = np.stack([np.stack(r.maps) if top_k > 1 else r.maps[0] for r in rows])
        with atomic_open(out) as f:
            np.save(f, maps)
        print(f"wrote {out}")
        return
    for row in rows:  # before writing anything
        for sal in row.maps:
            drawable(np.shape(sal), settings.layer)
    for row, paths in zip(rows, single_png_paths(out, rows, top_k)):
        for sal, path in zip(row.maps, paths):
            write_bytes_atomic(path, png_bytes(overlay(row, sal, settings)))
            print(f"wrote {path}")


class OutDirWriter:
    """Per-input files under --out-dir, then index.html and results.json.

    Every file is written atomically (complete or absent); `finish` runs also after Ctrl-C
    or an error, so the index lists what was done.
    """

    def __init__(self, settings: Settings, labels, prep: Preprocessing):
        self.settings, self.labels, self.prep = settings, labels, prep
        self.root = settings.out_dir
        self.entries: list = []
        self.records: list[dict[str, Any]] = []
        self.skipped: list[Skipped] = []
        self.names = UniqueNames()
        self.layer = ""

    def _file(self, rel: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _picture(self, rgb: np.ndarray, rel: str) -> str:
        from tsgb_onnx.io.report import data_uri

        if "png" in self.settings.formats:
            write_bytes_atomic(self._file(rel), png_bytes(rgb))
            return quote(rel)
        return data_uri(rgb)

    def skip(self, skipped: Skipped) -> None:
        from tsgb_onnx.io.report import InputEntry

        self.skipped.append(skipped)
        self.entries.append(InputEntry(skipped.name, None, error=skipped.reason))
        self.records.append(
            {"name": skipped.name, "failed": skipped.reason, "files": [], "maps": []}
        )

    def add(self, row: Row) -> None:
        from tsgb_onnx.io.report import InputEntry, MapEntry

        pictures = "png" in self.settings.formats or "html" in self.settings.formats
        if pictures:  # before any file of the row
            for sal in row.maps:
                drawable(np.shape(sal), self.settings.layer)
        stem = self.names.take(safe_name(row.name))
        self.layer = row.layer
        record: dict[str, Any] = {"name": row.name, "files": [], "maps": []}
        if "npy" in self.settings.formats:
            path = self._file(f"{stem}.npy")
            with atomic_open(path) as f:
                np.save(f, np.stack(row.maps))
            record["files"].append(path.relative_to(self.root).as_posix())
        picture = None
        if pictures:
            pic = row_picture(row, self.prep.layout)
            if pic is not None:
                picture = self._picture(pic, f"{stem}.input.png")
        dense = row.scores is not None  # no class probabilities: the masked score instead
        probs = None if dense else _softmax(row.logits.astype(np.float64))
        entry = InputEntry(row.name, picture)
        for r, (t, sal) in enumerate(zip(row.targets, row.maps)):
            label = label_of(t, self.labels)
            logit = None if dense else float(row.logits[t])
            prob = None if dense else float(probs[t])
            balance = sign_balance(sal, self.settings.colormap)
            src = None
            if pictures:
                src = self._picture(overlay(row, sal, self.settings), f"{stem}.class{t}.png")
                entry.maps.append(
                    MapEntry(
                        r + 1,
                        t,
                        label,
                        row.scores[r] if dense else logit,
                        float("nan") if dense else prob,  # no html for dense targets
                        src,
                        note=balance.note,
                    )
                )
            record["maps"].append(
                {
                    "rank": r + 1,
                    "target": t,
                    "label": label,
                    "logit": logit,
                    "prob": prob,
                    **({"score": row.scores[r]} if dense else {}),
                    "png": src if src and not src.startswith("data:") else None,
                    "positive_mass": balance.positive_mass,
                    "negative_mass": balance.negative_mass,
                    "note": balance.note,
                }
            )
        if "png" in self.settings.formats:
            record["files"] += [m["png"] for m in record["maps"]]
        self.entries.append(entry)
        self.records.append(record)

    def finish(self, explainer, complete: bool = True) -> None:
        """results.json and index.html. After an interruption (`complete` False): of what was
        done, if anything was, and a failure to write or say so is a note, not a new error
        (the interruption is what the user is told about)."""
        if complete:
            for line in self._write_index(explainer, complete):
                print(line)
            return
        if not self.records:
            return
        try:
            lines = self._write_index(explainer, complete)
        except OSError as exc:
            print(f"tsgb: note: no index of the inputs done: {exc}", file=sys.stderr)
            return
        with contextlib.suppress(OSError):  # stdout may be the closed pipe that stopped us
            for line in lines:
                print(line)

    def _write_index(self, explainer, complete: bool) -> list[str]:
        """Write results.json (and index.html); the lines that tell what was written."""
        from tsgb_onnx.io.report import write_index

        method = explainer.method.name
        summary = {
            "method": method,
            "layer": self.layer,
            "complete": complete,
            "inputs": self.records,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.root / "results.json", json.dumps(summary, indent=1))
        lines = []
        if "html" in self.settings.formats:
            meta = {
                "method": method,
                "colormap": self.settings.colormap,
                "inputs": str(len(self.entries) - len(self.skipped)),
            }
            if self.skipped:
                meta["skipped"] = str(len(self.skipped))
            if not complete:
                meta["stopped early"] = "the inputs after these were not explained"
            index = self.root / "index.html"
            write_index(index, self.entries, f"tsgb explain: {method} saliency", meta)
            lines.append(f"wrote {index}")
        done = len(self.records) - len(self.skipped)
        skipped = f" ({len(self.skipped)} skipped)" if self.skipped else ""
        lines.append(f"wrote {done} inputs to {self.root}{skipped}")
        return lines


# -- the command ----------------------------------------------------------------------------
def _formats(text: str) -> tuple[str, ...]:
    names = tuple(v.strip().lower() for v in text.split(",") if v.strip())
    bad = [v for v in names if v not in FORMATS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"--format takes a comma list of {', '.join(FORMATS)}, got '{text}'"
        )
    return names


def _explain_settings(args):
    """The explain command's flags as `Settings` (checked before any work)."""
    out = check_out(args.out)
    formats = tuple(dict.fromkeys(f for group in args.format for f in group))
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out is not None and (out_dir is not None or formats):
        raise InputError(
            "--out writes one file; --out-dir/--format write a folder: give one or the other"
        )
    if formats and out_dir is None:
        out_dir = Path("tsgb_maps")
    dense = args.target_mask is not None or args.target_box is not None
    if out_dir is not None and not formats:
        formats = ("png",) if dense else ("png", "html")
    if dense:
        check_dense_flags(args, formats)
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir '{out_dir}' exists and is not a folder")
    if not args.target.strip():
        raise TargetError(
            "--target is empty: give 'top1', a class index or name, or one per input (3,7)"
        )
    if args.cmap is not None:
        check_cmap(args.cmap)
    explicit = {
        "size": args.size,
        "mean": args.mean,
        "std": args.std,
        "layout": args.layout,
        "channel_order": args.channel_order,
        "pixel_max": args.pixel_range,
        "crop": False if args.no_crop else None,
    }
    return Settings(
        inputs=args.inputs,
        target=args.target,
        top_k=args.top_k,
        labels=args.labels,
        preset=args.preset,
        explicit=explicit,
        batch_size=args.batch_size,
        progress=args.progress,
        out=out,
        out_dir=out_dir,
        formats=formats,
        colormap=args.colormap,
        cmap=args.cmap,
        layer=args.layer,
        mask=load_mask(args.target_mask) if args.target_mask is not None else None,
        box=args.target_box,
    )


def check_dense_flags(args, formats: tuple[str, ...]) -> None:
    """--target-mask / --target-box: one channel per input, no class ranking or page."""
    flag = "--target-mask" if args.target_mask is not None else "--target-box"
    if args.top_k > 1:
        raise InputError(
            f"{flag} explains one output channel per input; --top-k ranks the classes of "
            "[batch, classes] logits: leave it out"
        )
    if "html" in formats:
        raise InputError(
            f"{flag}: the HTML index shows class probabilities, which a dense output does not "
            "have: use --format png,npy (or --out FILE)"
        )


def cmd_explain(args: argparse.Namespace) -> int:
    check_engine(args)
    settings = _explain_settings(args)
    explainer = Explainer(
        _with_layout(args.model, args.layout),
        method=args.method,
        output=args.output,
        backend=args.backend,
        device=args.device,
        **method_options(args),
    )
    if explainer.method.single_pass and _draws(settings):
        check_layer_drawable(explainer.graph, settings.layer)
    prep = choose_preprocessing(explainer.graph, settings.preset, settings.explicit)
    if args.engine == "ray":
        return run_on_ray(args, explainer, settings, prep)
    return run(explainer, settings, prep)


def _with_layout(model: str, layout: str | None):
    """The model, with `--layout` stored in its metadata when given (the graph reads the
    input's layout from there first, so a model whose layout cannot be told from its graph
    is explained as stated); the model's other preprocessing metadata is kept."""
    if layout is None:
        return model
    from tsgb_onnx.io.export import attach_metadata, read_metadata
    from tsgb_onnx.io.preprocess import PREPROCESS_KEY, settings_from_json
    from tsgb_onnx.ir.graph import load_model

    proto = load_model(model)
    try:  # unreadable metadata is replaced, as the graph would ignore it
        stored = settings_from_json(read_metadata(proto).get(PREPROCESS_KEY, "{}"), "metadata")
    except InputError:
        stored = {}
    return attach_metadata(proto, {**stored, "layout": layout})


def check_engine(args: argparse.Namespace) -> None:
    """--engine ray writes a folder; --address / --workers belong to it."""
    if args.engine != "ray":
        for flag, value in (("--address", args.address), ("--workers", args.workers)):
            if value is not None:
                raise InputError(f"{flag} is for --engine ray")
        return
    if args.out is not None:
        raise InputError("--engine ray writes a folder (--out-dir DIR), not one --out file")
    if args.out_dir is None:
        raise InputError("--engine ray needs --out-dir DIR (where the Parquet results go)")


def run_on_ray(args, explainer, settings: Settings, prep: Preprocessing) -> int:
    """Explain on Ray Data into --out-dir (tsgb_onnx.scale.explain); 1 when an input failed."""
    from dataclasses import asdict

    from tsgb_onnx.scale.explain import ExplainJob, run_explain

    labels = choose_labels(explainer.graph, settings.labels)
    target = parse_targets(settings.target, labels)
    if target is not None and settings.top_k > 1:
        raise InputError("--target and --top-k > 1 exclude each other: give one of them")
    classes = explainer.graph.num_classes
    if classes is not None and settings.top_k > classes:
        raise InputError(f"--top-k {settings.top_k} is more than the model's {classes} classes")
    # what the workers would refuse for every input is refused here, once
    explainer.check_target(dense_targets(target, settings) if settings.dense else target)
    # the default --out-dir formats are png,html; on Ray the Parquet results are the output
    formats = tuple(dict.fromkeys(f for group in args.format for f in group))
    files = discover(settings.inputs)
    for path, _ in files:
        if not path.exists():
            raise InputError(f"input '{path}' does not exist")
    job = ExplainJob(
        method=explainer.method.name,
        options=method_options(args),
        output=args.output,
        backend=args.backend,
        prep=asdict(prep),
        target=target,
        top_k=settings.top_k,
        layer=settings.layer,
        labels=labels,
        formats=formats,
        colormap=settings.colormap,
        cmap=settings.cmap,
        out_dir=str(settings.out_dir),
        batch_size=settings.batch_size,
        mask=None if settings.mask is None else settings.mask.tolist(),
        box=None if settings.box is None else list(settings.box),
    )
    progress = sys.stderr.isatty() if settings.progress is None else settings.progress
    stated = None if args.layout is None else _with_layout(args.model, args.layout)
    summary = run_explain(
        args.model,
        files,
        job,
        address=args.address,
        workers=args.workers,
        progress=progress,
        model_bytes=None if stated is None else stated.SerializeToString(),  # --layout
    )
    failed = f", {summary.failed} failed (errors/)" if summary.failed else ""
    print(
        f"wrote {summary.inputs - summary.failed} inputs to {settings.out_dir} (results/){failed}"
    )
    print(summary.line(), file=sys.stderr)
    memory = summary.memory_line()
    if memory:
        print(memory, file=sys.stderr)
    return 1 if summary.failed else 0


def _draws(settings: Settings) -> bool:
    """Whether the run draws heat maps (a .png --out, or png/html in --out-dir)."""
    if settings.out is not None:
        return settings.out.suffix.lower() == ".png"
    return settings.out_dir is not None and bool({"png", "html"} & set(settings.formats))


def register(sub) -> None:
    """Add `tsgb explain` to the subparsers `sub`."""
    e = sub.add_parser("explain", help="explain images, .npy tensors or folders of them")
    e.add_argument("model", help="ONNX model file")
    e.add_argument(
        "inputs", nargs="+", help="image files, .npy tensors, or folders (searched recursively)"
    )
    add_method_flags(e)
    e.add_argument(
        "--target",
        default="top1",
        help="'top1', a class index or name, or one per input: 3,7 or cat,dog",
    )
    region = e.add_mutually_exclusive_group()
    region.add_argument(
        "--target-mask",
        default=None,
        metavar="MASK",
        help="a dense output (segmentation map, ...): explain --target's channel summed over "
        "MASK, a .png (its non-black pixels) or .npy (weights) of the output's position size",
    )
    region.add_argument(
        "--target-box",
        type=box,
        default=None,
        metavar="Y0,X0,Y1,X1",
        help="a dense output: explain --target's channel summed over this box of output "
        "positions (ends excluded)",
    )
    e.add_argument(
        "--top-k",
        type=positive_int,
        default=1,
        metavar="K",
        help="explain the K best classes of every input",
    )
    e.add_argument(
        "--labels",
        default=None,
        metavar="FILE",
        help="class names: a text file (one per line), a JSON list, or 'imagenet' "
        "(default: the model's metadata)",
    )
    e.add_argument(
        "--out", default=None, help="one file: saliency as .npy (raw) or .png (heat map per image)"
    )
    e.add_argument(
        "--out-dir",
        default=None,
        metavar="DIR",
        help="write per-input files and an index page to DIR",
    )
    e.add_argument(
        "--format",
        type=_formats,
        action="append",
        default=[],
        metavar="npy,png,html",
        help="what --out-dir gets (comma list; default png,html; html alone embeds its pictures)",
    )
    e.add_argument("--batch-size", type=positive_int, default=8, help="inputs per run")
    add_engine_flags(e)
    e.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    e.add_argument(
        "--colormap",
        choices=("positive", "diverging"),
        default="positive",
        help="positive: negatives truncated (the paper's display); diverging: "
        "blue negative, red positive",
    )
    e.add_argument(
        "--cmap",
        default=None,
        help="matplotlib colormap name (default jet / RdBu_r; a built-in map without matplotlib)",
    )
    e.add_argument(
        "--preset",
        choices=("torchvision", "caffe", "tf", "none"),
        default=None,
        help="image preprocessing preset (overrides the model's metadata)",
    )
    e.add_argument(
        "--size",
        type=size,
        default=None,
        help="image size, SIZE or HEIGHT,WIDTH (default: the model's)",
    )
    e.add_argument(
        "--mean", type=floats, default=None, help="per-channel mean, in the model's channel order"
    )
    e.add_argument("--std", type=floats, default=None, help="per-channel std")
    e.add_argument(
        "--pixel-range",
        type=float,
        default=None,
        metavar="MAX",
        help="pixels scaled to [0, MAX] before mean/std: 1 or 255",
    )
    e.add_argument(
        "--channel-order",
        choices=("rgb", "bgr"),
        default=None,
        help="channel order of the model input",
    )
    e.add_argument(
        "--layout",
        choices=("nchw", "nhwc"),
        default=None,
        help="image tensor layout (default: detected from the model)",
    )
    e.add_argument("--no-crop", action="store_true", help="resize to size×size without cropping")
    e.add_argument(
        "--backend",
        choices=("auto", "compiled", "numpy"),
        default="auto",
        help="compiled: the convert explainer in one ONNX Runtime session; numpy: "
        "ONNX Runtime forward + NumPy backward; auto (default): compiled "
        "when the model has fixed image sizes",
    )
    e.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="cuda: ONNX Runtime CUDA forward + CuPy backward (needs the [gpu] "
        "extra); auto: cuda when usable, else the CPU (said once)",
    )
    e.set_defaults(func=cmd_explain)

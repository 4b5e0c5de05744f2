"""`tsgb explain` over files and folders: batches, top-k classes, progress, PNG/NPY/HTML output."""

from __future__ import annotations

import argparse
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
    add_method_flags,
    check_out,
    floats,
    method_options,
    positive_int,
    size,
)
from tsgb_onnx.errors import InputError, TargetError
from tsgb_onnx.explainer import Explainer
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
from tsgb_onnx.io.render import default_cmap, heatmap, input_picture, save_png, upscale

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


def _batches(files, prep: Preprocessing, rank: int, size: int):
    """Yield lists of (name, x row, picture) of at most `size` rows."""
    pending: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for path, name in files:
        rows, pictures, names = read_input(path, name, prep, rank)
        if rows.size == 0:
            raise InputError(f"input '{path}' has shape {tuple(rows.shape)}: it holds no values")
        pending += list(zip(names, rows, pictures))
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


def explain_rows(explainer, settings: Settings, prep: Preprocessing, target, top_k: int):
    """Explain every input; yields finished Rows batch by batch."""
    graph = explainer.graph
    rank = len(graph.input_shape or (0, 0, 0, 0))
    files = discover(settings.inputs)
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
    offset = 0
    try:
        for batch in _batches(files, prep, rank, settings.batch_size):
            x = np.stack([row for _, row, _ in batch]).astype(np.float32, copy=False)
            n = len(batch)
            fixed = target[offset : offset + n] if isinstance(target, list) else target
            offset += n
            first = _explain(explainer, x, fixed, settings.layer, prep.layout)
            logits = first.logits
            ranked = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
            maps, targets = [first.saliency], [first.target]
            for r in range(1, top_k):
                res = _explain(explainer, x, ranked[:, r], settings.layer, prep.layout)
                maps.append(res.saliency)
                targets.append(res.target)
            for i, (name, row, picture) in enumerate(batch):
                yield Row(
                    name=name,
                    x=row,
                    picture=picture,
                    targets=[int(t[i]) for t in targets],
                    maps=[np.asarray(m[i]) for m in maps],
                    logits=np.asarray(logits[i]),
                    layer=first.layer,
                )
            progress.update(n)
    finally:
        progress.close()


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


def overlay(row: Row, sal: np.ndarray, settings: Settings) -> np.ndarray:
    cmap = settings.cmap or default_cmap(settings.colormap == "diverging")
    if row.picture is not None:
        return heatmap(sal, row.picture, colormap=settings.colormap, cmap=cmap)
    return upscale(heatmap(sal, None, colormap=settings.colormap, cmap=cmap))


def row_picture(row: Row, layout: str) -> np.ndarray | None:
    if row.picture is not None:
        return row.picture
    x = np.moveaxis(row.x, -1, 0) if layout == "nhwc" and row.x.ndim == 3 else row.x
    pic = input_picture(x)
    return None if pic is None else upscale(pic)


def run(explainer, settings: Settings, prep: Preprocessing) -> int:
    """Explain, print one line per map, write what was asked for."""
    labels = choose_labels(explainer.graph, settings.labels)
    target = parse_targets(settings.target, labels)
    top_k = settings.top_k
    if target is not None and top_k > 1:
        raise InputError("--target and --top-k > 1 exclude each other: give one of them")
    classes = explainer.graph.num_classes
    if classes is not None and top_k > classes:
        raise InputError(f"--top-k {top_k} is more than the model's {classes} classes")
    if settings.out_dir is not None:
        settings.out_dir.mkdir(parents=True, exist_ok=True)
    writer = OutDirWriter(settings, labels, prep) if settings.out_dir is not None else None
    kept: list[Row] = []
    for row in explain_rows(explainer, settings, prep, target, top_k):
        for line in describe(row, labels, top_k):
            print(line)
        if writer is not None:
            writer.add(row)
        if settings.out is not None:
            kept.append(row)
    if settings.out is not None:
        write_single(settings, kept, top_k)
    if writer is not None:
        writer.finish(explainer)
    return 0


def write_single(settings: Settings, rows: list[Row], top_k: int) -> None:
    """`--out x.npy` (all maps, [B, *spatial] or [B, K, *spatial]) or `--out x.png`."""
    out = settings.out
    if out.suffix.lower() == ".npy":
        maps = np.stack([np.stack(r.maps) if top_k > 1 else r.maps[0] for r in rows])
        np.save(out, maps)
        print(f"wrote {out}")
        return
    for row in rows:
        for r, sal in enumerate(row.maps):
            stem = (
                out.stem
                if len(rows) == 1
                else f"{out.stem}_{safe_name(row.name).replace('/', '_')}"
            )
            if top_k > 1:
                stem += f"_top{r + 1}"
            path = out.with_name(stem + out.suffix)
            save_png(overlay(row, sal, settings), path)
            print(f"wrote {path}")


class OutDirWriter:
    """Per-input files under --out-dir, then index.html and results.json."""

    def __init__(self, settings: Settings, labels, prep: Preprocessing):
        self.settings, self.labels, self.prep = settings, labels, prep
        self.root = settings.out_dir
        self.entries: list = []
        self.records: list[dict[str, Any]] = []
        self.used: dict[str, int] = {}
        self.layer = ""

    def _stem(self, name: str) -> str:
        base = safe_name(name)
        n = self.used.get(base, 0)
        self.used[base] = n + 1
        return base if n == 0 else f"{base}~{n + 1}"

    def _file(self, rel: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _picture(self, rgb: np.ndarray, rel: str) -> str:
        from tsgb_onnx.io.report import data_uri

        if "png" in self.settings.formats:
            save_png(rgb, self._file(rel))
            return quote(rel)
        return data_uri(rgb)

    def add(self, row: Row) -> None:
        from tsgb_onnx.io.report import InputEntry, MapEntry

        stem = self._stem(row.name)
        self.layer = row.layer
        formats = self.settings.formats
        record: dict[str, Any] = {"name": row.name, "files": [], "maps": []}
        if "npy" in formats:
            path = self._file(f"{stem}.npy")
            np.save(path, np.stack(row.maps))
            record["files"].append(path.relative_to(self.root).as_posix())
        picture = None
        if "png" in formats or "html" in formats:
            pic = row_picture(row, self.prep.layout)
            if pic is not None:
                picture = self._picture(pic, f"{stem}.input.png")
        probs = _softmax(row.logits.astype(np.float64))
        entry = InputEntry(row.name, picture)
        for r, (t, sal) in enumerate(zip(row.targets, row.maps)):
            label = label_of(t, self.labels)
            src = None
            if "png" in formats or "html" in formats:
                src = self._picture(overlay(row, sal, self.settings), f"{stem}.class{t}.png")
                entry.maps.append(
                    MapEntry(r + 1, t, label, float(row.logits[t]), float(probs[t]), src)
                )
            record["maps"].append(
                {
                    "rank": r + 1,
                    "target": t,
                    "label": label,
                    "logit": float(row.logits[t]),
                    "prob": float(probs[t]),
                    "png": src if src and not src.startswith("data:") else None,
                }
            )
        if "png" in formats:
            record["files"] += [m["png"] for m in record["maps"]]
        self.entries.append(entry)
        self.records.append(record)

    def finish(self, explainer) -> None:
        from tsgb_onnx.io.report import write_index

        method = explainer.method.name
        summary = {"method": method, "layer": self.layer, "inputs": self.records}
        (self.root / "results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        if "html" in self.settings.formats:
            meta = {
                "method": method,
                "colormap": self.settings.colormap,
                "inputs": str(len(self.entries)),
            }
            index = self.root / "index.html"
            write_index(index, self.entries, f"tsgb explain: {method} saliency", meta)
            print(f"wrote {index}")
        print(f"wrote {len(self.records)} inputs to {self.root}")


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
    if out_dir is not None and not formats:
        formats = ("png", "html")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir '{out_dir}' exists and is not a folder")
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
    )


def cmd_explain(args: argparse.Namespace) -> int:
    settings = _explain_settings(args)
    explainer = Explainer(
        args.model,
        method=args.method,
        output=args.output,
        backend=args.backend,
        device=args.device,
        **method_options(args),
    )
    prep = choose_preprocessing(explainer.graph, settings.preset, settings.explicit)
    return run(explainer, settings, prep)


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

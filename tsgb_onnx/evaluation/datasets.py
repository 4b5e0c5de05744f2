"""Evaluation data sets: images with annotated objects (class indices, boxes, masks).

Sources (`load_dataset(spec)`):

* `synthetic[:COUNT[:SEED]]` — scenes of `tsgb_onnx.scenes` (default 32 scenes, seed 7).
* `skimage` — the bundled manifest of scikit-image photos with hand-drawn boxes
  (`tsgb_onnx/data/skimage_photos.json`, ImageNet classes).
* a manifest `.json` / `.toml` (format in docs/evaluation.md), image paths relative to it.
* a folder holding `labels.json`, `labels.toml` or `labels.csv`
  (CSV columns: `file,label,classes,x0,y0,x1,y1`; `classes` like `281|282`; box optional).

Boxes are (x0, y0, x1, y1), end-exclusive, in the pixels of the original image; they (and the
masks) are mapped through the same resize/crop as the image.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tsgb_onnx.errors import InputError
from tsgb_onnx.io.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    fit_image,
    load_rgb,
    to_tensor,
)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass
class Annotation:
    """One object: a name, the class indices that count as it, its box and/or mask."""

    label: str
    classes: tuple[int, ...]
    box: tuple[int, int, int, int] | None = None
    mask: np.ndarray | None = None


@dataclass
class Dataset:
    x: np.ndarray  # [N, C, H, W] model inputs
    rgb: list  # uint8 [H, W, 3] per image as fed (for display)
    names: list[str]
    objects: list[list[Annotation]]
    name: str = "data"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)


# --------------------------------------------------------------------------- synthetic scenes
def synthetic(count: int = 32, seed: int = 7) -> Dataset:
    from tsgb_onnx.evaluation import scenes

    items = scenes.make_scenes(count, seed=seed)
    rgb = [s.rgb for s in items]
    objects = [
        [Annotation(scenes.CLASSES[o.label], (o.label,), o.box, o.mask) for o in s.objects]
        for s in items
    ]
    return Dataset(
        scenes.to_input(np.stack(rgb)),
        rgb,
        [f"scene{i}" for i in range(count)],
        objects,
        name=f"synthetic:{count}:{seed}",
    )


# --------------------------------------------------------------------------- geometry
def _map_box(box, shape, prep: Preprocessing):
    """Box in original pixels → box in the fitted image (same arithmetic as fit_image)."""
    h, w = shape
    x0, y0, x1, y1 = box
    if prep.crop:
        short = round(prep.size * prep.resize_ratio)
        scale = short / min(w, h)
        nw, nh = max(prep.size, round(w * scale)), max(prep.size, round(h * scale))
        sx, sy = nw / w, nh / h
        ox, oy = (nw - prep.size) // 2, (nh - prep.size) // 2
    else:
        sx, sy, ox, oy = prep.size / w, prep.size / h, 0, 0
    bx0 = int(np.clip(np.floor(x0 * sx) - ox, 0, prep.size))
    by0 = int(np.clip(np.floor(y0 * sy) - oy, 0, prep.size))
    bx1 = int(np.clip(np.ceil(x1 * sx) - ox, 0, prep.size))
    by1 = int(np.clip(np.ceil(y1 * sy) - oy, 0, prep.size))
    return (bx0, by0, bx1, by1) if bx1 > bx0 and by1 > by0 else None


def _map_mask(mask: np.ndarray, prep: Preprocessing) -> np.ndarray:
    grey = (np.asarray(mask) > 0).astype(np.uint8) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    return fit_image(rgb, prep)[..., 0] >= 128


# --------------------------------------------------------------------------- manifests
def _read_table(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"data set manifest '{path}' does not exist") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            return tomllib.loads(text)
        return json.loads(text)
    except Exception as exc:
        raise InputError(f"data set manifest '{path}' cannot be parsed: {exc}") from None


def _classes(entry: dict, labels: dict, where: str) -> tuple[int, ...]:
    raw = entry.get("classes", entry.get("class"))
    if raw is None:
        raw = labels.get(entry.get("label"))
    if raw is None:
        raise InputError(f"{where}: give 'class', 'classes', or a label listed under 'labels'")
    raw = [raw] if isinstance(raw, (int, str)) else raw
    try:
        return tuple(int(c) for c in raw)
    except (TypeError, ValueError):
        raise InputError(f"{where}: classes must be integers, got {raw!r}") from None


def _image(entry: dict, base: Path, where: str) -> tuple[np.ndarray, str]:
    if "skimage" in entry:
        from tsgb_onnx.io.photos import photo

        name = entry["skimage"]
        try:
            return photo(name), name
        except AttributeError:
            raise InputError(f"{where}: scikit-image has no photo '{name}'") from None
    if "file" not in entry:
        raise InputError(f"{where}: give 'file' (a path) or 'skimage' (a photo name)")
    path = base / entry["file"]
    if not path.exists():
        raise InputError(f"{where}: image '{path}' does not exist")
    return load_rgb(path), path.stem


def from_manifest(
    table: dict, base: Path, size: int | None = None, name: str = "manifest"
) -> Dataset:
    """A data set from a parsed manifest (see the module docstring); paths relative to `base`."""
    pre = dict(table.get("preprocess", {}))
    prep = Preprocessing(
        size=int(pre.get("size", size or 224)),
        mean=tuple(pre.get("mean", IMAGENET_MEAN)),
        std=tuple(pre.get("std", IMAGENET_STD)),
        layout="nchw",
        crop=bool(pre.get("crop", False)),
    )  # NCHW here;
    # evaluate() transposes for channels-last models
    labels = table.get("labels", {})
    images = table.get("images")
    if not isinstance(images, list) or not images:
        raise InputError(f"data set '{name}' lists no images: give an [[images]] array")
    xs, shown, names, objects = [], [], [], []
    for i, entry in enumerate(images):
        where = f"data set '{name}', image {i + 1}"
        rgb, stem = _image(entry, base, where)
        fitted = fit_image(rgb, prep)
        annos = []
        for j, obj in enumerate(entry.get("objects", [])):
            ow = f"{where}, object {j + 1}"
            box = obj.get("box")
            if box is not None:
                if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
                    raise InputError(f"{ow}: box must be [x0, y0, x1, y1] with x1 > x0, y1 > y0")
                box = _map_box(box, rgb.shape[:2], prep)
            mask = None
            if obj.get("mask") is not None:
                mpath = base / obj["mask"]
                if not mpath.exists():
                    raise InputError(f"{ow}: mask '{mpath}' does not exist")
                mask = _map_mask(load_rgb(mpath)[..., 0], prep)
            annos.append(
                Annotation(
                    str(obj.get("label", obj.get("class", j))), _classes(obj, labels, ow), box, mask
                )
            )
        xs.append(to_tensor(fitted, prep))
        shown.append(fitted)
        names.append(entry.get("name", stem))
        objects.append(annos)
    return Dataset(
        np.concatenate(xs),
        shown,
        names,
        objects,
        name=name,
        meta={
            "preprocess": {
                "size": prep.size,
                "mean": list(prep.mean),
                "std": list(prep.std),
                "crop": prep.crop,
            }
        },
    )


def _from_csv(path: Path, size: int | None) -> Dataset:
    images: dict[str, dict] = {}
    with path.open(newline="") as fh:
        for row_no, row in enumerate(csv.DictReader(fh), start=2):
            where = f"'{path}' line {row_no}"
            if not row.get("file") or not row.get("classes"):
                raise InputError(f"{where}: needs columns file and classes")
            obj = {
                "label": row.get("label") or row["classes"],
                "classes": [int(c) for c in row["classes"].split("|")],
            }
            coords = [row.get(k) for k in ("x0", "y0", "x1", "y1")]
            if all(c not in (None, "") for c in coords):
                try:
                    obj["box"] = [int(float(c)) for c in coords]
                except ValueError:
                    raise InputError(f"{where}: box values must be numbers") from None
            images.setdefault(row["file"], {"file": row["file"], "objects": []})["objects"].append(
                obj
            )
    return from_manifest(
        {"images": list(images.values())}, path.parent, size, name=str(path.parent)
    )


def load_dataset(spec: str | Path, size: int | None = None) -> Dataset:
    """Load a data set from a spec (see the module docstring); `size`: the model's input size."""
    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        parts = text.split(":")[1:]
        try:
            count = int(parts[0]) if parts and parts[0] else 32
            seed = int(parts[1]) if len(parts) > 1 else 7
        except ValueError:
            raise InputError(
                f"synthetic data set spec is synthetic[:COUNT[:SEED]], got '{text}'"
            ) from None
        if count <= 0:
            raise InputError(f"synthetic data set needs a positive count, got {count}")
        return synthetic(count, seed)
    if text == "skimage":
        path = DATA_DIR / "skimage_photos.json"
        return from_manifest(_read_table(path), path.parent, size, name="skimage")
    path = Path(text)
    if path.is_dir():
        for candidate in ("labels.json", "labels.toml", "labels.csv"):
            if (path / candidate).exists():
                label_file = path / candidate
                if label_file.suffix == ".csv":
                    return _from_csv(label_file, size)
                return from_manifest(_read_table(label_file), path, size, name=str(path))
        raise InputError(f"data folder '{path}' holds no labels.json, labels.toml or labels.csv")
    if not path.exists():
        raise InputError(
            f"data set '{text}' does not exist (give a manifest .json/.toml, a folder "
            "with a labels file, 'synthetic[:COUNT[:SEED]]' or 'skimage')"
        )
    if path.suffix.lower() not in (".json", ".toml"):
        raise InputError(f"data set '{text}': a manifest must end in .json or .toml")
    return from_manifest(_read_table(path), path.parent, size, name=str(path))

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

`load_dataset` holds every image in memory (`Dataset`); `open_source` reads them lazily
(`Source`: a small JSON-able spec per image, pixels loaded batch by batch), which is what
`evaluate` does with a spec, so its memory does not grow with the data set.
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

    def load(self, i: int) -> Item:
        return Item(i, self.names[i], self.x[i], self.rgb[i], self.objects[i])

    def batches(self, size: int, indices=None):
        """Lists of at most `size` items, in order (`indices`: a subset, in order)."""
        order = list(range(len(self))) if indices is None else [int(i) for i in indices]
        for lo in range(0, len(order), size):
            yield [self.load(i) for i in order[lo : lo + size]]


# --------------------------------------------------------------------------- lazy sources
@dataclass
class Item:
    """One image of a data set, loaded: the model input row, the picture, the objects."""

    index: int  # position in the data set
    name: str
    x: np.ndarray  # [C, H, W] float32 (NCHW; evaluate transposes for channels-last models)
    rgb: np.ndarray  # uint8 [H, W, 3] as fed
    objects: list[Annotation]


@dataclass
class Source:
    """A data set read lazily, so that nothing grows with its size but one small record
    per image.

    `specs[i]` says where image i's pixels come from and what its objects are (a JSON-able
    dict: a file path, a scikit-image photo name, or the random state a synthetic scene is
    drawn from; labels, classes, boxes in original pixels, mask paths); `load(i)` /
    `batches(n)` read, fit and normalise the pixels and map the boxes and masks. A spec
    alone is enough to load its image (`load_item(spec, prep)`), which is how the Ray
    workers read a data set (`tsgb_onnx.scale`). Checks that need no pixels (the manifest's
    structure, classes, box coordinates) run when the source is opened; a file that is
    missing or cannot be decoded is an `InputError` when it is loaded.
    """

    specs: list[dict]
    prep: dict  # Preprocessing fields, or {"synthetic": True}
    name: str = "data"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def names(self) -> list[str]:
        return [s["name"] for s in self.specs]

    def load(self, i: int) -> Item:
        return load_item(self.specs[i], self.prep)

    def batches(self, size: int, indices=None):
        """Lists of at most `size` loaded items, in order (`indices`: a subset, in order)."""
        order = range(len(self.specs)) if indices is None else indices
        batch: list[Item] = []
        for i in order:
            batch.append(self.load(int(i)))
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def materialize(self) -> Dataset:
        """Every image loaded, as an in-memory `Dataset`."""
        items = [self.load(i) for i in range(len(self))]
        return Dataset(
            np.stack([it.x for it in items]),
            [it.rgb for it in items],
            [it.name for it in items],
            [it.objects for it in items],
            name=self.name,
            meta=dict(self.meta),
        )


def load_item(spec: dict, prep: dict) -> Item:
    """Load the image a spec names (see `Source`): an `Item`, or an `InputError` saying
    which image could not be read and why."""
    if "synthetic" in spec:
        return _synthetic_item(spec)
    fit = _preprocessing(prep)
    where = spec.get("where", f"image '{spec['name']}'")
    if "skimage" in spec:
        from tsgb_onnx.io.photos import photo

        try:
            rgb = photo(spec["skimage"])
        except AttributeError:
            raise InputError(f"{where}: scikit-image has no photo '{spec['skimage']}'") from None
    else:
        path = Path(spec["file"])
        if not path.exists():
            raise InputError(f"{where}: image '{path}' does not exist")
        rgb = load_rgb(path)
    fitted = fit_image(rgb, fit)
    annos = []
    for j, obj in enumerate(spec["objects"]):
        box = obj.get("box")
        if box is not None:
            box = _map_box(box, rgb.shape[:2], fit)
        mask = None
        if obj.get("mask") is not None:
            mpath = Path(obj["mask"])
            if not mpath.exists():
                raise InputError(f"{where}, object {j + 1}: mask '{mpath}' does not exist")
            mask = _map_mask(load_rgb(mpath)[..., 0], fit)
        annos.append(Annotation(obj["label"], tuple(obj["classes"]), box, mask))
    return Item(spec["index"], spec["name"], to_tensor(fitted, fit)[0], fitted, annos)


def _preprocessing(prep: dict) -> Preprocessing:
    return Preprocessing(
        size=int(prep["size"]),
        mean=tuple(prep["mean"]),
        std=tuple(prep["std"]),
        layout="nchw",
        crop=bool(prep["crop"]),
    )


# --------------------------------------------------------------------------- synthetic scenes
def synthetic_source(count: int = 32, seed: int = 7) -> Source:
    """The scenes of `synthetic(count, seed)`, each spec holding the random state its scene
    is drawn from (the scenes share one generator, so this draws them once)."""
    from tsgb_onnx.evaluation import scenes

    rng = np.random.default_rng(seed)
    specs = []
    for i in range(count):
        state = json.dumps(rng.bit_generator.state)
        scene = scenes.make_scene(rng)
        objects = [
            {"label": scenes.CLASSES[o.label], "classes": [o.label], "box": list(o.box)}
            for o in scene.objects
        ]
        specs.append(
            {"index": i, "name": f"scene{i}", "synthetic": {"state": state}, "objects": objects}
        )
    return Source(specs, {"synthetic": True}, name=f"synthetic:{count}:{seed}")


def _synthetic_item(spec: dict) -> Item:
    from tsgb_onnx.evaluation import scenes

    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(spec["synthetic"]["state"])
    scene = scenes.make_scene(rng)
    objects = [
        Annotation(scenes.CLASSES[o.label], (o.label,), o.box, o.mask) for o in scene.objects
    ]
    return Item(spec["index"], spec["name"], scenes.to_input(scene.rgb)[0], scene.rgb, objects)


def synthetic(count: int = 32, seed: int = 7) -> Dataset:
    """`count` scenes of `tsgb_onnx.scenes` drawn from `seed`, in memory."""
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


def manifest_source(
    table: dict, base: Path, size: int | None = None, name: str = "manifest"
) -> Source:
    """A lazy data set from a parsed manifest (format in docs/evaluation.md); paths
    relative to `base`. Structure, classes and boxes are checked here, pixels and files
    when an image is loaded."""
    pre = dict(table.get("preprocess", {}))
    prep = {
        "size": int(pre.get("size", size or 224)),
        "mean": list(pre.get("mean", IMAGENET_MEAN)),
        "std": list(pre.get("std", IMAGENET_STD)),
        "crop": bool(pre.get("crop", False)),
    }
    _preprocessing(prep)  # its own checks (positive size, three means, ...)
    labels = table.get("labels", {})
    images = table.get("images")
    if not isinstance(images, list) or not images:
        raise InputError(f"data set '{name}' lists no images: give an [[images]] array")
    specs = []
    for i, entry in enumerate(images):
        where = f"data set '{name}', image {i + 1}"
        spec: dict = {"index": i, "where": where}
        if "skimage" in entry:
            spec["skimage"] = str(entry["skimage"])
            stem = spec["skimage"]
        elif "file" in entry:
            path = base / entry["file"]
            spec["file"] = str(path)
            stem = path.stem
        else:
            raise InputError(f"{where}: give 'file' (a path) or 'skimage' (a photo name)")
        objects = []
        for j, obj in enumerate(entry.get("objects", [])):
            ow = f"{where}, object {j + 1}"
            box = obj.get("box")
            if box is not None:
                if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
                    raise InputError(f"{ow}: box must be [x0, y0, x1, y1] with x1 > x0, y1 > y0")
                box = [int(v) if float(v).is_integer() else float(v) for v in box]
            objects.append(
                {
                    "label": str(obj.get("label", obj.get("class", j))),
                    "classes": list(_classes(obj, labels, ow)),
                    "box": box,
                    "mask": None if obj.get("mask") is None else str(base / obj["mask"]),
                }
            )
        spec["name"] = entry.get("name", stem)
        spec["objects"] = objects
        specs.append(spec)
    return Source(
        specs,
        prep,
        name=name,
        meta={"preprocess": {k: prep[k] for k in ("size", "mean", "std", "crop")}},
    )


def from_manifest(
    table: dict, base: Path, size: int | None = None, name: str = "manifest"
) -> Dataset:
    """A data set from a parsed manifest (see the module docstring); paths relative to `base`."""
    return manifest_source(table, base, size, name).materialize()


def _from_csv(path: Path, size: int | None) -> Source:
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
    return manifest_source(
        {"images": list(images.values())}, path.parent, size, name=str(path.parent)
    )


def load_dataset(spec: str | Path, size: int | None = None) -> Dataset:
    """Load a data set from a spec (see the module docstring) into memory; `size`: the
    model's input size."""
    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        count, seed = _synthetic_spec(text)
        return synthetic(count, seed)
    return open_source(spec, size).materialize()


def _synthetic_spec(text: str) -> tuple[int, int]:
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
    return count, seed


def open_source(spec: str | Path, size: int | None = None) -> Source:
    """A data set spec (see the module docstring) as a lazy `Source`; `size`: the model's
    input size."""
    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        return synthetic_source(*_synthetic_spec(text))
    if text == "skimage":
        path = DATA_DIR / "skimage_photos.json"
        return manifest_source(_read_table(path), path.parent, size, name="skimage")
    path = Path(text)
    if path.is_dir():
        for candidate in ("labels.json", "labels.toml", "labels.csv"):
            if (path / candidate).exists():
                label_file = path / candidate
                if label_file.suffix == ".csv":
                    return _from_csv(label_file, size)
                return manifest_source(_read_table(label_file), path, size, name=str(path))
        raise InputError(f"data folder '{path}' holds no labels.json, labels.toml or labels.csv")
    if not path.exists():
        raise InputError(
            f"data set '{text}' does not exist (give a manifest .json/.toml, a folder "
            "with a labels file, 'synthetic[:COUNT[:SEED]]' or 'skimage')"
        )
    if path.suffix.lower() not in (".json", ".toml"):
        raise InputError(f"data set '{text}': a manifest must end in .json or .toml")
    return manifest_source(_read_table(path), path.parent, size, name=str(path))

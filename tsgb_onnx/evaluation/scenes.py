"""Synthetic scenes with ground truth: coloured shapes on textured backgrounds.

Every scene holds two or three objects of different classes (a class is a shape with its
own colour family), drawn in random order over a random texture (sinusoidal stripes plus
noise). Each object comes with its visible mask (later objects occlude earlier ones) and
the bounding box of that mask. The label of a scene is multi-label: the set of classes
present. Everything is drawn from one seed, so a (count, seed) pair names a data set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("disc", "square", "triangle", "cross", "ring")
# base colour of each class (RGB in [0, 1]); each object jitters it
_COLOURS = np.array(
    [
        [0.90, 0.15, 0.15],
        [0.15, 0.75, 0.20],
        [0.20, 0.30, 0.95],
        [0.95, 0.85, 0.10],
        [0.85, 0.20, 0.85],
    ],
    dtype=np.float32,
)
SIZE = 64
# models trained on the scenes take [0, 1] RGB normalised with these
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


@dataclass
class SceneObject:
    """One object of a scene: its class, visible mask [H, W] and box (x0, y0, x1, y1),
    end-exclusive."""

    label: int
    mask: np.ndarray
    box: tuple[int, int, int, int]


@dataclass
class Scene:
    rgb: np.ndarray  # uint8 [H, W, 3]
    objects: list[SceneObject]

    @property
    def labels(self) -> np.ndarray:
        """Multi-hot label vector over CLASSES."""
        y = np.zeros(len(CLASSES), np.float32)
        for obj in self.objects:
            y[obj.label] = 1.0
        return y


def _shape_mask(kind: int, cy: float, cx: float, r: float, angle: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotated coordinates
    if kind == 0:  # disc
        return dx**2 + dy**2 <= r**2
    if kind == 1:  # square
        return (np.abs(u) <= r * 0.85) & (np.abs(v) <= r * 0.85)
    if kind == 2:  # triangle (pointing along -v)
        h = r * 1.1
        return (v <= h / 2) & (v >= -h) & (np.abs(u) <= (v + h) * 0.6)
    if kind == 3:  # cross
        arm = r * 0.33
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    if kind == 4:  # ring
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (r * 0.55) ** 2)
    raise ValueError(f"unknown shape {kind}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = rng.uniform(0.25, 0.75, size=3).astype(np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    for _ in range(2):  # two stripe patterns of random direction, period and tint
        theta, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        wave = np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * 2 * np.pi / period)
        tint = rng.uniform(-0.12, 0.12, size=3).astype(np.float32)
        img += wave[..., None] * tint
    img += rng.normal(0, 0.05, size=img.shape).astype(np.float32)
    return img


def make_scene(
    rng: np.random.Generator, size: int = SIZE, objects: tuple[int, int] = (2, 3)
) -> Scene:
    """One scene with `objects` (min, max) objects of distinct classes."""
    img = _background(rng, size)
    count = int(rng.integers(objects[0], objects[1] + 1))
    kinds = rng.choice(len(CLASSES), size=count, replace=False)
    masks = []
    centres: list[tuple[float, float, float]] = []
    for kind in kinds:
        r = float(rng.uniform(7, 11) * size / 64)
        for _ in range(20):  # keep centres apart so every object stays mostly visible
            cy, cx = rng.uniform(r, size - r, size=2)
            if all((cy - y) ** 2 + (cx - x) ** 2 > (0.9 * (r + q)) ** 2 for y, x, q in centres):
                break
        centres.append((cy, cx, r))
        mask = _shape_mask(int(kind), cy, cx, r, float(rng.uniform(0, 2 * np.pi)), size)
        colour = np.clip(_COLOURS[kind] + rng.uniform(-0.1, 0.1, size=3), 0, 1)
        shade = 1.0 + rng.normal(0, 0.04, size=(size, size, 1)).astype(np.float32)
        img = np.where(mask[..., None], colour * shade, img)
        masks = [m & ~mask for m in masks] + [mask]
    rgb = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    objs = []
    for kind, mask in zip(kinds, masks):
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            continue
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objs.append(SceneObject(int(kind), mask, box))
    return Scene(rgb, objs)


def make_scenes(count: int, seed: int = 0, size: int = SIZE) -> list[Scene]:
    """`count` scenes drawn from `seed`."""
    rng = np.random.default_rng(seed)
    return [make_scene(rng, size) for _ in range(count)]


def to_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] (or one [H, W, 3]) → float32 [N, 3, H, W], normalised."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 3:
        rgb = rgb[None]
    x = (rgb.astype(np.float32) / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(
        STD, np.float32
    )
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

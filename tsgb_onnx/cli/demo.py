"""`tsgb demo`: what TSGB is for, on real photos with pretrained EfficientNet-Lite0.

One figure, every method at its defaults (TSGB: the default alpha), TSGB beside Grad-CAM and
gradient x input:

1. Target selectivity. chelsea | coffee side by side are one input, explained for the class
   the model gives each photo alone (a cat class, a cup class). Each map's panel gives the
   share of its positive mass on the target's photo.
2. Single photos, top-1 class: the image with its hand-drawn object box
   (`tsgb_onnx/data/skimage_photos.json`) and the maps. Each panel gives the share of the
   map's positive mass inside the box; the box's share of the image is what a map spread
   evenly would score.

The same numbers are printed as a caption and returned (`DemoResult`).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsgb_onnx.evaluation.datasets import load_dataset
from tsgb_onnx.explainer import Explainer
from tsgb_onnx.io.atomic import write_bytes_atomic
from tsgb_onnx.io.figure import (
    compact_png,
    hstack,
    map_panel,
    outline,
    text_block,
    titled,
    vstack,
)
from tsgb_onnx.io.labels import imagenet_labels
from tsgb_onnx.io.photos import half_shares, lite0_onnx, two_photo_input
from tsgb_onnx.io.render import COLORMAPS, ROBUST_PERCENTILE, sign_balance

METHODS = (("tsgb", "TSGB"), ("gradcam", "Grad-CAM"), ("input_x_gradient", "gradient x input"))
PHOTOS = ("chelsea", "coffee")  # left and right half of the selectivity input, in this order


@dataclass(frozen=True)
class Photo:
    """One photo as the demo explains it: its top-1 class and its object's box."""

    name: str
    target: int
    label: str
    p: float  # softmax probability of `target`
    thing: str  # what the box holds ("cat", "cup")
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the 224x224 input, end-exclusive
    box_area: float  # the box's share of the image


@dataclass(frozen=True)
class DemoResult:
    path: Path
    alpha: float
    photos: tuple[Photo, ...]
    # pair[method][t][h]: share of the positive mass of the map for photo t's class on half h
    # of the chelsea | coffee input (h = 0 chelsea, 1 coffee)
    pair: dict[str, tuple[tuple[float, float], ...]]
    # box_share[method][i]: share of the positive mass of photo i's map inside its box
    box_share: dict[str, tuple[float, ...]]
    seconds: float

    def on_target(self, method: str, t: int) -> float:
        """Share of the map for photo t's class that lies on photo t (the selective share)."""
        return self.pair[method][t][t]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _box_share(saliency: np.ndarray, box: tuple[int, int, int, int]) -> float:
    positive = np.maximum(saliency, 0)
    total = float(positive.sum())
    x0, y0, x1, y1 = box
    return float(positive[y0:y1, x0:x1].sum()) / total if total > 0 else 0.0


def _mass_note(saliency: np.ndarray) -> str:
    """' (-/+ r)' for a signed map: its negative / positive mass, which the positive view
    hides; '' for a map without a negative part."""
    balance = sign_balance(saliency)
    if balance.negative_mass == 0:
        return ""
    return f"  (-/+ mass {balance.ratio:.2f})"


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def run_demo(
    out: str | os.PathLike = "demo.png",
    alpha: float | None = None,
    colormap: str = "positive",
    quiet: bool = False,
) -> DemoResult:
    """Write the demo figure to `out` and print its caption (unless `quiet`)."""
    start = time.perf_counter()
    labels = imagenet_labels()
    data = load_dataset("skimage", 224)
    rows = [data.names.index(name) for name in PHOTOS]
    x_single = data.x[rows]
    pair_rgb, x_pair = two_photo_input()
    single_model, pair_model = lite0_onnx(), lite0_onnx(size=(224, 448))

    results_single, results_pair, targets = {}, {}, None
    for method, _ in METHODS:
        options = {"alpha": alpha} if method == "tsgb" and alpha is not None else {}
        explainer = Explainer(single_model, method=method, **options)
        if method == "tsgb":
            alpha = float(explainer.options["alpha"])  # None above: the method's default
        results_single[method] = single = explainer.explain(x_single, target=targets)
        if targets is None:  # the first method's top-1 classes are everyone's targets
            targets = [int(t) for t in single.target]
            probs = _softmax(single.logits.astype(np.float64))
        results_pair[method] = Explainer(pair_model, method=method, **options).explain(
            np.concatenate([x_pair, x_pair]), target=targets
        )

    photos = []
    for i, (name, row) in enumerate(zip(PHOTOS, rows)):
        obj = data.objects[row][0]
        x0, y0, x1, y1 = obj.box
        photos.append(
            Photo(
                name,
                targets[i],
                labels[targets[i]],
                float(probs[i, targets[i]]),
                obj.label,
                obj.box,
                (x1 - x0) * (y1 - y0) / (224 * 224),
            )
        )
    pair = {
        m: tuple(half_shares(results_pair[m].saliency[t]) for t in range(len(PHOTOS)))
        for m, _ in METHODS
    }
    box_share = {
        m: tuple(_box_share(results_single[m].saliency[i], p.box) for i, p in enumerate(photos))
        for m, _ in METHODS
    }

    def method_title(method: str, name: str) -> str:
        return f"{name} (alpha={alpha:g})" if method == "tsgb" else name

    # 1. target selectivity: one line per target, the input with the target's photo outlined
    half = pair_rgb.shape[1] // len(PHOTOS)
    section1 = []
    for t, ph in enumerate(photos):
        box = (t * half, 0, (t + 1) * half, pair_rgb.shape[0])
        panels = [
            titled(
                outline(pair_rgb, box, (255, 255, 0), 3),
                [f"input: {' | '.join(PHOTOS)}", f"target: {ph.label} ({ph.target}), outlined"],
            )
        ]
        for method, name in METHODS:
            sal = results_pair[method].saliency[t]
            panels.append(
                titled(
                    map_panel(sal, None, colormap),
                    [
                        f"{method_title(method, name)}, target {ph.label}",
                        f"on the {ph.thing} photo: {_pct(pair[method][t][t])}{_mass_note(sal)}",
                    ],
                )
            )
        section1.append(hstack(panels))

    # 2. single photos: image with its box, then the maps
    section2 = []
    for i, ph in enumerate(photos):
        rgb = data.rgb[rows[i]]
        section2.append(
            titled(
                outline(rgb, ph.box, (255, 255, 0), 2),
                [f"{ph.name}: {ph.label} p={ph.p:.2f}", f"{ph.thing} box: {_pct(ph.box_area)}"],
            )
        )
        for method, name in METHODS:
            sal = results_single[method].saliency[i]
            section2.append(
                titled(
                    map_panel(sal, None, colormap),
                    [
                        method_title(method, name),
                        f"in the box: {_pct(box_share[method][i])}{_mass_note(sal)}",
                    ],
                )
            )
    body1, body2 = vstack(section1), hstack(section2)
    width = max(body1.shape[1], body2.shape[1])
    view = (
        "heat maps: the positive part (negatives truncated), scaled to the "
        f"{ROBUST_PERCENTILE:g}th percentile of its pixels"
        if colormap == "positive"
        else "heat maps: blue negative, white 0, red positive, scaled to the "
        f"{ROBUST_PERCENTILE:g}th percentile of |map| (legend)"
    )
    figure = vstack(
        [
            text_block(
                [
                    f"tsgb demo: pretrained EfficientNet-Lite0, TSGB at alpha={alpha:g}; {view}; "
                    "-/+ mass: the map's negative / positive mass",
                ],
                width,
                size=15,
            ),
            text_block(
                [
                    "1. Target selectivity: one input (chelsea | coffee), one map per target. "
                    "%: share of the map's positive mass on the target's photo."
                ],
                width,
                size=14,
            ),
            body1,
            text_block(
                [
                    "2. Single photos, top-1 class. %: share of the map's positive mass inside "
                    "the object's box (box %: the box's share of the image, what an even map "
                    "scores)."
                ],
                width,
                size=14,
            ),
            body2,
        ],
        gap=6,
    )
    out = Path(out)
    write_bytes_atomic(out, compact_png(figure))
    result = DemoResult(out, alpha, tuple(photos), pair, box_share, time.perf_counter() - start)
    if not quiet:
        print(caption(result))
    return result


def caption(result: DemoResult) -> str:
    """The figure's numbers, in words (ASCII)."""
    photos = result.photos
    width = max(len(name) for _, name in METHODS) + 2
    lines = [
        f"tsgb demo: pretrained EfficientNet-Lite0, TSGB alpha={result.alpha:g}",
        "; ".join(f"{p.name}: {p.label} ({p.target}) p={p.p:.2f}" for p in photos),
        f"target selectivity, {' | '.join(p.name for p in photos)} as one input: share of the "
        "map's positive mass on the target's photo",
    ]
    for method, name in METHODS:
        lines.append(
            f"  {name:<{width}}"
            + ", ".join(
                f"{p.label} on {p.name} {_pct(result.on_target(method, t))}"
                for t, p in enumerate(photos)
            )
        )
    lines.append(
        "single photos, top-1 class: share of the map's positive mass in the object's box "
        "(the box covers " + ", ".join(f"{p.name} {_pct(p.box_area)}" for p in photos) + ")"
    )
    for method, name in METHODS:
        lines.append(
            f"  {name:<{width}}"
            + ", ".join(f"{p.name} {_pct(s)}" for p, s in zip(photos, result.box_share[method]))
        )
    lines.append(f"wrote {result.path} ({result.seconds:.1f} s)")
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.out, alpha=args.alpha, colormap=args.colormap)
    return 0


def register(sub) -> None:
    """Add `tsgb demo` to the subparsers `sub`."""
    d = sub.add_parser(
        "demo",
        help="TSGB, Grad-CAM and gradient x input on real photos with EfficientNet-Lite0: "
        "target selectivity and single photos",
    )
    d.add_argument("--out", default="demo.png", help="PNG to write (default demo.png)")
    d.add_argument(
        "--alpha", type=float, default=None, help="TSGB-FC scale coefficient (default: tsgb's)"
    )
    d.add_argument(
        "--colormap",
        choices=COLORMAPS,
        default="positive",
        help="positive: negative values truncated (default); diverging: blue-white-red",
    )
    d.set_defaults(func=cmd_demo)

"""Every registered method on real photos: class sensitivity, a figure, and speed.

    python tools/methods_report.py [--methods all|a,b,...] [--figure docs/methods.png]
                                   [--speed] [--batch 8] [--repeats 2]

Pretrained EfficientNet-Lite0 on chelsea (cat, left) | coffee (cup, right) at 224x448.
For each method the maps for "Egyptian cat" (285) and "espresso" (967) are computed in one
batch; the table gives the share of positive mass on each half and the Spearman rank
correlation between the two maps (paper 003's class-sensitivity metric: lower = the map
depends more on the class). The figure shows both maps per method. `--speed` adds images/s
per method at a batch of 224x224 images and the ratio to plain ONNX Runtime inference,
all timed in the same rounds (`bench.interleaved_medians`: median of `--repeats` rounds, each
function run twice per round and the second run timed).
The figure shows each map's positive part scaled to its 99.5th percentile (display only).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from bench import interleaved_medians  # noqa: E402

from tsgb_onnx import Explainer, available_methods  # noqa: E402
from tsgb_onnx.evaluation.metrics import spearman  # noqa: E402
from tsgb_onnx.io.photos import (  # noqa: E402
    CAT,
    ESPRESSO,
    LITE0_PREP,
    fit_image,
    half_shares,
    lite0_onnx,
    photo,
    to_tensor,
    two_photo_input,
)
from tsgb_onnx.io.render import heatmap, save_png  # noqa: E402

# methods whose map is not the plain rule-set product (options chosen for the figure/table)
OPTIONS = {
    "smoothgrad": {"n": 16},
    "integrated_gradients": {"steps": 16},
    "meta_saliency": {"base": "gradient"},
}


def _label(rgb: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.pad(rgb, ((18, 0), (0, 0), (0, 0)), constant_values=255))
    ImageDraw.Draw(im).text((4, 3), text, fill=(0, 0, 0))
    return np.asarray(im)


def _panel(saliency: np.ndarray, height: int) -> np.ndarray:
    """Heat map of the positive part, scaled to its 99.5th percentile so that pixel-sharp
    maps stay visible (display only; the table uses the raw maps)."""
    from PIL import Image

    positive = np.maximum(saliency, 0)
    top = np.percentile(positive[positive > 0], 99.5) if (positive > 0).any() else 1.0
    rgb = heatmap(np.minimum(positive, top))
    width = round(rgb.shape[1] * height / rgb.shape[0])
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def _grid(cells: list[np.ndarray], columns: int) -> np.ndarray:
    h, w = cells[0].shape[:2]
    cells = cells + [np.full_like(cells[0], 255)] * (-len(cells) % columns)
    gap_v = np.full((h, 12, 3), 255, np.uint8)
    rows = []
    for i in range(0, len(cells), columns):
        parts = [c for cell in cells[i : i + columns] for c in (cell, gap_v)][:-1]
        row = np.concatenate(parts, 1)
        rows += [row, np.full((6,) + row.shape[1:], 255, np.uint8)]
    return np.concatenate(rows[:-1], 0)


def class_sensitivity(methods, figure: str | None, columns: int = 2, height: int = 112) -> None:
    rgb, x = two_photo_input()
    model = lite0_onnx(size=(224, 448))
    print(
        "| method | cat map: share on cat half | cup map: share on cup half "
        "| Spearman(cat map, cup map) |"
    )
    print("|---|---|---|---|")
    from PIL import Image

    small = np.asarray(Image.fromarray(rgb).resize((2 * height, height), Image.BILINEAR))
    gap = np.full((height, 4, 3), 255, np.uint8)
    cells = [
        _label(
            np.concatenate([small, gap, small], 1),
            "input; left: map for Egyptian cat, right: for espresso",
        )
    ]
    for method in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = Explainer(model, method=method, **OPTIONS.get(method, {})).explain(
                np.concatenate([x, x]), target=[CAT, ESPRESSO]
            )
        cat_map, cup_map = result.saliency
        rho = spearman(cat_map, cup_map)
        cat_left, _ = half_shares(cat_map)
        _, cup_right = half_shares(cup_map)
        print(f"| {method} | {cat_left:.1%} | {cup_right:.1%} | {rho:+.3f} |", flush=True)
        cells.append(
            _label(
                np.concatenate([_panel(cat_map, height), gap, _panel(cup_map, height)], 1),
                f"{method}  (Spearman {rho:+.2f})",
            )
        )
    if figure:
        save_png(_grid(cells, columns), figure)
        print(f"\nwrote {figure}")


def speed(methods, batch: int, repeats: int) -> None:
    model = lite0_onnx()
    images = [fit_image(photo(name), LITE0_PREP) for name in ("chelsea", "coffee")]
    x = np.concatenate([to_tensor(images[i % 2], LITE0_PREP) for i in range(batch)])
    base = Explainer(model, method="gradient")
    explainers = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in methods:
            explainers[method] = Explainer(model, method=method, **OPTIONS.get(method, {}))
        fns = {"inference": lambda: base.infer(x)}
        fns.update({m: (lambda e=e: e.explain(x)) for m, e in explainers.items()})
        times = interleaved_medians(fns, repeats)
    infer = times["inference"]
    print(
        f"\nEfficientNet-Lite0 224x224, batch {batch}, {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}); inference {batch / infer:.1f} images/s\n"
    )
    print("| method | images/s | time / inference |")
    print("|---|---|---|")
    for method in methods:
        t = times[method]
        print(f"| {method} | {batch / t:.1f} | {t / infer:.1f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="all")
    parser.add_argument("--figure", default=None, help="write the maps as one PNG")
    parser.add_argument("--speed", action="store_true", help="also time every method")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    methods = available_methods() if args.methods == "all" else args.methods.split(",")
    class_sensitivity(methods, args.figure)
    if args.speed:
        speed(methods, args.batch, args.repeats)


if __name__ == "__main__":
    main()

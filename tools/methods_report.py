"""Every registered method on real photos: class sensitivity, a figure, and speed.

    python tools/methods_report.py [--methods all|a,b,...] [--figure docs/methods.png]
                                   [--speed] [--batch 8] [--repeats 2]

Pretrained EfficientNet-Lite0 on chelsea (cat, left) | coffee (cup, right) at 224x448.
For each method the maps for "Egyptian cat" (285) and "espresso" (967) are computed in one
batch; the table gives the share of positive mass on each half and the Spearman rank
correlation between the two maps (paper 003's class-sensitivity metric: lower = the map
depends more on the class). The figure shows both maps per method. `--speed` adds images/s
per method at a batch of 224x224 images and the ratio to plain ONNX Runtime inference.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from tsgb_onnx import Explainer, available_methods  # noqa: E402
from tsgb_onnx.demo import (CAT, ESPRESSO, LITE0_PREP, fit_image, half_shares,  # noqa: E402
                            lite0_onnx, photo, to_tensor, two_photo_input)
from tsgb_onnx.metrics import spearman  # noqa: E402
from tsgb_onnx.render import heatmap, save_png  # noqa: E402

# methods whose map is not the plain rule-set product (options chosen for the figure/table)
OPTIONS = {"smoothgrad": {"n": 16}, "integrated_gradients": {"steps": 16},
           "meta_saliency": {"base": "gradient"}}


def _label(rgb: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.pad(rgb, ((18, 0), (0, 0), (0, 0)), constant_values=255))
    ImageDraw.Draw(im).text((4, 3), text, fill=(0, 0, 0))
    return np.asarray(im)


def class_sensitivity(methods, figure: str | None) -> None:
    rgb, x = two_photo_input()
    model = lite0_onnx(size=(224, 448))
    print("| method | cat map: share on cat half | cup map: share on cup half "
          "| Spearman(cat map, cup map) |")
    print("|---|---|---|---|")
    rows = [_label(np.concatenate([rgb, np.full_like(rgb[:, :8], 255), rgb], 1),
                   "input: targets Egyptian cat (left panel), espresso (right panel)")]
    for method in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = Explainer(model, method=method, **OPTIONS.get(method, {})).explain(
                np.concatenate([x, x]), target=[CAT, ESPRESSO])
        cat_map, cup_map = result.saliency
        rho = spearman(cat_map, cup_map)
        cat_left, _ = half_shares(cat_map)
        _, cup_right = half_shares(cup_map)
        print(f"| {method} | {cat_left:.1%} | {cup_right:.1%} | {rho:+.3f} |", flush=True)
        panels = [heatmap(m, rgb) for m in (cat_map, cup_map)]
        rows.append(_label(np.concatenate([panels[0], np.full_like(rgb[:, :8], 255), panels[1]], 1),
                           f"{method}  (Spearman {rho:+.2f})"))
    if figure:
        gap = np.full((4,) + rows[0].shape[1:], 255, np.uint8)
        save_png(np.concatenate([r for row in rows for r in (row, gap)][:-1]), figure)
        print(f"\nwrote {figure}")


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def speed(methods, batch: int, repeats: int) -> None:
    model = lite0_onnx()
    images = [fit_image(photo(name), LITE0_PREP) for name in ("chelsea", "coffee")]
    x = np.concatenate([to_tensor(images[i % 2], LITE0_PREP) for i in range(batch)])
    base = Explainer(model, method="gradient")
    infer = _median(lambda: base.infer(x), repeats)
    print(f"\nEfficientNet-Lite0 224x224, batch {batch}, {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}); inference {batch / infer:.1f} images/s\n")
    print("| method | images/s | time / inference |")
    print("|---|---|---|")
    for method in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex = Explainer(model, method=method, **OPTIONS.get(method, {}))
            t = _median(lambda: ex.explain(x), repeats)
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

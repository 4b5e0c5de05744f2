"""Target selectivity on a real photo pair: share of positive saliency mass per half.

    python tools/selectivity.py [--methods tsgb,gradient] [--figure selectivity.png]

chelsea (cat, left) | coffee (cup, right), pretrained EfficientNet-Lite0 at 224x448,
targets "Egyptian cat" (285) and "espresso" (967). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from tsgb_onnx import Explainer
from tsgb_onnx.io.photos import CAT, ESPRESSO, half_shares, lite0_onnx, two_photo_input
from tsgb_onnx.io.render import heatmap, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="tsgb,gradient")
    parser.add_argument("--figure", default=None, help="also write the maps as one PNG")
    args = parser.parse_args()
    rgb, x = two_photo_input()
    rows = [rgb]
    model = lite0_onnx(size=(224, 448))
    print("| method | target | share on cat half | share on cup half |")
    print("|---|---|---|---|")
    for method in args.methods.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = Explainer(model, method=method).explain(
                np.concatenate([x, x]), target=[CAT, ESPRESSO]
            )
        for row, label in enumerate(("cat (285)", "espresso (967)")):
            left, right = half_shares(result.saliency[row])
            print(f"| {method} | {label} | {left:.1%} | {right:.1%} |")
            rows.append(heatmap(result.saliency[row], rgb))
    if args.figure:
        gap = np.full((4,) + rgb.shape[1:], 255, np.uint8)
        save_png(np.concatenate([r for row in rows for r in (row, gap)][:-1]), args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()

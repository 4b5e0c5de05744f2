"""Target selectivity on a real photo pair: share of positive saliency mass per half.

    python tools/selectivity.py [--methods tsgb,gradient] [--alpha 1.0]

chelsea (cat, left) | coffee (cup, right), pretrained EfficientNet-Lite0 at 224x448,
targets "Egyptian cat" (285) and "espresso" (967). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from tsgb_onnx import Explainer
from tsgb_onnx.demo import CAT, ESPRESSO, half_shares, lite0_onnx, two_photo_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="tsgb,gradient")
    args = parser.parse_args()
    _, x = two_photo_input()
    model = lite0_onnx(size=(224, 448))
    print("| method | target | share on cat half | share on cup half |")
    print("|---|---|---|---|")
    for method in args.methods.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = Explainer(model, method=method).explain(np.concatenate([x, x]),
                                                             target=[CAT, ESPRESSO])
        for row, label in enumerate(("cat (285)", "espresso (967)")):
            left, right = half_shares(result.saliency[row])
            print(f"| {method} | {label} | {left:.1%} | {right:.1%} |")


if __name__ == "__main__":
    main()

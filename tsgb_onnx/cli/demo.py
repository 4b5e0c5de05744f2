"""`tsgb demo`: TSGB vs the exact gradient on a real photo with pretrained EfficientNet-Lite0."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from tsgb_onnx.explainer import Explainer
from tsgb_onnx.io.atomic import write_bytes_atomic
from tsgb_onnx.io.photos import LITE0_PREP, lite0_onnx, photo
from tsgb_onnx.io.preprocess import fit_image, to_tensor
from tsgb_onnx.io.render import heatmap, png_bytes


def _label(rgb: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.pad(rgb, ((22, 0), (0, 0), (0, 0)), constant_values=255))
    ImageDraw.Draw(im).text((4, 5), text, fill=(0, 0, 0))
    return np.asarray(im)


def run_demo(
    out: str | os.PathLike = "tsgb_demo.png", alpha: float | None = None, image: str = "chelsea"
) -> Path:
    """Write a PNG: the photo, its TSGB map and its exact-gradient map side by side."""
    model = lite0_onnx()
    rgb = fit_image(photo(image), LITE0_PREP)
    x = to_tensor(rgb, LITE0_PREP)
    options = {} if alpha is None else {"alpha": alpha}  # None: the method's default
    tsgb_explainer = Explainer(model, method="tsgb", **options)
    alpha = tsgb_explainer.options["alpha"]
    tsgb = tsgb_explainer.explain(x)
    grad = Explainer(model, method="gradient").explain(x, target=tsgb.target)
    target = int(tsgb.target[0])
    probs = np.exp(tsgb.logits[0] - tsgb.logits[0].max())
    probs /= probs.sum()
    panels = [
        _label(rgb, f"{image}: class {target} p={probs[target]:.2f}"),
        _label(heatmap(tsgb.saliency[0]), f"TSGB (alpha={alpha:g})"),
        _label(heatmap(grad.saliency[0]), "exact gradient x input"),
    ]
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    strip = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    out = Path(out)
    write_bytes_atomic(out, png_bytes(strip))
    print(f"{image}: class {target} (p={probs[target]:.2f}); wrote {out}")
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.out, alpha=args.alpha)
    return 0


def register(sub) -> None:
    """Add `tsgb demo` to the subparsers `sub`."""
    d = sub.add_parser("demo", help="TSGB vs gradient on a real photo with EfficientNet-Lite0")
    d.add_argument("--out", default="tsgb_demo.png", help="PNG to write")
    d.add_argument(
        "--alpha", type=float, default=None, help="TSGB-FC scale coefficient (default: tsgb's)"
    )
    d.set_defaults(func=cmd_demo)

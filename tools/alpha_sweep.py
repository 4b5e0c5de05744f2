"""TSGB's scale coefficient α (eq. 2) measured: one table row per α, one table per data set.

    python tools/alpha_sweep.py [--scenes 150] [--seed 7] [--alphas 0.5,0.6,...,1.3]
                                [--no-photos] [--json out.json]

Data: the bundled ground-truth scenes (`synthetic:SCENES:SEED`, held out from training) with
both trained nets (tsgb_onnx/data/synthetic_{vgg,resnet}.onnx), and the hand-boxed
scikit-image photos with pretrained EfficientNet-Lite0 (224×224). Every annotated object is
explained with its own class as the target (`tsgb_onnx.evaluation.evaluate`, see
docs/evaluation.md). Columns:

* pointing game ↑, deletion AUC ↓, insertion AUC ↑, class sensitivity ↓ — as
  `tsgb evaluate` computes them (softmax score of the target for deletion / insertion);
* box share ↑ — share of the map's positive mass inside the object's box(es), mean;
* object half, image / mirror ↑ and flip gap ↓ — share of positive mass in the half of the
  image that holds the object (its box centre), for the image and for its left–right
  mirror (same target, half mirrored), and the mean |image − mirror|
  (tools/flip_consistency.py; a map with no positive mass has share 0);
* neg/pos — median over the maps of negative mass / positive mass;
* empty — maps with no positive mass at all (image and mirror maps counted).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flip_consistency import flip_maps, flip_shares, negative_positive  # noqa: E402

from tsgb_onnx import Explainer  # noqa: E402
from tsgb_onnx.evaluation.datasets import load_dataset  # noqa: E402
from tsgb_onnx.evaluation.evaluate import Settings, evaluate  # noqa: E402

ALPHAS = tuple(round(0.5 + 0.1 * i, 1) for i in range(9))  # 0.5 … 1.3, the paper's sweep
METRICS = ["pointing", "deletion", "insertion", "class_sensitivity"]
COLUMNS = (
    ("pointing", "pointing ↑"),
    ("deletion", "deletion ↓"),
    ("insertion", "insertion ↑"),
    ("class_sensitivity", "class sens. ↓"),
    ("box_share", "box share ↑"),
    ("half", "object half, image / mirror ↑"),
    ("flip_gap", "flip gap ↓"),
    ("neg_pos", "neg/pos"),
    ("empty", "empty"),
)


def box_share(saliency: np.ndarray, boxes) -> float:
    """Share of the positive mass of a [H, W] map inside the union of `boxes`."""
    positive = np.maximum(np.asarray(saliency, dtype=np.float64), 0)
    total = positive.sum()
    if total <= 0 or not boxes:
        return 0.0
    inside = np.zeros(positive.shape, bool)
    for x0, y0, x1, y1 in boxes:
        inside[int(y0) : int(y1), int(x0) : int(x1)] = True
    return float(positive[inside].sum() / total)


def sweep(model: str, data, alphas, batch: int, progress: bool) -> list[dict]:
    """One dict of measurements per α."""
    rows = []
    for alpha in alphas:
        start = time.perf_counter()
        ev = evaluate(
            model,
            data,
            ["tsgb"],
            METRICS,
            options={"tsgb": {"alpha": alpha}},
            settings=Settings(batch_size=batch, progress=progress),
            strict=True,
        )
        result, samples = ev.results[0], ev.samples
        keep = [i for i, b in enumerate(samples.boxes) if b]
        x = ev.dataset.x[samples.image[keep]]
        targets, boxes = samples.target[keep], [samples.boxes[i] for i in keep]
        explainer = Explainer(model, method="tsgb", alpha=alpha)
        maps, mirror = flip_maps(explainer, x, targets, -1, batch)
        image_half, mirror_half = flip_shares(maps, mirror, boxes, -1)
        row = {k: float(result.values[k]) for k in METRICS}
        row.update(
            alpha=alpha,
            samples=len(samples.target),
            box_share=float(np.mean([box_share(m, b) for m, b in zip(result.maps[keep], boxes)])),
            half=(float(image_half.mean()), float(mirror_half.mean())),
            flip_gap=float(np.abs(image_half - mirror_half).mean()),
            neg_pos=float(np.median([negative_positive(m) for m in result.maps])),
            empty=int(sum(np.maximum(m, 0).sum() <= 0 for m in np.concatenate([maps, mirror]))),
            seconds=time.perf_counter() - start,
        )
        rows.append(row)
        print(f"  α={alpha:g}: {row['seconds']:.0f} s", file=sys.stderr, flush=True)
    return rows


def _cell(key: str, value) -> str:
    if key == "half":
        return f"{value[0]:.2f} / {value[1]:.2f}"
    if key == "empty":
        return str(value)
    return f"{value:.3f}" if key in METRICS else f"{value:.2f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| α | " + " | ".join(h for _, h in COLUMNS) + " |",
        "|---:|" + "---:|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [_cell(k, row[k]) for k, _ in COLUMNS]
        lines.append(f"| {row['alpha']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=150, help="held-out synthetic scenes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS))
    p.add_argument("--no-photos", action="store_true", help="skip EfficientNet-Lite0 on photos")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", default=None, help="also write every number as JSON")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    data = load_dataset(f"synthetic:{args.scenes}:{args.seed}")
    sets = [
        ("VGG-style (synthetic_vgg.onnx)", str(ROOT / "tsgb_onnx/data/synthetic_vgg.onnx"), data),
        (
            "ResNet-style (synthetic_resnet.onnx)",
            str(ROOT / "tsgb_onnx/data/synthetic_resnet.onnx"),
            data,
        ),
    ]
    if not args.no_photos:
        from tsgb_onnx.io.photos import lite0_onnx

        photos = load_dataset("skimage", size=224)
        title = "EfficientNet-Lite0 (pretrained), scikit-image photos"
        sets.append((title, str(lite0_onnx()), photos))
    start = time.perf_counter()
    payload = {"alphas": alphas, "machine": platform.machine(), "sets": {}}
    for title, model, dataset in sets:
        print(f"{title}:", file=sys.stderr, flush=True)
        rows = sweep(model, dataset, alphas, args.batch, args.progress)
        payload["sets"][title] = rows
        print(f"\n### {title}\n\n{len(dataset)} images, {rows[0]['samples']} objects.\n")
        print(markdown(rows), flush=True)
    print(f"\n(total {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()

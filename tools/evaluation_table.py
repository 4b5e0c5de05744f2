"""Regenerate the evaluation tables of docs/evaluation.md.

    python tools/evaluation_table.py [--scenes 40] [--photos] [--out docs/evaluation.md]

Both synthetic ground-truth nets (tsgb_onnx/data/synthetic_{vgg,resnet}.onnx, trained by
tools/train_synthetic.py) × every registered method × pointing game, localization error,
deletion, insertion, class sensitivity, sanity-check correlation and images/s, on held-out
synthetic scenes (seed 7, never used in training). With --photos, also the pretrained
EfficientNet-Lite0 on the hand-boxed scikit-image photos (pointing game and deletion only:
five objects, indicative). Writes the Markdown page (and, with --json, every number).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsgb_onnx.evaluate import COLUMNS, Settings, evaluate  # noqa: E402
from tsgb_onnx.methods import available_methods  # noqa: E402

DATA = ROOT / "tsgb_onnx" / "data"
NETS = (("VGG-style (synthetic_vgg.onnx)", "synthetic_vgg.onnx"),
        ("ResNet-style (synthetic_resnet.onnx)", "synthetic_resnet.onnx"))


def verdicts(ev, method: str = "tsgb") -> list[str]:
    """One line per metric: where `method` stands among the methods that ran."""
    ok = [r for r in ev.results if r.error is None]
    mine = next((r for r in ok if r.method == method), None)
    if mine is None:
        return [f"* {method} did not run on this net."]
    lines = []
    for key, header, better in COLUMNS:
        vals = [(r.values[key], r.method) for r in ok
                if key in r.values and isinstance(r.values[key], float) and math.isfinite(r.values[key])]
        if key not in mine.values or len(vals) < 2:
            continue
        vals.sort(reverse=(better == "higher"))
        best_value, best = vals[0]
        rank = 1 + sum(1 for v, _ in vals if (v > mine.values[key] if better == "higher"
                                               else v < mine.values[key]))
        name = header.rstrip(" ↑↓")
        ties = sum(1 for v, _ in vals if v == mine.values[key]) - 1
        if rank == 1:
            tied = f", tied with {ties} other method{'s' * (ties > 1)}" if ties else ""
            lines.append(f"* {name}: {method} is best ({mine.values[key]:.3g}{tied}).")
        else:
            lines.append(f"* {name}: {method} is **not** best — rank {rank} of {len(vals)} "
                         f"({mine.values[key]:.3g}; best {best} {best_value:.3g}).")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=40, help="held-out synthetic scenes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--methods", default="all")
    p.add_argument("--photos", action="store_true", help="also Lite0 on the scikit-image photos")
    p.add_argument("--out", default=str(ROOT / "docs" / "evaluation.md"))
    p.add_argument("--json", default=None, help="also write every number (per sample) as JSON")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    methods = available_methods() if args.methods == "all" else args.methods.split(",")
    settings = Settings(progress=not args.quiet, sanity_samples=8, batch_size=32)
    data = f"synthetic:{args.scenes}:{args.seed}"
    sections, payload = [], {"data": data, "methods": methods, "nets": {}}
    for title, file in NETS:
        start = time.perf_counter()
        ev = evaluate(str(DATA / file), data, methods, "all", settings=settings)
        print(f"{file}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        payload["nets"][file] = ev.to_dict()
        thr = {r.method: r.details.get("loc_threshold") for r in ev.results if r.error is None}
        sections.append(
            f"### {title}\n\n{ev.images} scenes, {len(ev.samples.target)} objects explained; "
            f"plain inference {ev.inference_images_per_s:.0f} images/s.\n\n" + ev.markdown()
            + "\nLocalization thresholds chosen on the held-out half: "
            + ", ".join(f"{m} {t:g}" for m, t in thr.items() if t is not None) + ".\n\n"
            + "Where TSGB stands:\n\n" + "\n".join(verdicts(ev)) + "\n")
    if args.photos:
        from tsgb_onnx.demo import lite0_onnx

        ev = evaluate(str(lite0_onnx()), "skimage", methods, ["pointing", "deletion"],
                      settings=Settings(progress=not args.quiet, batch_size=8))
        payload["nets"]["efficientnet_lite0"] = ev.to_dict()
        sections.append(
            "### Pretrained EfficientNet-Lite0 on scikit-image photos\n\n"
            f"{len(ev.samples.target)} hand-boxed objects (cat, cup, rocket, space shuttle model, "
            "helmet); too few for ranking methods, a plausibility check on a real ImageNet net.\n\n"
            + ev.markdown())
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    trained = json.loads((DATA / "synthetic_models.json").read_text())["models"]
    shown = {"vgg": "VGG-style", "resnet": "ResNet-style"}
    models = "; ".join(f"{shown.get(name, name)} {m['epochs']} epochs, {100 * m['label_accuracy']:.1f}% of "
                       f"the present/absent decisions right, {100 * m['scene_accuracy']:.1f}% of "
                       "the scenes entirely right" for name, m in
                       sorted(trained.items(), key=lambda kv: kv[0] != "vgg"))
    text = TEMPLATE.format(data=data, cpu=cpu, methods=", ".join(methods),
                           tables="\n".join(sections), models=models)
    out = Path(args.out)
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


TEMPLATE = """# Evaluation: metrics, ground-truth benchmark, deployment validation

## Results on the ground-truth benchmark

Regenerate with `python tools/evaluation_table.py` (add `--photos` for the Lite0 table);
data: `{data}` (held-out scenes, never seen in training); methods: {methods}; CPU run
({cpu}, ONNX Runtime CPU, batch 32 for images/s, which is shared-machine wall time and
only comparable within one table). ↑ higher is better, ↓ lower is better; bold: best.
Deletion/insertion use the softmax score of the target over the five classes.

{tables}
How to read the sanity and class-sensitivity columns: they are Spearman correlations, so
values near 0 (or below) mean the map changed when the weights (or the class) changed —
that is what a faithful method should do. Gradient × input keeps some correlation after
randomization on textured images because the input factor stays; the pointing game on these
scenes is easy at the scaled 15-px tolerance (4.3 px at 64 px), so several methods tie.

## The benchmark

`tsgb_onnx.scenes` draws 64×64 scenes: two or three objects of different classes (disc,
square, triangle, cross, ring; each class has its own colour family, jittered) on a texture
of random sinusoidal stripes and noise, with each object's visible mask and box. The task
is **multi-label** (which classes are present); `tools/train_synthetic.py` trains, on CPU
with fixed seeds, a VGG-style net (5 conv, 3 max-pool, 2 FC) and a ResNet-style net (BN,
three residual stages, global average pooling) with BCE loss on 3000 new scenes per epoch,
and exports both with `tsgb_onnx.export.from_torch` to `tsgb_onnx/data/` (under 1 MB each;
details in `tsgb_onnx/data/synthetic_models.json`). On 500 test scenes: {models}. Every object of a scene is explained with its own
class as the target, so each scene gives two or three (image, target, box, mask) samples.

Real photos: `tsgb_onnx/data/skimage_photos.json` holds hand-drawn boxes for
`skimage.data` photos (cat in `chelsea`, cup in `coffee`, the rocket in `rocket`, the space
shuttle model and the helmet in `astronaut`) with the ImageNet classes that count for each
object (cat 281–285; cup 968, espresso 967, coffee mug 504; missile 657, projectile 744,
space shuttle 812; crash helmet 518, football helmet 560). The target of an object is its
class the model scores highest. ImageNet has no class for a face, so the astronaut's face
is not annotated.

## Metrics (`tsgb_onnx.metrics`)

* **Deletion / insertion** (RISE; `perturbation`): pixels ordered by saliency (descending,
  ties in raster order); each step changes `step` = 1% of the pixels (rounded up); deletion
  replaces them with the substrate, insertion reveals them on it. The substrate is a
  Gaussian blur of the image (σ = 5, 11×11 kernel, reflect padding) unless a number or
  array is given. Score: softmax probability of the target (or `score="sigmoid"`). AUC:
  trapezoid rule over the fraction of pixels changed, 0 to 1. All steps of a group of
  images go through the model in batches of `predict_batch` (256).
* **Pointing game**: hit when the map's arg-max lies within `tolerance` pixels of the
  object's box or mask (Euclidean distance to the nearest pixel of either). Default
  tolerance: TorchRay's 15 px at 224 px, scaled to the map size (4.3 px at 64 px). A
  constant or non-finite map is a miss. Reported: mean over classes of each class's hit rate.
* **Localization error**: the map's negative values are set to 0, the map is thresholded at
  a fraction t of its maximum, and the box is that of the **largest 8-connected component**
  (`component="largest"`, default) or of all pixels above t (`component="all"`). Correct
  when IoU ≥ 0.5 with any ground-truth box of the target's class. t is searched on a
  grid 0.05…0.95 on a held-out half of the images (seeded, split by image), and the error
  is reported on the other half. The ground-truth class is explained (GT-known error;
  the ILSVRC top-5 protocol also requires the classification to be right).
* **Sanity checks** (Adebayo et al.): the initializers (weights and biases) of the
  Conv/Gemm/MatMul nodes are replaced by Gaussian noise of the same standard deviation,
  layer by layer from the output: *cascading* (top k layers, k = 1…L) and *independent*
  (one layer at a time). Each randomized model is re-explained for the same targets and
  compared with the original map by the Spearman rank correlation of the absolute maps.
  Table: `sanity cascading` = mean at full randomization (k = L); `sanity independent` =
  mean over layers. The JSON holds the per-layer curves.
* **Class sensitivity**: Spearman correlation between the maps of the most and the least
  likely class of each image (signed maps).
* **Spearman** is computed in NumPy with average ranks for ties; a constant map has no
  ranking and correlates 0 with anything.
* **images/s**: explained objects per second over the whole set (batch 32), after one
  warm-up call that builds the session; plain inference images/s is printed with it.

## `tsgb evaluate`

```bash
tsgb evaluate MODEL.onnx DATA [--methods tsgb,gradient,...] [--metrics pointing,deletion,...] \\
    [--out results.json] [--markdown results.md] [--opt tsgb.alpha=0.8] [--score sigmoid] \\
    [--tolerance PX] [--component largest|all] [--step 0.01] [--batch-size 32] [--quiet]
```

`DATA` is a manifest (`.json` / `.toml`), a folder with `labels.json`, `labels.toml` or
`labels.csv`, `synthetic[:COUNT[:SEED]]` or `skimage`. `--methods` defaults to every
registered method; a method that cannot explain the model is listed under the table with
its error (nothing is skipped silently). Metrics: `pointing`, `localization`, `deletion`,
`insertion`, `class_sensitivity`, `sanity` (default: all).

Manifest format (JSON shown; TOML has the same keys):

```json
{{
  "preprocess": {{"size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "crop": false}},
  "labels": {{"cat": [281, 282, 283, 284, 285]}},
  "images": [
    {{"file": "cat.jpg", "objects": [{{"label": "cat", "box": [10, 0, 410, 300],
                                     "mask": "cat_mask.png"}}]}},
    {{"skimage": "coffee", "objects": [{{"label": "cup", "classes": [967, 968, 504]}}]}}
  ]
}}
```

Boxes are `[x0, y0, x1, y1]` in pixels of the original image, end-exclusive; masks are
image files (non-zero = object). Both go through the same resize/crop as the image
(`crop: false` resizes the whole image; `true` resizes the short side to size × 256/224
and centre-crops). An object's classes come from `classes`, `class`, or `labels[label]`.
`labels.csv`: header `file,label,classes,x0,y0,x1,y1`, classes as `281|282`, box optional.

## `tsgb validate`: deployment validation

```toml
[model]
path = "model.onnx"            # relative to this file
# output = "logits"            # when the model has several outputs

[data]
path = "val/labels.json"       # manifest, folder, "synthetic[:N[:SEED]]" or "skimage"

[evaluation]
methods = ["tsgb", "gradient"]
metrics = ["pointing", "deletion", "sanity"]   # default: those the thresholds need
# batch_size = 32, predict_batch = 256, step = 0.01, score = "softmax",
# tolerance = 15.0, component = "largest", sanity_samples = 8, seed = 0, backend = "auto"

[options.tsgb]                 # method options
alpha = 1.0

[thresholds]                   # for every method
pointing = {{ min = 0.8 }}
sanity_cascading = {{ max = 0.5 }}
deletion = 0.2                 # a bare number: min for ↑ metrics, max for ↓ ones
[thresholds.gradient]          # per-method overrides
pointing = {{ min = 0.6 }}

[output]
dir = "validation"             # report.json, junit.xml, report.html (relative to this file)
worst = 4                      # worst cases per method shown in the HTML page
```

Threshold keys: `pointing`, `loc_error`, `deletion`, `insertion`, `class_sensitivity`,
`sanity_cascading`, `sanity_independent`, `images_per_s`, `nan_maps`. `nan_maps ≤ 0` (no
map holds NaN/Inf) is always checked. Outputs: `report.json` (checks + full evaluation),
`junit.xml` (one `<testcase>` per method × threshold named `METHOD.METRIC`; a failing one
has a `<failure>` whose message gives the measured value and the threshold), and
`report.html` (checks, table, and the worst cases per method — pointing misses first, then
the highest deletion AUC — as the image and the heat map with the ground-truth boxes,
PNGs embedded as base64).

Exit codes: **0** every check passed, **1** a check failed, **2** could not run (missing
file, malformed TOML, unknown key/metric/method, a method that cannot explain the model);
the reason is one line `tsgb: error: …` on stderr. From Python:
`tsgb_onnx.validate.validate("config.toml" or dict, out_dir=None)` returns a
`ValidationReport` (`.passed`, `.exit_code`, `.checks`, `.evaluation`) and raises a
`TsgbError` when it cannot run.
"""


if __name__ == "__main__":
    main()

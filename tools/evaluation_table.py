"""Regenerate the evaluation section of docs/benchmarks.md.

    python tools/evaluation_table.py [--scenes 40] [--photos] [--out docs/benchmarks.md]

Both synthetic ground-truth nets (tsgb_onnx/data/synthetic_{vgg,resnet}.onnx, trained by
tools/train_synthetic.py) × every registered method × pointing game, localization error,
deletion, insertion, class sensitivity, sanity-check correlation and images/s, on held-out
synthetic scenes (seed 7, never used in training). With --photos, also the pretrained
EfficientNet-Lite0 on the hand-boxed scikit-image photos (pointing game and deletion only:
five objects, indicative). Replaces the section between the evaluation-table markers
of the page (and, with --json, writes every number).
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

from tsgb_onnx.evaluation.evaluate import COLUMNS, Settings, evaluate  # noqa: E402
from tsgb_onnx.methods.table import available_methods  # noqa: E402

DATA = ROOT / "tsgb_onnx" / "data"
NETS = (
    ("VGG-style (synthetic_vgg.onnx)", "synthetic_vgg.onnx"),
    ("ResNet-style (synthetic_resnet.onnx)", "synthetic_resnet.onnx"),
)


def verdicts(ev, method: str = "tsgb") -> list[str]:
    """One line per metric: where `method` stands among the methods that ran."""
    ok = [r for r in ev.results if r.error is None]
    mine = next((r for r in ok if r.method == method), None)
    if mine is None:
        return [f"* {method} did not run on this net."]
    lines = []
    for key, header, better in COLUMNS:
        vals = [
            (r.values[key], r.method)
            for r in ok
            if key in r.values and isinstance(r.values[key], float) and math.isfinite(r.values[key])
        ]
        if key not in mine.values or len(vals) < 2:
            continue
        vals.sort(reverse=(better == "higher"))
        best_value, best = vals[0]
        rank = 1 + sum(
            1
            for v, _ in vals
            if (v > mine.values[key] if better == "higher" else v < mine.values[key])
        )
        name = header.rstrip(" ↑↓")
        ties = sum(1 for v, _ in vals if v == mine.values[key]) - 1
        if rank == 1:
            tied = f", tied with {ties} other method{'s' * (ties > 1)}" if ties else ""
            lines.append(f"* {name}: {method} is best ({mine.values[key]:.3g}{tied}).")
        else:
            lines.append(
                f"* {name}: {method} is **not** best — rank {rank} of {len(vals)} "
                f"({mine.values[key]:.3g}; best {best} {best_value:.3g})."
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=40, help="held-out synthetic scenes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--methods", default="all")
    p.add_argument("--photos", action="store_true", help="also Lite0 on the scikit-image photos")
    p.add_argument(
        "--out",
        default=str(ROOT / "docs" / "benchmarks.md"),
        help="page whose marked section is replaced (appended when unmarked)",
    )
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
            f"plain inference {ev.inference_images_per_s:.0f} images/s.\n\n"
            + ev.markdown()
            + "\nLocalization thresholds chosen on the held-out half: "
            + ", ".join(f"{m} {t:g}" for m, t in thr.items() if t is not None)
            + ".\n\n"
            + "Where TSGB stands:\n\n"
            + "\n".join(verdicts(ev))
            + "\n"
        )
    if args.photos:
        from tsgb_onnx.io.photos import lite0_onnx

        ev = evaluate(
            str(lite0_onnx()),
            "skimage",
            methods,
            ["pointing", "deletion"],
            settings=Settings(progress=not args.quiet, batch_size=8),
        )
        payload["nets"]["efficientnet_lite0"] = ev.to_dict()
        sections.append(
            "### Pretrained EfficientNet-Lite0 on scikit-image photos\n\n"
            f"{len(ev.samples.target)} hand-boxed objects (cat, cup, rocket, space shuttle model, "
            "helmet); too few for ranking methods, a plausibility check on a real ImageNet net.\n\n"
            + ev.markdown()
        )
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    trained = json.loads((DATA / "synthetic_models.json").read_text())["models"]
    shown = {"vgg": "VGG-style", "resnet": "ResNet-style"}
    models = "; ".join(
        f"{shown.get(name, name)} {m['epochs']} epochs, {100 * m['label_accuracy']:.1f}% of "
        f"the present/absent decisions right, {100 * m['scene_accuracy']:.1f}% of "
        "the scenes entirely right"
        for name, m in sorted(trained.items(), key=lambda kv: kv[0] != "vgg")
    )
    text = TEMPLATE.format(
        begin=BEGIN,
        end=END,
        data=data,
        cpu=cpu,
        methods=", ".join(methods),
        tables="\n".join(sections),
        models=models,
    )
    out = Path(args.out)
    write_section(out, text)
    print(f"wrote {out}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


BEGIN, END = "<!-- evaluation-table: begin -->", "<!-- evaluation-table: end -->"

TEMPLATE = """{begin}
## Saliency metrics on the ground-truth benchmark

`python tools/evaluation_table.py --photos` regenerates this section (metric definitions and
the benchmark: [evaluation.md](evaluation.md)). Data: `{data}` (held-out scenes, never seen in
training; the nets: {models}). Methods: {methods}. CPU run ({cpu}, ONNX Runtime CPU, batch 32
for images/s: wall time on a shared 2-core VM; on these 64×64 nets one method's images/s has
moved by up to 3× between two runs, so read it as an order of magnitude). ↑ higher is better,
↓ lower is better;
bold: best. Deletion/insertion use the softmax score of the target over the five classes.

{tables}
How to read the sanity and class-sensitivity columns: they are Spearman correlations, so
values near 0 (or below) mean the map changed when the weights (or the class) changed —
that is what a faithful method should do. Gradient × input keeps some correlation after
randomization on textured images because the input factor stays; the pointing game on these
scenes is easy at the scaled 15-px tolerance (4.3 px at 64 px), so several methods tie.
{end}"""


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of `path` (append it when the markers are missing)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()

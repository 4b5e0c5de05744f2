"""Flip consistency of saliency maps, and the measurements behind TSGB's positional bias on
pretrained EfficientNet-Lite0 (issue 22; docs/tsgb_bias.md).

    python tools/flip_consistency.py [--alphas 1.0,0.7] [--evidence] [--json out.json]

Table: for every hand-boxed object of the scikit-image photos
(tsgb_onnx/data/skimage_photos.json), pretrained EfficientNet-Lite0 at 224×224, the share of
the map's positive mass in the half of the image that holds the object (the half holding
the centre of its box), for the image and for its mirror image (same target; the object's
half mirrored with it). A map that follows the image gives the same share twice;
gap = |image − mirror|. A map with no positive mass has share 0. Left–right and up–down
flips; tsgb at each α of --alphas (default: 1.0 and the registered default), gradcam and
input_x_gradient with their defaults.

--evidence adds, for docs/tsgb_bias.md:
  0. how far Lite0's own activations are from mirror-equivariant (225×225, exact mirrors);
  1. where the asymmetry appears: the flip gap of TSGB's map at several layers of Lite0
     (`explain(x, layer=...)`), for α = 1, α = 0.8 and the W+ part alone (α = 0), with
     Lite0's TF-"SAME" one-sided pads (224×224) and with the same weights and export at
     225×225, where every TF-"SAME" pad is symmetric and every stride-2 window is centred;
  2. what cancels at α = 1: the map split into the W+ part (α = 0) and the E·W− part
     (α = 0 minus α = 1), each split into its mirror-symmetric part (follows the content)
     and its mirror-antisymmetric part (locked to the frame), at 225×225 where the mirror
     of every layer is exact;
  3. how much relevance reaches the input: Σ signal·activation absorbed by ReLU6 (Clip
     saturation) and by depthwise convs (windows of zeros under a non-zero BN bias), per
     part, as a share of what enters the network;
  4. other nets: the flip gap on the trained synthetic nets, on the reference nets of
     tests/nets.py (random weights), and on Lite0 at 224 and 225;
  5. an experiment, not a shipped method: eq. 6 applied to ReLU6 (G[X] = G[Y]·Y⊘X, which
     conserves relevance where the exact gradient drops it at saturation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tsgb_onnx import Explainer  # noqa: E402
from tsgb_onnx.evaluation.datasets import load_dataset  # noqa: E402
from tsgb_onnx.evaluation.evaluate import make_samples  # noqa: E402
from tsgb_onnx.methods.table import get_method  # noqa: E402

AXES = {"left–right": -1, "up–down": -2}
BASELINES = ("gradcam", "input_x_gradient")
# Lite0 tensors (TorchScript export names), input to head, for the per-layer maps
LITE0_LAYERS = (
    ("input", None),
    ("stem (1/2)", "/act/Clip_output_0"),
    ("block 1 (1/4)", "/_blocks.1/_project_conv/Conv_output_0"),
    ("block 4 (1/8)", "/_blocks.4/Add_output_0"),
    ("block 10 (1/16)", "/_blocks.10/Add_output_0"),
    ("block 14 (1/32)", "/_blocks.14/Add_output_0"),
    ("head (1/32)", "/act_1/Clip_output_0"),
)


# --------------------------------------------------------------------------- flip shares
def default_alpha() -> float:
    return float(get_method("tsgb").defaults["alpha"])


def union_box(boxes) -> tuple[float, float, float, float]:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def mirror_boxes(boxes, size: int, axis: int) -> list:
    """Boxes (x0, y0, x1, y1, end-exclusive) of the image mirrored along `axis` (-1: x)."""
    if axis == -1:
        return [(size - b[2], b[1], size - b[0], b[3]) for b in boxes]
    return [(b[0], size - b[3], b[2], size - b[1]) for b in boxes]


def half_share(saliency: np.ndarray, first_half: bool, axis: int) -> float:
    """Share of the positive mass of a [H, W] map in its first (left / top) or second half
    along `axis`; an odd middle line belongs to neither. 0 when nothing is positive."""
    positive = np.maximum(np.asarray(saliency, dtype=np.float64), 0)
    total = positive.sum()
    if total <= 0:
        return 0.0
    n = positive.shape[axis]
    half = slice(0, n // 2) if first_half else slice(n - n // 2, n)
    part = positive[:, half] if axis == -1 else positive[half, :]
    return float(part.sum() / total)


def object_half_share(saliency: np.ndarray, boxes, axis: int) -> float:
    """Share of positive mass in the half (along `axis`) that holds the centre of the
    union of `boxes`."""
    x0, y0, x1, y1 = union_box(boxes)
    centre = (x0 + x1) / 2 if axis == -1 else (y0 + y1) / 2
    return half_share(saliency, centre < saliency.shape[axis] / 2, axis)


def negative_positive(saliency: np.ndarray) -> float:
    """Negative mass / positive mass of a map (inf when nothing is positive)."""
    m = np.asarray(saliency, dtype=np.float64)
    positive = np.maximum(m, 0).sum()
    return float(-np.minimum(m, 0).sum() / positive) if positive > 0 else float("inf")


def flip_maps(explainer, x, targets, axis: int, batch: int = 32):
    """(maps of x, maps of x mirrored along `axis`), same targets, batches of `batch`."""
    mirrored = np.ascontiguousarray(np.flip(x, axis))
    out = []
    for images in (x, mirrored):
        maps = [
            explainer.explain(images[i : i + batch], target=targets[i : i + batch]).saliency
            for i in range(0, len(images), batch)
        ]
        out.append(np.concatenate(maps))
    return out


def flip_shares(maps, mirror_maps, boxes, axis: int):
    """Object-half shares of the image's maps and of the mirror's maps (boxes mirrored)."""
    size = maps.shape[axis]
    image = np.array([object_half_share(m, b, axis) for m, b in zip(maps, boxes)])
    mirror = np.array(
        [
            object_half_share(m, mirror_boxes(b, size, axis), axis)
            for m, b in zip(mirror_maps, boxes)
        ]
    )
    return image, mirror


# --------------------------------------------------------------------------- data
def photo_samples():
    """(model path, x [S,3,224,224], targets [S], boxes [S] lists, labels [S]) for the
    hand-boxed photos; the target of an object is its class Lite0 scores highest."""
    from tsgb_onnx.io.photos import lite0_onnx

    model = str(lite0_onnx())
    data = load_dataset("skimage", size=224)
    logits = Explainer(model, method="gradient").infer(data.x)
    samples = make_samples(data, logits)
    return model, data.x[samples.image], samples.target, samples.boxes, samples.label


def photos_at(size: int):
    """The photos of `photo_samples` fitted to size×size (no boxes needed)."""
    from tsgb_onnx.io.photos import photo
    from tsgb_onnx.io.preprocess import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        Preprocessing,
        fit_image,
        to_tensor,
    )

    prep = Preprocessing(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop=False)
    names = [e["skimage"] for e in json.loads(_manifest().read_text())["images"]]
    return np.concatenate([to_tensor(fit_image(photo(n), prep), prep) for n in names])


def _manifest() -> Path:
    return ROOT / "tsgb_onnx" / "data" / "skimage_photos.json"


def _methods(alphas):
    cfg = [(f"tsgb α={a:g}", "tsgb", {"alpha": a}) for a in alphas]
    return cfg + [(m, m, {}) for m in BASELINES]


# --------------------------------------------------------------------------- main table
def flip_table(alphas, payload: dict) -> str:
    model, x, targets, boxes, labels = photo_samples()
    lines = []
    payload["photos"] = {"labels": labels, "targets": targets.tolist(), "methods": {}}
    for flip, axis in AXES.items():
        lines += [
            f"\n**{flip} flip** — share of positive mass in the object's half: image / mirror\n",
            "| method | " + " | ".join(labels) + " | mean gap ↓ |",
            "|---|" + "---|" * len(labels) + "---:|",
        ]
        for title, method, opts in _methods(alphas):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                explainer = Explainer(model, method=method, **opts)
                image, mirror = flip_shares(*flip_maps(explainer, x, targets, axis), boxes, axis)
            cells = [f"{a:.2f} / {b:.2f}" for a, b in zip(image, mirror)]
            gap = float(np.abs(image - mirror).mean())
            lines.append(f"| {title} | " + " | ".join(cells) + f" | {gap:.2f} |")
            payload["photos"]["methods"].setdefault(title, {})[flip] = {
                "image": image.tolist(),
                "mirror": mirror.tolist(),
                "mean_gap": gap,
            }
    return "\n".join(lines)


# --------------------------------------------------------------------------- evidence
def _right_left_gap(maps, mirror_maps) -> float:
    """Mean |share on the right of the image − share on the left of its mirror|."""
    return float(
        np.mean(
            [
                abs(half_share(a, False, -1) - half_share(b, True, -1))
                for a, b in zip(maps, mirror_maps)
            ]
        )
    )


def _targets(model, x):
    return Explainer(model, method="gradient").explain(x).target


def evidence_layers(payload: dict) -> str:
    from tsgb_onnx.io.photos import lite0_onnx

    lines = [
        "\n**1. Where the asymmetry appears** — Lite0, the 4 photos (top-1 targets): mean "
        "|share of positive mass on the right of the image − on the left of its mirror| of "
        "TSGB's map at each layer (0: follows the image; 1: stays on one side). α = 0 keeps "
        "the W+ part of TSGB-FC alone.\n",
        "| layer | 224: α=1 | 224: α=0.8 | 224: α=0 (W+ part) | 225 (symmetric pads): α=1 "
        "| 225: α=0.8 | 225: α=0 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = {name: [] for name, _ in LITE0_LAYERS}
    for size in (224, 225):
        model = str(lite0_onnx(size=(size, size)))
        x = photos_at(size)
        targets = _targets(model, x)
        for alpha in (1.0, 0.8, 0.0):
            explainer = Explainer(model, method="tsgb", alpha=alpha)
            for name, layer in LITE0_LAYERS:
                maps = explainer.explain(x, target=targets, layer=layer).saliency
                mirror = explainer.explain(
                    np.ascontiguousarray(x[..., ::-1]), target=targets, layer=layer
                ).saliency
                rows[name].append(_right_left_gap(maps, mirror))
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    payload["layers"] = rows
    return "\n".join(lines)


def evidence_features(payload: dict) -> str:
    """How far Lite0's own activations are from mirror-equivariant (225×225: exact mirrors)."""
    import onnx
    import onnxruntime as ort

    from tsgb_onnx.io.photos import lite0_onnx

    model = onnx.load(str(lite0_onnx(size=(225, 225))))
    layers = [(name, t) for name, t in LITE0_LAYERS if t is not None]
    for _, tensor in layers:
        model.graph.output.append(onnx.ValueInfoProto(name=tensor))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = photos_at(225)
    plain = session.run([t for _, t in layers], {model.graph.input[0].name: x})
    mirrored = session.run(
        [t for _, t in layers], {model.graph.input[0].name: np.ascontiguousarray(x[..., ::-1])}
    )
    lines = [
        "\n**0. The network's own asymmetry** — Lite0 at 225×225 (symmetric pads, centred "
        "windows): forward activations A of the photos and of their mirrors; ‖A(x) − "
        "mirror(A(mirror x))‖ / ‖A(x) + mirror(A(mirror x))‖ over the whole layer, and over "
        "its two outermost columns (left and right border) and its middle third; mean over "
        "the 4 photos. 0 for a mirror-symmetric net (tests/test_tsgb_symmetry.py).\n",
        "| layer | whole layer | border columns | middle third |",
        "|---|---:|---:|---:|",
    ]
    out = {}
    for (name, _), a, b in zip(layers, plain, mirrored):
        b = b[..., ::-1]
        w = a.shape[-1]

        def ratio(cols):
            d, s = (a - b)[..., cols], (a + b)[..., cols]
            return float(
                np.mean([np.linalg.norm(d[i]) / np.linalg.norm(s[i]) for i in range(len(a))])
            )

        border = np.r_[0, w - 1]
        values = [ratio(slice(None)), ratio(border), ratio(slice(w // 3, w - w // 3))]
        out[name] = values
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    payload["features"] = out
    return "\n".join(lines)


def evidence_cancellation(payload: dict) -> str:
    """At 225×225 (every layer's mirror exact): the W+ part and the E·W− part of the α = 1
    map, each split into mirror-symmetric and mirror-antisymmetric parts."""
    from tsgb_onnx.io.photos import lite0_onnx

    model = str(lite0_onnx(size=(225, 225)))
    x = photos_at(225)
    targets = _targets(model, x)
    mirrored = np.ascontiguousarray(x[..., ::-1])
    e1 = Explainer(model, method="tsgb", alpha=1.0)
    e0 = Explainer(model, method="tsgb", alpha=0.0)
    lines = [
        "\n**2. What cancels at α = 1** — Lite0 at 225×225; the α = 1 map = W+ part − E·W− "
        "part. Each map m split into its content part (m(x) + mirror(m(mirror x)))/2 and its "
        "frame-locked part (m(x) − mirror(m(mirror x)))/2. Columns: ‖W+ − E·W−‖ / ‖W+‖ "
        "for each part (how much survives the subtraction), and the frame-locked / content "
        "norm ratio of the W+ part alone and of the α = 1 map; median over the 4 photos.\n",
        "| layer | content survives | frame-locked survives | frame/content, W+ part "
        "| frame/content, α=1 map |",
        "|---|---:|---:|---:|---:|",
    ]
    out = {}
    for name, layer in LITE0_LAYERS:
        stats = []
        for i in range(len(x)):
            pair = np.concatenate([x[i : i + 1], mirrored[i : i + 1]])
            t = [int(targets[i])] * 2
            m1 = e1.explain(pair, target=t, layer=layer).saliency
            m0 = e0.explain(pair, target=t, layer=layer).saliency
            pos, neg = m0, m0 - m1

            def split(m):
                a, b = m[0], m[1][:, ::-1]
                return (a + b) / 2, (a - b) / 2

            (ps, pa), (ns, na) = split(pos), split(neg)
            n = np.linalg.norm
            stats.append(
                (n(ps - ns) / n(ps), n(pa - na) / n(pa), n(pa) / n(ps), n(pa - na) / n(ps - ns))
            )
        med = np.median(np.array(stats), axis=0)
        out[name] = med.tolist()
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in med) + " |")
    payload["cancellation"] = out
    return "\n".join(lines)


def evidence_absorption(payload: dict) -> str:
    """Σ signal·activation lost at Clip (ReLU6) and depthwise Conv nodes, per TSGB-FC part."""
    from tsgb_onnx.io.photos import lite0_onnx

    model = str(lite0_onnx())
    x = photos_at(224)
    targets = _targets(model, x)
    lines = [
        "\n**3. How much relevance reaches the input** — Lite0 224; relevance = Σ signal × "
        "activation. Entering the network (at the head's ReLU6 output) each TSGB-FC part "
        "carries P (α = 1: E·N = P). Shares of P absorbed on the way, by node kind, and what "
        "reaches the input; mean over the 4 photos.\n",
        "| part | absorbed by ReLU6 saturation | absorbed by depthwise convs "
        "| absorbed elsewhere | reaches the input |",
        "|---|---:|---:|---:|---:|",
    ]
    head = "/act_1/Clip_output_0"
    sums, nodes = {}, []
    for alpha in (0.0, 1.0):
        explainer = Explainer(model, method="tsgb", alpha=alpha, backend="numpy")
        graph = explainer.graph
        nodes = [
            n
            for n in graph.nodes
            if n.op_type in ("Conv", "Clip") and len(graph.consumers.get(n.inputs[0], [])) == 1
        ]
        tensors = {t for n in nodes for t in (n.inputs[0], n.outputs[0])}
        tensors = sorted(tensors | {head, graph.input_name})
        per_image = []
        for i in range(len(x)):
            _, _, taken = explainer.signals(x[i : i + 1], int(targets[i]), tensors)
            rel = {k: float((a * np.broadcast_to(s, a.shape)).sum()) for k, (a, s) in taken.items()}
            rel["input"] = rel[graph.input_name]
            per_image.append(rel)
        sums[alpha] = per_image
    rows = {"W+ part": [], "E·W− part": []}
    for i in range(len(x)):
        pos = sums[0.0][i]
        neg = {k: pos[k] - sums[1.0][i][k] for k in pos}
        for part, rel in (("W+ part", pos), ("E·W− part", neg)):
            entering = rel[head]
            lost = {"Clip": 0.0, "depthwise": 0.0}
            for n in nodes:
                kind = "Clip" if n.op_type == "Clip" else None
                if n.op_type == "Conv" and int(n.attr("group", 1)) > 1:
                    kind = "depthwise"
                if kind:
                    lost[kind] += rel[n.outputs[0]] - rel[n.inputs[0]]
            reach = rel["input"]
            other = entering - reach - lost["Clip"] - lost["depthwise"]
            shares = (lost["Clip"], lost["depthwise"], other, reach)
            rows[part].append([v / entering for v in shares])
    out = {}
    for part, values in rows.items():
        mean = np.mean(np.array(values), axis=0)
        out[part] = mean.tolist()
        cells = " | ".join(f"{round(v, 4) + 0.0:.1%}" for v in mean)  # no "-0.0%"
        lines.append(f"| {part} | {cells} |")
    payload["absorption"] = out
    return "\n".join(lines)


def evidence_nets(payload: dict) -> str:
    """Flip gap (right of the image vs left of its mirror) on several nets."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from nets import REFERENCE_NETS, export_onnx

    from tsgb_onnx.evaluation.datasets import synthetic
    from tsgb_onnx.io.photos import lite0_onnx
    from tsgb_onnx.rules.tsgb import final_linear_node

    scenes = synthetic(24, 7).x
    nets = []
    for name in ("vgg16_style", "resnet50_style", "densenet_style", "mobilenetv2_style"):
        factory, shape = REFERENCE_NETS[name]
        proto = export_onnx(factory(), torch.zeros((1,) + shape), dynamo=False)
        nets.append((f"{name} (tests/nets.py, random weights)", proto, scenes))
    for name in ("synthetic_vgg", "synthetic_resnet"):
        nets.append((f"{name} (trained)", str(ROOT / "tsgb_onnx/data" / f"{name}.onnx"), scenes))
    nets.append(("EfficientNet-Lite0 224 (one-sided pads)", str(lite0_onnx()), photos_at(224)))
    nets.append(
        (
            "EfficientNet-Lite0 225 (symmetric pads)",
            str(lite0_onnx(size=(225, 225))),
            photos_at(225),
        )
    )
    configs = [("tsgb", {"alpha": a}) for a in (1.0, 0.8, 0.0)] + [(m, {}) for m in BASELINES]
    lines = [
        "\n**4. Other nets** — mean |share of positive mass on the right of the image − on "
        "the left of its mirror| (top-1 targets; 24 synthetic scenes for the 64×64 nets, the "
        "4 photos for Lite0), and the share of TSGB's W+ relevance (α = 0) that reaches the "
        "input.\n",
        "| net | tsgb α=1 | tsgb α=0.8 | tsgb α=0 (W+ part) | gradcam | input_x_gradient "
        "| W+ relevance reaching the input |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    out = {}
    for title, model, x in nets:
        targets = _targets(model, x)
        mirrored = np.ascontiguousarray(x[..., ::-1])
        gaps = []
        for method, opts in configs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                explainer = Explainer(model, method=method, **opts)
                maps = explainer.explain(x, target=targets).saliency
                mirror = explainer.explain(mirrored, target=targets).saliency
            gaps.append(_right_left_gap(maps, mirror))
        e0 = Explainer(model, method="tsgb", alpha=0.0)
        fc_input = final_linear_node(e0.graph).inputs[0]
        top = e0.explain(x, target=targets, layer=fc_input).saliency.reshape(len(x), -1).sum(1)
        bottom = e0.explain(x, target=targets).saliency.reshape(len(x), -1).sum(1)
        survival = float(np.median(bottom / top))
        out[title] = gaps + [survival]
        lines.append(
            f"| {title} | " + " | ".join(f"{g:.2f}" for g in gaps) + f" | {survival:.0%} |"
        )
    payload["nets"] = out
    return "\n".join(lines)


def _register_eq6_relu6() -> str:
    """Register, in this process only, TSGB with eq. 6 on Clip (ReLU6) — an experiment."""
    from tsgb_onnx.ir.geometry import window_of
    from tsgb_onnx.methods.base import Method
    from tsgb_onnx.methods.table import available_methods, register_method
    from tsgb_onnx.rules import tsgb as rules
    from tsgb_onnx.rules.registry import RuleSet

    name = "tsgb_eq6_relu6"
    if name in available_methods():
        return name
    variant = RuleSet(name, parent=rules.TSGB)

    @variant.register("Clip", reads=("x0", "y0"))
    def eq6_clip(ops, node, fwd, grads, opts):  # G[X] = G[Y]·Y⊘X: the exact mask below 6
        return [rules.tsgb_eq6_step(ops, grads[0], fwd.y(0), fwd.x(0))]

    @variant.register("Relu", reads=("y0",))
    def relu(ops, node, fwd, grads, opts):  # no shortcut: the Conv below reads Y itself
        return [ops.mask(grads[0], ops.greater(fwd.y(0), 0))]

    @variant.register("Conv", reads=("x0", "y0"))
    def conv(ops, node, fwd, grads, opts):  # Y, not the activation's output (Y·G ≠ A·G here)
        x = fwd.x(0)
        win = window_of(node, ops.shape(x)[2:], kernel=fwd.x_shape(1)[2:])
        return [
            rules.tsgb_conv_step(
                ops,
                x,
                fwd.y(0),
                grads[0],
                win,
                int(node.attr("group", 1)),
                nonnegative_x=rules.nonnegative(node.graph, node.inputs[0]),
            )
        ]

    register_method(
        Method(
            name,
            variant,
            defaults={"alpha": 1.0, "reference_compat": False},
            description="experiment: TSGB with eq. 6 on ReLU6",
            chooser=rules.choose_final_fc,
            check_options=rules.check_options,
        )
    )
    return name


def evidence_variant(payload: dict) -> str:
    variant = _register_eq6_relu6()
    model, x, targets, boxes, labels = photo_samples()
    lines = [
        "\n**5. Experiment: eq. 6 on ReLU6** (relevance conserved at saturation; not a shipped "
        "method) — Lite0 224, object-half share image / mirror, left–right, and the median "
        "negative / positive mass of the image's maps.\n",
        "| method | " + " | ".join(labels) + " | mean gap | neg/pos mass |",
        "|---|" + "---|" * len(labels) + "---:|---:|",
    ]
    out = {}
    for method in ("tsgb", variant):
        for alpha in (1.0, 0.8):
            explainer = Explainer(model, method=method, alpha=alpha)
            maps, mirror = flip_maps(explainer, x, targets, -1)
            image, mirrored = flip_shares(maps, mirror, boxes, -1)
            ratio = float(np.median([negative_positive(m) for m in maps]))
            gap = float(np.abs(image - mirrored).mean())
            out[f"{method} α={alpha:g}"] = {"gap": gap, "neg_pos": ratio}
            cells = " | ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(image, mirrored))
            lines.append(f"| {method} α={alpha:g} | {cells} | {gap:.2f} | {ratio:.2f} |")
    payload["eq6_relu6"] = out
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alphas", default=None, help="tsgb α values (default: 1.0 and the default)")
    p.add_argument("--evidence", action="store_true", help="also the bias measurements")
    p.add_argument("--json", default=None, help="write every number as JSON")
    args = p.parse_args()
    if args.alphas:
        alphas = [float(a) for a in args.alphas.split(",")]
    else:
        alphas = sorted({1.0, default_alpha()}, reverse=True)
    payload: dict = {"alphas": alphas}
    start = time.perf_counter()
    print(flip_table(alphas, payload))
    if args.evidence:
        for step in (
            evidence_features,
            evidence_layers,
            evidence_cancellation,
            evidence_absorption,
            evidence_nets,
            evidence_variant,
        ):
            print(step(payload), flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()

"""TSGB's exact shortcuts and the canonical Pad folding, before vs after, measured in one run.

    python tools/bench_tsgb_shortcuts.py [--nets vgg16,resnet50,mobilenetv2,efficientnet_lite0]
                                         [--batch 8] [--repeats 7]

Compiles the `tsgb` explainer of each net three times:
* **plain**: no shortcuts — `rules.tsgb.sign_redundant`, `nonnegative` and
  `_feeds_tsgb_conv_only` answer False (|X| and sgn(X) computed for every Conv input,
  full-size signals, every Relu and ReLU6 applying its whole mask), and the canonical graph
  keeps explicit Pads (`graph.fold_pads_into_convs` off);
* **rules**: the TSGB shortcuts on, Pads kept;
* **shipped**: both on.
With `--baseline DIR` (a checkout of another version of tsgb-onnx, e.g. `git worktree add
DIR <commit>`), a fourth explainer is compiled by that version in a subprocess. The emitter's
node sharing is on in the first three. Plain inference (of the canonical graph, Pads folded:
the fastest plain inference of the same function that we know of) and the explainers are
timed in the same rounds (`bench.interleaved_medians`), so machine drift hits all alike;
prints medians, ratios to inference and the largest map difference from the plain variant.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


@contextlib.contextmanager
def _without(rule_shortcuts: bool, pad_folding: bool):
    """Turn the TSGB rule shortcuts and/or the canonical Pad folding off for a while."""
    import tsgb_onnx.ir.graph as graph
    import tsgb_onnx.rules.tsgb as rules

    keep = (
        rules.sign_redundant,
        rules.nonnegative,
        rules._feeds_tsgb_conv_only,
        graph.fold_pads_into_convs,
    )
    if rule_shortcuts:
        rules.sign_redundant = rules.nonnegative = lambda graph, tensor, *rest: False
        rules._feeds_tsgb_conv_only = lambda node: False
    if pad_folding:
        graph.fold_pads_into_convs = lambda model: model
    try:
        yield
    finally:
        (
            rules.sign_redundant,
            rules.nonnegative,
            rules._feeds_tsgb_conv_only,
            graph.fold_pads_into_convs,
        ) = keep


def _baseline_model(source: str, path: str, out: str):
    """The `tsgb` explainer of `path` as the tsgb-onnx checkout at `source` compiles it."""
    import subprocess

    import onnx

    code = (
        "import sys, warnings; warnings.simplefilter('ignore'); import onnx; "
        "from tsgb_onnx.convert import convert; "
        "onnx.save(convert(sys.argv[1], method='tsgb'), sys.argv[2])"
    )
    env = dict(os.environ, PYTHONPATH=os.path.abspath(source))
    subprocess.run(
        [sys.executable, "-c", code, path, out], check=True, env=env, cwd=tempfile.gettempdir()
    )
    return onnx.load(out)


def main() -> None:
    from bench import canonical_session, cpu_session, export, interleaved_medians

    from tsgb_onnx.convert import convert

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="vgg16,resnet50,mobilenetv2,efficientnet_lite0")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--baseline", default=None, help="a checkout of another tsgb-onnx version to time alongside"
    )
    args = p.parse_args()
    warnings.simplefilter("ignore")
    folder = tempfile.mkdtemp(prefix="tsgb_bench_")
    variants = {"plain": (True, True), "rules": (False, True), "shipped": (False, False)}
    columns = list(variants) + (["baseline"] if args.baseline else [])
    print(
        "| net | inference (s) | tsgb, plain (s) | tsgb, rule shortcuts (s) | tsgb, shipped (s) "
        + ("| tsgb, baseline (s) " if args.baseline else "")
        + "| max map difference / max |"
    )
    print("|---|---|" + "---|" * len(columns) + "---|")
    for name in args.nets.split(","):
        path = export(name, folder)
        sessions = {}
        for key, off in variants.items():
            with _without(*off):
                sessions[key] = cpu_session(convert(path, method="tsgb"))
        if args.baseline:
            sessions["baseline"] = cpu_session(
                _baseline_model(args.baseline, path, os.path.join(folder, f"{name}_baseline.onnx"))
            )
        plain = canonical_session(path)  # inference baseline: the canonical graph
        feed = {
            plain.get_inputs()[0].name: np.random.default_rng(0)
            .standard_normal((args.batch, 3, 224, 224))
            .astype(np.float32)
        }
        maps = {key: s.run(["saliency"], feed)[0] for key, s in sessions.items()}
        fns = {"inference": lambda: plain.run(None, feed)}
        fns.update({key: (lambda s=s: s.run(["saliency"], feed)) for key, s in sessions.items()})
        m = interleaved_medians(fns, args.repeats)
        diff = max(
            float(np.abs(maps[k] - maps["plain"]).max() / np.abs(maps["plain"]).max())
            for k in columns
        )
        cells = " | ".join(f"{m[k]:.3f} ({m[k] / m['inference']:.2f}×)" for k in columns)
        print(f"| {name} | {m['inference']:.3f} | {cells} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()

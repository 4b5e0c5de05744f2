"""TSGB-Conv's rectified-input shortcuts, before vs after, measured in one run.

    python tools/bench_tsgb_shortcuts.py [--nets vgg16,resnet50,mobilenetv2,efficientnet_lite0]
                                         [--batch 8] [--repeats 7]

Compiles the `tsgb` explainer of each net twice: as shipped, and with the shortcuts off
(`rules.tsgb.rectified_by`, `nonnegative` and `_feeds_tsgb_conv_only` answering False: |X|
and sgn(X) computed for every Conv input, full-size signals, every Relu masks). Plain inference and both explainers run interleaved, so machine drift
hits all three alike; prints medians, ratios to inference and the largest map difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def main() -> None:
    import onnx

    import tsgb_onnx.rules.tsgb as rules
    from bench import export
    from tsgb_onnx.convert import convert

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="vgg16,resnet50,mobilenetv2,efficientnet_lite0")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    folder = tempfile.mkdtemp(prefix="tsgb_bench_")
    print("| net | inference (s) | tsgb, shortcuts off (s) | tsgb, shipped (s) "
          "| max map difference / max |")
    print("|---|---|---|---|---|")
    for name in args.nets.split(","):
        path = export(name, folder)
        shipped = _session(convert(path, method="tsgb"))
        keep = (rules.rectified_by, rules.nonnegative, rules._feeds_tsgb_conv_only)
        rules.rectified_by = rules.nonnegative = lambda graph, tensor, *rest: False
        rules._feeds_tsgb_conv_only = lambda node: False
        try:
            plain_rules = _session(convert(path, method="tsgb"))
        finally:
            rules.rectified_by, rules.nonnegative, rules._feeds_tsgb_conv_only = keep
        plain = _session(onnx.load(path))
        feed = {plain.get_inputs()[0].name: np.random.default_rng(0).standard_normal(
            (args.batch, 3, 224, 224)).astype(np.float32)}
        off = plain_rules.run(["saliency"], feed)[0]
        on = shipped.run(["saliency"], feed)[0]
        plain.run(None, feed)
        runs = {"inference": (plain, None), "off": (plain_rules, ["saliency"]),
                "on": (shipped, ["saliency"])}
        times = {key: [] for key in runs}
        for _ in range(args.repeats):
            for key, (session, outputs) in runs.items():
                start = time.perf_counter()
                session.run(outputs, feed)
                times[key].append(time.perf_counter() - start)
        m = {k: float(np.median(v)) for k, v in times.items()}
        diff = float(np.abs(on - off).max() / np.abs(off).max())
        print(f"| {name} | {m['inference']:.3f} | {m['off']:.3f} ({m['off'] / m['inference']:.2f}×) "
              f"| {m['on']:.3f} ({m['on'] / m['inference']:.2f}×) | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()

"""Explanation time / plain ONNX Runtime inference time, measured in one run.

    python tools/bench.py [--nets resnet50,vgg16,mobilenetv2,efficientnet_lite0]
                          [--methods gradient,tsgb] [--batches 1,8] [--repeats 3]

Models are full-size (224x224, random weights except EfficientNet-Lite0, which is the
pretrained one); each is exported once with the TorchScript exporter. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def export(name: str, folder: str) -> str:
    import torch

    from tsgb_onnx.export import from_torch

    if name == "efficientnet_lite0":
        from tsgb_onnx.zoo.efficientnet_lite0 import efficientnet_lite0
        model = efficientnet_lite0(pretrained=True)
    else:
        from bench_nets import BENCH_NETS
        torch.manual_seed(0)
        model = BENCH_NETS[name]()
    path = os.path.join(folder, f"{name}.onnx")
    from_torch(model, torch.zeros(1, 3, 224, 224), path)
    return path


def compiled_session(path: str, method: str):
    """One ONNX Runtime session on the explainer model `tsgb convert` writes."""
    import onnxruntime as ort

    from tsgb_onnx.convert import convert

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(path, method=method)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="resnet50,vgg16,mobilenetv2,efficientnet_lite0")
    parser.add_argument("--methods", default="gradient,tsgb")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", default="engine,compiled",
                        help="engine: ORT forward + NumPy backward (Explainer(..., "
                             "backend='numpy')); compiled: the `tsgb convert` explainer "
                             "model in one ORT session")
    args = parser.parse_args()

    import onnxruntime as ort

    from tsgb_onnx import Explainer

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"onnxruntime {ort.__version__} CPUExecutionProvider; numpy {np.__version__}")
    methods = args.methods.split(",")
    paths = args.paths.split(",")
    columns = [(m, p) for m in methods for p in paths]
    print("| net | batch | inference (s) | " + " | ".join(
        f"{m} {p} (s) | {m} {p} / inference" for m, p in columns) + " |")
    print("|---|---|---|" + "---|---|" * len(columns))
    with tempfile.TemporaryDirectory() as folder:
        for name in args.nets.split(","):
            path = export(name, folder)
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            input_name = session.get_inputs()[0].name
            runners = {}
            for m in methods:
                if "engine" in paths:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        engine = Explainer(path, method=m, backend="numpy")
                    runners[m, "engine"] = (
                        lambda x, e=engine: e.explain(x, target=1))
                if "compiled" in paths:
                    compiled = compiled_session(path, m)
                    runners[m, "compiled"] = (
                        lambda x, s=compiled: s.run(["saliency"], {
                            input_name: x, "target": np.ones(len(x), dtype=np.int64)}))
            for batch in (int(b) for b in args.batches.split(",")):
                x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
                infer = median_time(lambda: session.run(None, {input_name: x}), args.repeats)
                cells = []
                for column in columns:
                    t = median_time(lambda: runners[column](x), args.repeats)
                    cells.append(f"{t:.3f} | **{t / infer:.2f}×**")
                print(f"| {name} | {batch} | {infer:.3f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

"""Map methods with their small NumPy products on one BLAS thread, and with BLAS as it is.

    python tools/bench_blas.py [--nets resnet50_style,vgg16_style,mobilenetv2_style]
                               [--methods groupcam,fullgrad] [--rounds 3] [--repeats 7]

Group-CAM and FullGrad resize and blur with small matrix products between ONNX Runtime runs
(`methods.cam.along_axis`). The product runs them on one BLAS thread; "BLAS as it is"
leaves NumPy's BLAS its own thread count (all cores). A BLAS thread pool spins after each
product, so the two settings cannot share a process: each is timed in its own child
process (median of `--repeats` explanations of 8 images after one warm-up), the children
alternating for `--rounds` rounds; the table gives the median over rounds and the ratio
(as it is / one thread; > 1: one thread is faster). 2 threads for ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def child(net: str, methods: list[str], repeats: int, blas_as_is: bool) -> dict:
    sys.path.insert(0, os.path.join(HERE, ".."))
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import torch
    from bench_peers import load_net

    from tsgb_onnx import Explainer
    from tsgb_onnx.methods import cam

    torch.set_num_threads(2)
    if blas_as_is:
        cam._BLAS[:] = [None]  # along_axis then runs on BLAS's own threads
    model, shape = load_net(net)
    x = torch.randn((8,) + shape, generator=torch.Generator().manual_seed(0)).numpy()
    times = {}
    for method in methods:
        explainer = Explainer(model, example=torch.from_numpy(x[:1]), method=method, threads=2)
        explainer.explain(x, target=0)
        runs = []
        for _ in range(repeats):
            time.sleep(0.05)
            start = time.perf_counter()
            explainer.explain(x, target=0)
            runs.append(time.perf_counter() - start)
        times[method] = float(np.median(runs))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="resnet50_style,vgg16_style,mobilenetv2_style")
    parser.add_argument("--methods", default="groupcam,fullgrad")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = args.methods.split(",")
    if args.child:
        net, setting = args.child.split(":")
        print(json.dumps(child(net, methods, args.repeats, setting == "as_is")))
        return
    results: dict = {}
    for net in args.nets.split(","):
        for _ in range(args.rounds):
            for setting in ("one_thread", "as_is"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", f"{net}:{setting}"]
                    + ["--methods", args.methods, "--repeats", str(args.repeats)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                for method, seconds in json.loads(out.stdout.splitlines()[-1]).items():
                    results.setdefault((net, method, setting), []).append(seconds)
        print(f"  {net} done", file=sys.stderr)
    print(
        f"\n{os.cpu_count()} cores, numpy {np.__version__}; 8 images, ONNX Runtime 2 threads; "
        f"median of {args.rounds} child processes (each the median of {args.repeats})\n"
    )
    print("| net | method | one BLAS thread s | BLAS as it is s | ratio |")
    print("|---|---|---|---|---|")
    for net in args.nets.split(","):
        for method in methods:
            one = float(np.median(results[(net, method, "one_thread")]))
            as_is = float(np.median(results[(net, method, "as_is")]))
            print(f"| {net} | {method} | {one:.4f} | {as_is:.4f} | {as_is / one:.2f}x |")


if __name__ == "__main__":
    main()

"""Integrated Gradients and SmoothGrad against their floor, and what two choices save.

    python tools/bench_averaging.py [--nets vgg16_style,resnet50_style] [--repeats 9]

Both methods run their base method (the gradient) on 8 images' copies (IG: 32 steps,
SmoothGrad: 25 samples; 64-row calls) and fold the maps into per-image means. Per net, in
one process, interleaved rounds (median; the second of two calls each round):

- floor: the gradient explainer alone on the same copies, precomputed, in the same calls;
- shipped: `Explainer(..., method=...).explain(x)` as it is;
- spinning clean pass: the clean pass on the multi-thread session (`infer`) instead of
  one-thread sessions (`infer_before_rows`);
- BLAS folding: each call's maps folded with a matrix product (`mix @ maps`) instead of
  NumPy's einsum.

The last two put the replaced piece back in place for the measurement only. Prints seconds
per batch and each time / floor.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from bench_peers import interleaved_medians, load_net  # noqa: E402


def blas_weighted_means(base, n_rows, copies, weights, targets, layer, chunk, saliency=True):
    """`averaging._weighted_means` with each call's maps folded by a BLAS product."""
    k = len(weights)
    total = n_rows * k
    sums: dict = {}
    layer_name = None
    parts = -(-total // chunk)
    bounds = [total * i // parts for i in range(parts + 1)]
    for lo, hi in zip(bounds, bounds[1:]):
        part = base.explain(copies(lo, hi), target=targets[lo:hi], layer=layer)
        layer_name = part.layer
        first, last = lo // k, (hi - 1) // k
        mix = np.zeros((last - first + 1, hi - lo), dtype=np.float32)
        index = np.arange(lo, hi)
        mix[index // k - first, index - lo] = weights[index % k]
        for key, value in (("map", part.saliency if saliency else None), ("signal", part.signal)):
            if value is None:
                sums[key] = None
                continue
            acc = sums.setdefault(key, np.zeros((n_rows,) + value.shape[1:], np.float32))
            folded = mix @ value.reshape(hi - lo, -1)
            acc[first : last + 1] += folded.reshape((-1,) + value.shape[1:])
    return sums.get("map"), sums.get("signal"), layer_name


@contextlib.contextmanager
def replaced(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def bench_net(name: str, repeats: int) -> list[tuple]:
    import torch

    from tsgb_onnx import Explainer
    from tsgb_onnx.methods import averaging

    model, shape = load_net(name)
    x = torch.randn((8,) + shape, generator=torch.Generator().manual_seed(0)).numpy()
    targets = np.arange(8) % 5
    gradient = Explainer(model, example=torch.from_numpy(x[:1]), method="gradient", threads=2)
    rows = []
    for method, options, k in (
        ("integrated_gradients", {"steps": 32, "quadrature": "gausslegendre"}, 32),
        ("smoothgrad", {"n": 25, "sigma": 0.1, "sigma_mode": "absolute"}, 25),
    ):
        explainer = Explainer(
            model, example=torch.from_numpy(x[:1]), method=method, threads=2, **options
        )
        copies = np.repeat(x, k, axis=0) * np.float32(0.5)
        copy_targets = np.repeat(targets, k)
        parts = -(-len(copies) // 64)
        bounds = [len(copies) * i // parts for i in range(parts + 1)]

        def floor():
            for lo, hi in zip(bounds, bounds[1:]):
                gradient.explain(copies[lo:hi], target=copy_targets[lo:hi])

        def shipped(explainer=explainer):
            explainer.explain(x, target=targets)

        def spinning(explainer=explainer):
            with replaced(explainer, "infer_before_rows", explainer.infer):
                explainer.explain(x, target=targets)

        def blas(explainer=explainer):
            with replaced(averaging, "_weighted_means", blas_weighted_means):
                explainer.explain(x, target=targets)

        times = interleaved_medians(
            {"floor": floor, "shipped": shipped, "spinning": spinning, "blas": blas}, repeats
        )
        rows.append((name, method, times))
        print(f"  {name} {method}: {times}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="vgg16_style,resnet50_style")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    import onnxruntime
    import torch

    torch.set_num_threads(2)
    rows = []
    for name in args.nets.split(","):
        rows += bench_net(name, args.repeats)
    print(
        f"\n{os.cpu_count()} cores, onnxruntime {onnxruntime.__version__}, numpy "
        f"{np.__version__}; 8 images, 64-row calls, 2 threads, median of {args.repeats}\n"
    )
    print("| net | method | floor s | shipped s (/ floor) | spinning clean pass | BLAS folding |")
    print("|---|---|---|---|---|---|")
    for name, method, t in rows:
        cells = [f"{t[k]:.4f} ({t[k] / t['floor']:.2f})" for k in ("shipped", "spinning", "blas")]
        print(f"| {name} | {method} | {t['floor']:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"\n{time.perf_counter() - t0:.0f} s", file=sys.stderr)

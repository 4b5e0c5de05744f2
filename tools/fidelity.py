"""Fidelity table: Explainer (default path) vs independent references, max |diff| / max |map|.

    python tools/fidelity.py

`gradient` is compared with PyTorch autograd, `tsgb` with the PyTorch reference of SPEC §1
in tests/tsgb_reference.py, on the reference nets of tests/nets.py (batch 2, a different
target per row) and pretrained EfficientNet-Lite0 (chelsea + coffee), both exporters.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from nets import REFERENCE_NETS, export_onnx  # noqa: E402
from test_gradient_nets import autograd_signal  # noqa: E402
from tsgb_reference import tsgb_saliency  # noqa: E402

from tsgb_onnx import Explainer  # noqa: E402
from tsgb_onnx.io.photos import LITE0_PREP, fit_image, photo, to_tensor  # noqa: E402


def cases():
    for name, (factory, shape) in REFERENCE_NETS.items():
        x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
        yield name, factory(), x, [3, 1]
    from tsgb_onnx.io.zoo.efficientnet_lite0 import efficientnet_lite0

    x = np.concatenate(
        [to_tensor(fit_image(photo(p), LITE0_PREP), LITE0_PREP) for p in ("chelsea", "coffee")]
    )
    yield "efficientnet_lite0", efficientnet_lite0(), x, [285, 967]


def main() -> None:
    print("| net | exporter | gradient vs autograd | tsgb vs reference | tsgb (reference_compat) |")
    print("|---|---|---|---|---|")
    for name, model, x, target in cases():
        for dynamo in (False, True):
            proto = export_onnx(model, torch.as_tensor(x[:1]), dynamo)
            cells = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grad = Explainer(proto, method="gradient").explain(x, target=target).saliency
                signal, _ = autograd_signal(model, x, target)
                ref = (signal * x).sum(1)
                cells.append(np.abs(grad - ref).max() / np.abs(ref).max())
                for compat in (False, True):
                    ours = (
                        Explainer(proto, method="tsgb", alpha=1.0, reference_compat=compat)
                        .explain(x, target=target)
                        .saliency
                    )
                    ref, _ = tsgb_saliency(model, x, target, reference_compat=compat)
                    cells.append(np.abs(ours - ref).max() / np.abs(ref).max())
            print(
                f"| {name} | {'dynamo' if dynamo else 'torchscript'} | "
                + " | ".join(f"{c:.1e}" for c in cells)
                + " |",
                flush=True,
            )
        if name == "efficientnet_lite0":  # how far autograd itself moves under 1e-6 input noise
            noise = 1e-6 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
            base, _ = autograd_signal(model, x, target)
            moved, _ = autograd_signal(model, x + noise, target)
            print(
                f"\n{name}: autograd at x vs x + 1e-6 noise differs by "
                f"{np.abs(moved - base).max() / np.abs(base).max():.1e} (max |diff| / max |grad|)"
            )


if __name__ == "__main__":
    main()

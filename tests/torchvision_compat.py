"""Importing torchvision beside the CPU build of torch 2.13.0.

PyPI's torchvision 0.28.0 wheel is linked against CUDA torch: its compiled ops (`_C.so`) do
not load beside the CPU build, and its import then fails in two unguarded
registrations ("operator torchvision::nms does not exist", then qnms). Defining those ops'
schemas, with no kernel, lets the pure-Python part import: models, transforms, `ops.misc`
(what timm, pytorch-grad-cam and Zennit use). The compiled ops (nms, roi_align, ...) stay
unavailable and raise if called. Where torchvision loads normally, nothing is changed.
"""

from __future__ import annotations

import sys

_LIBRARY = None  # the schema-only torchvision library, kept alive for the process


def ensure_torchvision() -> bool:
    """Whether torchvision imports (after the schema fix where its compiled ops are missing)."""
    global _LIBRARY
    try:
        import torchvision  # noqa: F401

        return True
    except ImportError:
        return False
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
        del sys.modules[name]
    import torch

    _LIBRARY = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):  # the two registrations its import makes unconditionally
        _LIBRARY.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401, F811

    return True

"""Importing the peer libraries the tests compare against: Captum, pytorch-grad-cam, Zennit.

pytorch-grad-cam and Zennit import torchvision, which `tests.torchvision_compat` makes
importable beside the CPU build of torch 2.13.0.
"""

from __future__ import annotations

import importlib

import pytest
from torchvision_compat import ensure_torchvision


def import_peer(name: str, *submodules: str):
    """The peer's module (its `submodules` imported too), or skip the test with the reason
    it cannot be imported."""
    if name in ("pytorch_grad_cam", "zennit") and not ensure_torchvision():
        pytest.skip(f"peer library {name} needs torchvision, which is not installed; see .ci/run")
    try:
        module = importlib.import_module(name)
        for sub in submodules:
            importlib.import_module(f"{name}.{sub}")
        return module
    except ImportError as exc:
        pytest.skip(f"peer library {name} is not installed ({exc}); see .ci/run")

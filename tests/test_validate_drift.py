"""`tsgb validate` [drift]: a deployed model (float16, INT8) against its float reference.

The float16 twin of the trained synthetic VGG passes; a static QDQ quantization with one
layer's scale deliberately wrong fails (exit 1), with the drifting images named in the JUnit
XML. Real models, real ONNX Runtime quantization.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_builders import quantize_static

from tsgb_onnx.cli.main import main
from tsgb_onnx.evaluation.datasets import load_dataset
from tsgb_onnx.evaluation.drift import top_overlap

DATA = Path(__file__).resolve().parents[1] / "tsgb_onnx" / "data"
VGG = DATA / "synthetic_vgg.onnx"
SCENES = "synthetic:8:21"

CONFIG = """
[model]
path = "{deployed}"

[data]
path = "{scenes}"

[drift]
reference = "{reference}"
method = "tsgb"
min_spearman = 0.8
min_image_spearman = 0.6
min_top1_agreement = 0.9

[output]
dir = "{out}"
"""


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """float16 and QDQ INT8 versions of the synthetic VGG; the INT8 one with the scale of
    one activation quantizer 8x too small (its values saturate)."""
    float16 = pytest.importorskip("onnxconverter_common.float16")
    pytest.importorskip("onnxruntime.quantization")
    root = tmp_path_factory.mktemp("drift")
    half = root / "vgg_fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(VGG)), keep_io_types=False), str(half))
    x = load_dataset(SCENES).x.astype(np.float32)

    good = root / "vgg_int8.onnx"
    quantize_static(str(VGG), str(good), x, "QDQ")
    model = onnx.load(str(good))
    inits = {i.name: i for i in model.graph.initializer}
    quantizers = [
        n
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
        and inits[n.input[1]].dims == []
        and "input" not in n.input[0]
    ]
    scale = inits[quantizers[len(quantizers) // 2].input[1]]
    value = onnx.numpy_helper.to_array(scale) / 8
    scale.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), scale.name))
    broken = root / "vgg_int8_broken.onnx"
    onnx.save(model, str(broken))
    return {"float16": half, "int8": good, "broken": broken, "root": root}


def _validate(deployed, name: str) -> tuple[int, Path]:
    root = deployed["root"]
    out = root / f"out_{name}"
    config = root / f"{name}.toml"
    config.write_text(CONFIG.format(deployed=deployed[name], scenes=SCENES, reference=VGG, out=out))
    return main(["validate", str(config), "--quiet"]), out


def test_float16_twin_passes_the_drift_check(deployed):
    code, out = _validate(deployed, "float16")
    report = json.loads((out / "report.json").read_text())
    assert code == 0, report["checks"]
    assert report["drift"]["images"] == 8 and report["drift"]["spearman_mean"] > 0.95
    assert report["drift"]["failing_images"] == []
    assert "Explanation drift" in (out / "report.html").read_text()


def test_broken_quantization_fails_naming_images_in_junit(deployed):
    code, out = _validate(deployed, "broken")
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    failing = report["drift"]["failing_images"]
    assert failing and all(isinstance(n, str) for n in failing)
    suite = ET.parse(out / "junit.xml").getroot()
    messages = [f.get("message") for f in suite.iter("failure")]
    named = [m for m in messages if "images under it" in m]
    assert named and all(n in named[0] for n in failing)


def test_top_overlap():
    a = np.arange(100, dtype=np.float32).reshape(10, 10)
    assert top_overlap(a, a, 0.1) == 1.0
    assert top_overlap(-a, a, 0.1) == 0.0


def test_drift_config_errors_are_one_line(deployed, capsys):
    root = deployed["root"]
    config = root / "bad.toml"
    config.write_text(
        CONFIG.format(
            deployed=deployed["float16"],
            scenes=SCENES,
            reference=root / "missing.onnx",
            out=root / "o",
        ).replace("min_spearman = 0.8", "min_spearman = 2")
    )
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[drift] min_spearman must be a number in [-1, 1]" in err[0]

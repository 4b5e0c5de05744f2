"""`tsgb validate`: passes on a trained model, fails (exit 1, JUnit failures) on the same model
with randomized weights, and exits 2 with one line when it cannot run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import onnx
import pytest

from tsgb_onnx.evaluation import metrics as M
from tsgb_onnx.evaluation.validate import ConfigError, validate

DATA = Path(__file__).resolve().parents[1] / "tsgb_onnx" / "data"
RESNET = DATA / "synthetic_resnet.onnx"

CONFIG = """
[model]
path = "{model}"

[data]
path = "synthetic:8:21"

[evaluation]
methods = ["tsgb"]
metrics = ["pointing", "deletion", "sanity"]
step = 0.05
sanity_samples = 3

[thresholds]
pointing = {{ min = 0.8 }}
deletion = 0.3
sanity_cascading = {{ max = 0.5 }}

[output]
dir = "out"
worst = 2
"""


def run_cli(*argv, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "tsgb_onnx.cli", *argv],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=str(cwd),
    )


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    model = onnx.load(str(RESNET))
    random = M.randomize_layers(model, M.randomizable_layers(model), seed=3)
    onnx.save(random, str(root / "random.onnx"))
    (root / "good.toml").write_text(CONFIG.format(model=RESNET.as_posix()))
    (root / "random.toml").write_text(CONFIG.format(model="random.onnx"))
    return root


def test_good_model_passes(configs):
    proc = run_cli("validate", "good.toml", "--quiet", cwd=configs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validation passed" in proc.stdout
    suite = ET.parse(configs / "out" / "junit.xml").getroot()
    cases = suite.findall(".//testcase")
    assert {c.get("name") for c in cases} == {
        "tsgb.pointing",
        "tsgb.deletion",
        "tsgb.sanity_cascading",
        "tsgb.nan_maps",
    }
    assert not suite.findall(".//failure")
    report = json.loads((configs / "out" / "report.json").read_text())
    assert report["passed"] and all(c["passed"] for c in report["checks"])
    page = (configs / "out" / "report.html").read_text()
    assert "PASSED" in page and page.count("data:image/png;base64,") == 4
    assert "<table class=results>" in page and "<td>tsgb</td>" in page  # a real table


def test_randomized_model_fails(configs, tmp_path):
    proc = run_cli(
        "validate",
        str(configs / "random.toml"),
        "--out-dir",
        str(tmp_path),
        "--quiet",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    failed = {
        c.get("name"): c.find("failure")
        for c in suite.findall(".//testcase")
        if c.find("failure") is not None
    }
    assert "tsgb.pointing" in failed
    assert "required >= 0.8" in failed["tsgb.pointing"].get("message")
    assert "tsgb.nan_maps" not in failed
    assert "FAIL  tsgb.pointing" in proc.stdout and "validation failed" in proc.stdout


@pytest.mark.parametrize(
    "case", ["missing_config", "bad_toml", "missing_model", "bad_threshold", "unknown_method"]
)
def test_cannot_run_exits_2_with_one_line(case, tmp_path):
    config = tmp_path / "c.toml"
    text = CONFIG.format(model=RESNET.as_posix())
    if case == "bad_toml":
        config.write_text(text + "\n[thresholds\n")
    elif case == "missing_model":
        config.write_text(CONFIG.format(model="nowhere.onnx"))
    elif case == "bad_threshold":
        config.write_text(text.replace("deletion = 0.3", 'deletion = "low"'))
    elif case == "unknown_method":
        config.write_text(text.replace('methods = ["tsgb"]', 'methods = ["nonesuch"]'))
    proc = run_cli("validate", str(config), "--quiet", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tsgb: error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_api_with_a_dict(tmp_path):
    cfg = {
        "model": {"path": str(RESNET)},
        "data": {"path": "synthetic:4:5"},
        "evaluation": {"methods": ["gradient"], "step": 0.1},
        "thresholds": {"deletion": {"max": 1.0}, "gradient": {"insertion": {"min": 1.01}}},
    }
    report = validate(cfg, out_dir=tmp_path)
    assert report.evaluation.metrics == ("deletion", "insertion")  # taken from the thresholds
    by_name = {c.name: c for c in report.checks}
    assert by_name["gradient.deletion"].passed and not by_name["gradient.insertion"].passed
    assert report.exit_code == 1
    with pytest.raises(ConfigError, match="unknown threshold"):
        validate({**cfg, "thresholds": {"accuracy": 0.5}}, out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"\[data\]"):
        validate({"model": {"path": str(RESNET)}}, out_dir=tmp_path)

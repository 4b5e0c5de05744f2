"""The index page of `tsgb explain --format png,html` in a real headless Chromium.

`tools/render_check.py` opens the page and reports, per <img>, whether the browser decoded
it. This runs it on a page written by `tsgb explain` over a small folder (a subfolder and
a file name with a space and '#', which must not break the links), and on a hand-written
page with a missing and an undecodable picture, which must be reported broken. Skipped
where no Chromium binary is installed (`apt-get install chromium`).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli_explain import NAMES, small_cnn

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

TOOL = Path(__file__).resolve().parents[1] / "tools" / "render_check.py"
SIZE = 64


def _render_check_module():
    spec = importlib.util.spec_from_file_location("render_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def browser():
    rc = _render_check_module()
    path = rc.find_browser()
    if path is None:
        pytest.skip(
            f"no Chromium binary on PATH (looked for {', '.join(rc.BROWSERS)}); "
            f"install one, e.g. apt-get install chromium"
        )
    return path


def _render_check(page: Path):
    proc = subprocess.run(
        [sys.executable, str(TOOL), str(page)], capture_output=True, text=True, timeout=120
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def report(browser, tmp_path_factory):
    """`tsgb explain FOLDER --out-dir OUT --format png,html --top-k 2` in a fresh process."""
    from tsgb_onnx.io.export import from_torch

    root = tmp_path_factory.mktemp("render_browser")
    model = root / "model.onnx"
    from_torch(
        small_cnn(), torch.zeros(1, 3, SIZE, SIZE), model, preprocess="torchvision", labels=NAMES
    )
    folder = root / "photos"
    (folder / "more dir").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for rel, shape in (("a.png", (80, 96)), ("b.jpg", (64, 64)), ("more dir/c #1.png", (100, 64))):
        Image.fromarray(rng.integers(0, 256, shape + (3,), dtype=np.uint8)).save(folder / rel)
    out = root / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tsgb_onnx.cli",
            "explain",
            str(model),
            str(folder),
            "--top-k",
            "2",
            "--out-dir",
            str(out),
            "--format",
            "png,html",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_index_page_every_image_loads_in_chromium(report):
    code, said = _render_check(report / "index.html")
    assert code == 0, said
    assert "9/9 images loaded" in said, said  # 3 inputs x (input + top-2 maps)
    assert not list(report.glob(".render_check_*")), "the probe page was left behind"


def test_broken_images_are_reported(browser, tmp_path):
    """The check can fail: a missing file and a file that is not a picture are caught."""
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "junk.png").write_text("not a png")
    page = tmp_path / "index.html"
    page.write_text(
        '<!doctype html><html><body><img src="ok.png"><img src="missing.png">'
        '<img src="junk.png"></body></html>',
        encoding="utf-8",
    )
    code, said = _render_check(page)
    assert code == 1, said
    assert "1/3 images loaded" in said and "broken: missing.png, junk.png" in said, said

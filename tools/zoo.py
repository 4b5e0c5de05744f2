"""The coverage table: every zoo architecture (tests/zoo.py), exported, checked, tabulated.

    python tools/zoo.py [--only resnet18,ResNet50] [--exporters torchscript,dynamo,tf2onnx]
                        [--source timm|keras]

For each architecture and exporter: the exact gradient's error against the framework's own
autograd in float64 (and, as the kink-sensitivity control, the framework's float32 error
against its float64 and how far the float64 gradient moves under a 4e-6 jitter of the input,
on the input used), and which of tsgb, gradcam and input_x_gradient run without NaN/Inf.
Prints a Markdown table (the one in docs/benchmarks.md, "Zoo coverage"); a row that does not
pass gives its one-line reason.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="")
    parser.add_argument("--exporters", default="torchscript,dynamo,tf2onnx")
    parser.add_argument("--source", default="")
    args = parser.parse_args()
    from zoo import MAP_METHODS, ZOO, check, exporters_for

    only = {n for n in args.only.split(",") if n}
    wanted = set(args.exporters.split(","))
    rows = []
    print(
        "| architecture | source | exporter | gradient error | framework f32 error | "
        "float64 moved by jitter | tsgb / gradcam / input_x_gradient | s | result |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for entry in ZOO:
        if (only and entry.name not in only) or (args.source and entry.source != args.source):
            continue
        for exporter in exporters_for(entry):
            if exporter not in wanted:
                continue
            r = check(entry, exporter)
            rows.append(r)
            grad = "—" if r.gradient_error is None else f"{r.gradient_error:.1e}"
            own = "—" if r.framework_error is None else f"{r.framework_error:.1e}"
            moved = "—" if r.jitter_error is None else f"{r.jitter_error:.1e}"
            methods = " / ".join(
                "ok" if m in r.methods_ok else ("fails" if m in r.methods_failed else "—")
                for m in MAP_METHODS
            )
            why = (
                "passes"
                if r.passed
                else (r.reason or "; ".join(f"{m}: {v}" for m, v in r.methods_failed.items()))
            )
            print(
                f"| {entry.name} | {entry.source} | {exporter} | {grad} | {own} | {moved} "
                f"| {methods} | {r.seconds:.0f} | {why} |",
                flush=True,
            )
    passed = sum(r.passed for r in rows)
    print(f"\n{passed} of {len(rows)} architecture × exporter pairs pass")


if __name__ == "__main__":
    main()

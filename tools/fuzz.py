"""Differential fuzzing against autograd: random CNNs, both exporters, both backends.

    python tools/fuzz.py --n 1000 --seed 1 [--exporters torchscript,dynamo]
    python tools/fuzz.py --only 1048583          # re-run one graph (the seed= of a line)

For each graph (`tests/fuzz_nets.py`: `make_case`, `check_case`): export with each exporter;
`method="gradient"` on each backend must match autograd in float64 (<= 1e-4 of the max
|gradient|, on a kink-stable input), and on nets in TSGB's conv/BN/pool/linear subset
`method="tsgb"` must match `tests/tsgb_reference.py` (same bound). One line per mismatch
(seed, exporter, backend, method, error, graph), one per export failure (reported apart: an
exporter that fails on, or mis-exports, a valid net is not a mismatch), then a summary.
Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from fuzz_nets import BACKENDS, EXPORTERS, check_case, graph_seed, make_case  # noqa: E402


def signature(finding) -> str:
    """A mismatch's class: the error with numbers and node names taken out."""
    error = finding.error.split(" (oracle instability")[0]
    if error.startswith("raised"):
        error = re.sub(r"'[^']*'", "'…'", error)
        error = re.sub(r"\(op_type:(\w+), node name: [^)]*\)", r"(\1)", error)
        error = re.sub(r"\d+", "N", error)
        error = error if len(error) <= 200 else error[:90] + " … " + error[-100:]
    else:
        error = re.sub(r"[\d.]+e[-+]\d+", "E", error)
    method = finding.method.split("(")[0]
    return f"{method} {finding.backend}: {error}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20, help="graphs to try")
    p.add_argument("--seed", type=int, default=0, help="run seed (graph i: seed << 20 | i)")
    p.add_argument("--start", type=int, default=0, help="first graph index")
    p.add_argument("--only", type=int, action="append", help="graph seed(s) to run alone")
    p.add_argument("--exporters", default=",".join(EXPORTERS))
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--methods", default="gradient,tsgb")
    p.add_argument("--threads", type=int, default=1, help="the explainers' ONNX Runtime threads")
    p.add_argument("--verbose", action="store_true", help="a line per graph; tracebacks")
    args = p.parse_args(argv)
    exporters = [e for e in args.exporters.split(",") if e]
    unknown = set(exporters) - set(EXPORTERS)
    if unknown:
        p.error(f"unknown exporter(s) {sorted(unknown)}; known: {', '.join(EXPORTERS)}")
    backends = [b for b in args.backends.split(",") if b]
    methods = [m for m in args.methods.split(",") if m]
    seeds = args.only or [graph_seed(args.seed, i) for i in range(args.start, args.start + args.n)]

    import onnxruntime
    import torch

    onnxruntime.set_default_logger_severity(3)  # the lines below say what failed
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    tried = 0
    exported = collections.Counter()
    export_failed = collections.Counter()
    mismatched_graphs = 0
    mismatches = export_failures = checks = subset = unsupported = 0
    unstable = collections.Counter()
    classes = collections.Counter()
    features = collections.Counter()
    for k, seed in enumerate(seeds):
        case = make_case(seed)
        report = check_case(case, exporters, backends, methods, threads=args.threads)
        tried += 1
        subset += case.tsgb_subset
        features.update(case.features)
        exported.update(report.exported)
        checks += report.checks
        for method in report.unstable:
            unstable[method] += 1
        for f in report.export_failures:
            export_failed[f.exporter] += 1
            export_failures += 1
            print("EXPORT-FAILURE " + f.line(), flush=True)
        for f in report.unsupported:
            unsupported += 1
            print("UNSUPPORTED " + f.line(), flush=True)
        for f in report.mismatches:
            mismatches += 1
            classes[signature(f)] += 1
            print("MISMATCH " + f.line(), flush=True)
            if args.verbose and getattr(f, "traceback", None):
                print(f.traceback, flush=True)
        mismatched_graphs += bool(report.mismatches)
        if args.verbose:
            print(
                f"[{k + 1}/{len(seeds)}] seed={seed} subset={case.tsgb_subset} "
                f"tries={report.input_tries} checks={report.checks} | {case.description}",
                flush=True,
            )
        elif (k + 1) % 25 == 0:
            elapsed = time.perf_counter() - started
            print(
                f"... {k + 1}/{len(seeds)} graphs, {mismatches} mismatches, "
                f"{export_failures} export failures, {elapsed:.0f} s",
                flush=True,
            )
    wall = time.perf_counter() - started
    print("== differential fuzzing summary")
    print(f"graphs tried: {tried} (seeds {seeds[0]}..{seeds[-1]}), in TSGB subset: {subset}")
    for e in exporters:
        print(f"  {e}: exported {exported[e]}, export failures {export_failed[e]}")
    print(f"comparisons (exporter x backend x method): {checks}")
    print(f"mismatches: {mismatches} (in {mismatched_graphs} graphs)")
    for sig, n in classes.most_common():
        print(f"  {n} x {sig}")
    print(f"export failures: {export_failures}")
    print(f"refused with UnsupportedOpError (an exporter wrote an op with no rule): {unsupported}")
    print(
        "skipped for no kink-stable input: "
        + (", ".join(f"{m} {n}" for m, n in sorted(unstable.items())) or "none")
    )
    print("features: " + ", ".join(f"{f} {n}" for f, n in sorted(features.items())))
    print(
        f"wall time: {wall:.0f} s on {platform.node()} ({os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}), torch {torch.__version__}"
    )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

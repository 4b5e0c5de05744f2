"""Explanation time / plain ONNX Runtime inference time, measured in one run.

    python tools/bench.py [--nets resnet50,vgg16,mobilenetv2,efficientnet_lite0]
                          [--methods gradient,tsgb] [--batches 1,8] [--repeats 3]
    python tools/bench.py --device cuda [--nets resnet50,vgg16,efficientnet_lite0]
                          [--methods tsgb] [--batches 1,8,64] [--repeats 5]

Models are full-size (224x224, random weights except EfficientNet-Lite0, which is the
pretrained one); each is exported once with the TorchScript exporter. Prints a Markdown table.
Ratios are to plain inference of the canonical graph the explainers are built from (constants
and zero Pads folded, `tsgb_onnx.graph.canonicalize`), which is as fast as or faster than the
file as exported (also printed). On the CPU, plain inference and every explanation of a row are
timed in rounds (median of
`--repeats` rounds; in each, every function runs twice and the second run is timed), so the
ratios share the machine's state.

`--device cuda` reports images/s on the GPU: plain ONNX Runtime CUDA inference (I/O binding,
input and outputs on the device), the explanation (CUDA forward recorder + CuPy backward with
the fused kernels, map copied to the host), the reference algorithm in PyTorch eager on the
same GPU (when PyTorch has CUDA), and the peak GPU memory of one explanation. Without the
CUDA provider in ONNX Runtime it times the CuPy backward alone on activations recorded on
the CPU, and says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median time of each function over `repeats` rounds; in each round every function runs
    twice in a row and the second run is timed. Drift of a shared machine hits every column
    alike. Before each function a pause lets the previous session's thread pool stop spinning
    (each ONNX Runtime session has its own; on 2 cores its spinning threads would slow the next
    session's run: ResNet-50 inference at batch 1 measured 32 ms instead of 20 ms)."""
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            time.sleep(0.1)
            fn()
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(t)) for key, t in times.items()}


def export(name: str, folder: str) -> str:
    import torch

    from tsgb_onnx.io.export import from_torch

    if name == "efficientnet_lite0":
        from tsgb_onnx.io.zoo.efficientnet_lite0 import efficientnet_lite0

        model = efficientnet_lite0(pretrained=True)
    else:
        from bench_nets import BENCH_NETS

        torch.manual_seed(0)
        model = BENCH_NETS[name]()
    path = os.path.join(folder, f"{name}.onnx")
    from_torch(model, torch.zeros(1, 3, 224, 224), path)
    return path


def cpu_session(model):
    """An ONNX Runtime CPU session on an in-memory model (warnings off)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def canonical_session(path: str):
    """Plain inference on the canonical graph the explainers are built from (constants and
    zero Pads folded: as fast as or faster than the file as exported), the baseline of every
    ratio."""
    from tsgb_onnx.ir.graph import build_graph

    return cpu_session(build_graph(path).model)


def compiled_session(path: str, method: str):
    """One ONNX Runtime session on the explainer model `tsgb convert` writes."""
    from tsgb_onnx.convert import convert

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cpu_session(convert(path, method=method))


CPU_DEFAULTS = {
    "nets": "resnet50,vgg16,mobilenetv2,efficientnet_lite0",
    "methods": "gradient,tsgb",
    "batches": "1,8",
    "repeats": 3,
}
CUDA_DEFAULTS = {
    "nets": "resnet50,vgg16,efficientnet_lite0",
    "methods": "tsgb",
    "batches": "1,8,64",
    "repeats": 5,
}


def gpu_time(fn, repeats: int) -> float:
    """Median seconds of `fn` (which must leave the GPU idle when it returns)."""
    return median_time(fn, repeats)


def torch_reference(name: str, method: str, batch: int):
    """The reference algorithm in PyTorch eager on the GPU: fn(x) -> saliency, or a reason."""
    try:
        import torch
    except ImportError:
        return "PyTorch missing"
    if not torch.cuda.is_available():
        return "PyTorch has no CUDA"
    if method != "tsgb":
        return "tsgb only"
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
    from tsgb_reference import tsgb_model

    if name == "efficientnet_lite0":
        from tsgb_onnx.io.zoo.efficientnet_lite0 import efficientnet_lite0

        model = efficientnet_lite0(pretrained=True)
    else:
        from bench_nets import BENCH_NETS

        torch.manual_seed(0)
        model = BENCH_NETS[name]()
    device = torch.device("cuda")
    example = torch.randn(batch, 3, 224, 224, device=device)
    with device:  # the reference builds its box-sum kernels with the default device
        reference = tsgb_model(model.eval().to(device), fold_example=example)

    def run(x):
        with device:
            xt = x.detach().clone().requires_grad_(True)
            logits = reference(xt)
            seed = torch.zeros_like(logits)
            seed[:, 1] = 1
            logits.backward(seed)
            saliency = (xt.grad * xt.detach()).sum(1).cpu()
        torch.cuda.synchronize()
        return saliency

    return run


def main_cuda(args) -> None:
    """images/s on the GPU: ORT CUDA inference, the CuPy explanation, the PyTorch reference."""
    import cupy
    import onnxruntime as ort

    from tsgb_onnx import Explainer
    from tsgb_onnx.backends import device
    from tsgb_onnx.backends.cupy_ops import CupyOps
    from tsgb_onnx.engine import cuda
    from tsgb_onnx.engine.executor import run_program
    from tsgb_onnx.errors import RuntimeUnavailableError

    try:
        device.check_cupy()
    except RuntimeUnavailableError as exc:
        sys.exit(f"bench: error: {exc}")
    try:
        cuda.check_onnxruntime_cuda()
        ort_cuda = True
    except RuntimeUnavailableError as exc:
        ort_cuda = False
        print(
            f"note: {exc}; the forward is recorded on the CPU, and only the CuPy backward "
            "(activations copied to the GPU first) is timed"
        )
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(
        f"GPU: {name}; onnxruntime {ort.__version__} "
        f"({'CUDAExecutionProvider' if ort_cuda else 'CPU forward'}); cupy {cupy.__version__}"
    )
    print(
        "| net | batch | method | ORT CUDA inference (img/s) | explanation (img/s) | "
        "explanation / inference | PyTorch eager reference (img/s) | peak GPU memory of "
        "one explanation: CuPy / device (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ops = CupyOps()
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as folder:
        for net in args.nets.split(","):
            path = export(net, folder)
            session = None
            if ort_cuda:
                options = ort.SessionOptions()
                options.log_severity_level = 3
                session = ort.InferenceSession(path, options, providers=cuda.cuda_providers())
            for method in args.methods.split(","):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    explainer = Explainer(path, method=method, backend="numpy")
                program = explainer.program()
                recorder = cuda.CudaForwardRecorder(explainer.graph) if ort_cuda else None
                for batch in (int(b) for b in args.batches.split(",")):
                    x = (
                        np.random.default_rng(0)
                        .standard_normal((batch, 3, 224, 224))
                        .astype(np.float32)
                    )
                    x_gpu = cupy.asarray(x)
                    target = np.ones(batch, dtype=np.int64)
                    infer = float("nan")
                    if session is not None:
                        binding = session.io_binding()
                        binding.bind_input(
                            session.get_inputs()[0].name,
                            "cuda",
                            0,
                            np.float32,
                            list(x.shape),
                            x_gpu.data.ptr,
                        )
                        for output in session.get_outputs():
                            binding.bind_output(output.name, "cuda", 0)

                        def infer_once():
                            session.run_with_iobinding(binding)
                            binding.synchronize_outputs()

                        infer = gpu_time(infer_once, args.repeats)
                    if recorder is not None:

                        def explain_once():
                            logits, values, shapes = recorder.run(
                                x_gpu, program.record, program.record_shapes
                            )
                            seed = ops.one_hot(target, logits.shape[1])
                            activation = values[program.layer]
                            signal = run_program(program, ops, values, shapes, seed, {})
                            saliency = ops.to_numpy(ops.sum(ops.mul(signal, activation), 1))
                            return saliency
                    else:
                        _, cpu_values, cpu_shapes = explainer.recorder.run(
                            x, program.record, program.record_shapes
                        )
                        classes = explainer.infer(x[:1]).shape[1]

                        gpu_values = {k: cupy.asarray(v) for k, v in cpu_values.items()}

                        def explain_once():  # the backward alone (activations held throughout)
                            values = dict(gpu_values)
                            seed = ops.one_hot(target, classes)
                            activation = values[program.layer]
                            signal = run_program(program, ops, values, dict(cpu_shapes), seed, {})
                            return ops.to_numpy(ops.sum(ops.mul(signal, activation), 1))

                    explain = gpu_time(explain_once, args.repeats)
                    with cuda.GpuMemoryMeter() as meter:
                        explain_once()
                    reference = torch_reference(net, method, batch)
                    if callable(reference):
                        import torch

                        x_torch = torch.as_tensor(x, device="cuda")
                        ref_cell = (
                            f"{batch / gpu_time(lambda: reference(x_torch), args.repeats):.1f}"
                        )
                    else:
                        ref_cell = f"n/a ({reference})"
                    ratio = (infer / explain) if session is not None else float("nan")
                    print(
                        f"| {net} | {batch} | {method} | {batch / infer:.1f} | "
                        f"{batch / explain:.1f} | **{ratio:.2f}×** | {ref_cell} | "
                        f"{meter.cupy_peak_bytes / mib:.0f} / "
                        f"{meter.device_used_bytes / mib:.0f} |",
                        flush=True,
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--nets",
        default=None,
        help="cpu: resnet50,vgg16,mobilenetv2,efficientnet_lite0; "
        "cuda: resnet50,vgg16,efficientnet_lite0",
    )
    parser.add_argument("--methods", default=None, help="cpu: gradient,tsgb; cuda: tsgb")
    parser.add_argument("--batches", default=None, help="cpu: 1,8; cuda: 1,8,64")
    parser.add_argument("--repeats", type=int, default=None, help="cpu: 3; cuda: 5")
    parser.add_argument(
        "--paths",
        default="engine,compiled",
        help="engine: ORT forward + NumPy backward (Explainer(..., "
        "backend='numpy')); compiled: the `tsgb convert` explainer "
        "model in one ORT session",
    )
    args = parser.parse_args()
    defaults = CUDA_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device == "cuda":
        return main_cuda(args)

    import onnxruntime as ort

    from tsgb_onnx import Explainer

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"onnxruntime {ort.__version__} CPUExecutionProvider; numpy {np.__version__}"
    )
    methods = args.methods.split(",")
    paths = args.paths.split(",")
    columns = [(m, p) for m in methods for p in paths]
    print(
        "| net | batch | inference as exported (s) | inference (s) | "
        + " | ".join(f"{m} {p} (s) | {m} {p} / inference" for m, p in columns)
        + " |"
    )
    print("|---|---|---|---|" + "---|---|" * len(columns))
    with tempfile.TemporaryDirectory() as folder:
        for name in args.nets.split(","):
            path = export(name, folder)
            exported = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            session = canonical_session(path)
            input_name = session.get_inputs()[0].name
            runners = {}
            for m in methods:
                if "engine" in paths:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        engine = Explainer(path, method=m, backend="numpy")
                    runners[m, "engine"] = lambda x, e=engine: e.explain(x, target=1)
                if "compiled" in paths:
                    compiled = compiled_session(path, m)
                    runners[m, "compiled"] = lambda x, s=compiled: s.run(
                        ["saliency"], {input_name: x, "target": np.ones(len(x), dtype=np.int64)}
                    )
            for batch in (int(b) for b in args.batches.split(",")):
                x = (
                    np.random.default_rng(0)
                    .standard_normal((batch, 3, 224, 224))
                    .astype(np.float32)
                )
                fns = {
                    "exported": lambda: exported.run(None, {input_name: x}),
                    "inference": lambda: session.run(None, {input_name: x}),
                }
                fns.update({column: (lambda c=column: runners[c](x)) for column in columns})
                medians = interleaved_medians(fns, args.repeats)
                infer = medians["inference"]
                cells = [f"{medians[c]:.3f} | **{medians[c] / infer:.2f}×**" for c in columns]
                print(
                    f"| {name} | {batch} | {medians['exported']:.3f} | {infer:.3f} | "
                    + " | ".join(cells)
                    + " |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

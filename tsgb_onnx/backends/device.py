"""Device choice: which forward recorder and which array backend an explainer runs on.

`resolve_device("cpu" | "cuda" | "auto")` picks the ONNX Runtime providers and the array
namespace. ``"cuda"`` raises `RuntimeUnavailableError` (one line: what is missing, what to do)
when ONNX Runtime has no usable CUDA provider, CuPy is missing, no GPU or driver is found, or
the CUDA libraries (NVRTC, cuBLAS) cannot be used; ``"auto"`` then falls back to the CPU and
warns once per reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

from tsgb_onnx.backends.numpy_ops import NumpyOps
from tsgb_onnx.engine.cuda import (
    CudaForwardRecorder,
    check_onnxruntime_cuda,
    cuda_providers,
    first_line,
    unavailable,
)
from tsgb_onnx.engine.ops import ArrayOps
from tsgb_onnx.engine.record import ForwardRecorder
from tsgb_onnx.errors import MethodError, RuntimeUnavailableError
from tsgb_onnx.ir.graph import Graph

DEVICES = ("cpu", "cuda", "auto")


class GpuFallbackWarning(UserWarning):
    """device='auto' found no usable GPU and runs on the CPU."""


_warned: set[str] = set()


def check_cupy(device_id: int = 0) -> None:
    """Raise unless CuPy is installed and can run the fused kernels on GPU `device_id`."""
    try:
        import cupy
    except ImportError:
        raise unavailable(
            "CuPy is not installed",
            "pip install 'tsgb-onnx[gpu]' (cupy-cuda12x) or use device='cpu'",
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError: no driver, old driver
        raise unavailable(
            f"no usable CUDA GPU ({first_line(exc)})", "check the NVIDIA driver or use device='cpu'"
        ) from None
    if count == 0:
        raise unavailable("no CUDA GPU found", "use device='cpu'")
    if not 0 <= int(device_id) < count:
        raise unavailable(
            f"GPU {device_id} does not exist ({count} found)",
            f"choose a device id in 0..{count - 1}",
        )
    try:
        from tsgb_onnx.backends.cupy_ops import cupy_module

        with cupy.cuda.Device(int(device_id)):
            cupy_module(int(device_id))  # NVRTC
            probe = cupy.ones((2, 2), dtype=cupy.float32)
            float((probe @ probe).sum())  # cuBLAS
    except Exception as exc:  # noqa: BLE001 - missing NVRTC / cuBLAS libraries
        raise unavailable(
            f"CuPy cannot use the CUDA libraries ({first_line(exc)})",
            "install the CUDA toolkit libraries CuPy needs (NVRTC, cuBLAS) or use device='cpu'",
        ) from None


@dataclass
class DeviceChoice:
    """Where an explainer runs: ONNX Runtime providers + the backward's array namespace."""

    name: str  # "cpu" or "cuda"
    providers: list = field(default_factory=list)
    device_id: int = 0
    fallback_reason: str | None = None  # why "auto" chose the CPU

    def ops(self) -> ArrayOps:
        """A fresh array namespace for this device."""
        if self.name == "cuda":
            from tsgb_onnx.backends.cupy_ops import CupyOps

            return CupyOps(self.device_id)
        return NumpyOps()

    def recorder(self, graph: Graph, providers: Sequence | None = None) -> ForwardRecorder:
        """The forward recorder for this device (`providers` overrides the CPU default)."""
        if self.name == "cuda":
            return CudaForwardRecorder(graph, self.device_id)
        return ForwardRecorder(graph, providers or self.providers)


def resolve_device(device: str = "auto", device_id: int = 0) -> DeviceChoice:
    """Resolve "cpu" | "cuda" | "auto" to a `DeviceChoice` (see the module docstring)."""
    if device not in DEVICES:
        raise MethodError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return DeviceChoice("cpu", ["CPUExecutionProvider"], device_id)
    try:
        check_onnxruntime_cuda(device_id)
        check_cupy(device_id)
    except RuntimeUnavailableError as exc:
        if device == "cuda":
            raise
        reason = str(exc).split(": ", 1)[-1].split("; ")[0]
        if reason not in _warned:
            _warned.add(reason)
            warnings.warn(
                f"device='auto': running on the CPU because {reason}",
                GpuFallbackWarning,
                stacklevel=2,
            )
        return DeviceChoice("cpu", ["CPUExecutionProvider"], device_id, fallback_reason=reason)
    return DeviceChoice("cuda", cuda_providers(device_id), device_id)

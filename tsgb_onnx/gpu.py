"""GPU execution: device selection, a CUDA forward recorder and GPU memory accounting.

* `resolve_device("cpu" | "cuda" | "auto")` picks the ONNX Runtime providers and the array
  namespace. ``"cuda"`` raises `RuntimeUnavailableError` (one line: what is missing, what to
  do) when ONNX Runtime has no usable CUDA provider, CuPy is missing, no GPU or driver is
  found, or the CUDA libraries (NVRTC, cuBLAS) cannot be used; ``"auto"`` then falls back to
  the CPU and warns once per reason.
* `CudaForwardRecorder` runs the recording session on the CUDA provider with I/O binding:
  recorded tensors stay in GPU memory and become CuPy arrays over the same device buffers
  (no copy); each buffer is released when its CuPy array is dropped (the executor drops a
  forward tensor after its last use).
* `GpuMemoryMeter` measures the peak bytes CuPy holds during a block, plus the device-wide
  bytes in use (ONNX Runtime's arena included) at its end.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import MethodError, RuntimeUnavailableError, TsgbError
from .graph import Graph
from .record import SHAPE_SUFFIX, ForwardRecorder, _onnxruntime

DEVICES = ("cpu", "cuda", "auto")
CUDA_PROVIDER = "CUDAExecutionProvider"


class GpuFallbackWarning(UserWarning):
    """device='auto' found no usable GPU and runs on the CPU."""


_warned: set[str] = set()


def _unavailable(reason: str, remedy: str) -> RuntimeUnavailableError:
    return RuntimeUnavailableError(f"device='cuda' is unavailable: {reason}; {remedy}")


def check_onnxruntime_cuda(device_id: int = 0, probe: bool = True) -> None:
    """Raise unless ONNX Runtime offers the CUDA provider (and, with `probe`, can load it)."""
    ort = _onnxruntime()
    available = ort.get_available_providers()
    if CUDA_PROVIDER not in available:
        raise _unavailable(
            f"onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
            f"(available: {', '.join(available)})",
            "install onnxruntime-gpu (pip install 'tsgb-onnx[gpu]') or use device='cpu'")
    if not probe:
        return
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=[
            (CUDA_PROVIDER, {"device_id": int(device_id)}), "CPUExecutionProvider"])
        loaded = session.get_providers()
    except Exception as exc:  # noqa: BLE001 - any loader failure means "not usable"
        raise _unavailable(f"ONNX Runtime cannot start {CUDA_PROVIDER}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                           "check the CUDA and cuDNN libraries onnxruntime-gpu needs, "
                           "or use device='cpu'") from None
    if CUDA_PROVIDER not in loaded:
        raise _unavailable(f"ONNX Runtime could not load {CUDA_PROVIDER} "
                           "(its CUDA or cuDNN libraries are missing or do not match the driver)",
                           "install the CUDA/cuDNN versions onnxruntime-gpu needs, "
                           "or use device='cpu'")


def check_cupy(device_id: int = 0) -> None:
    """Raise unless CuPy is installed and can run the fused kernels on GPU `device_id`."""
    try:
        import cupy
    except ImportError:
        raise _unavailable("CuPy is not installed",
                           "pip install 'tsgb-onnx[gpu]' (cupy-cuda12x) or use device='cpu'"
                           ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError: no driver, old driver
        raise _unavailable(f"no usable CUDA GPU ({_first_line(exc)})",
                           "check the NVIDIA driver or use device='cpu'") from None
    if count == 0:
        raise _unavailable("no CUDA GPU found", "use device='cpu'")
    if not 0 <= int(device_id) < count:
        raise _unavailable(f"GPU {device_id} does not exist ({count} found)",
                           f"choose a device id in 0..{count - 1}")
    try:
        from .backends.cupy_ops import cupy_module

        with cupy.cuda.Device(int(device_id)):
            cupy_module(int(device_id))  # NVRTC
            probe = cupy.ones((2, 2), dtype=cupy.float32)
            float((probe @ probe).sum())  # cuBLAS
    except Exception as exc:  # noqa: BLE001 - missing NVRTC / cuBLAS libraries
        raise _unavailable(f"CuPy cannot use the CUDA libraries ({_first_line(exc)})",
                           "install the CUDA toolkit libraries CuPy needs (NVRTC, cuBLAS) "
                           "or use device='cpu'") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class DeviceChoice:
    """Where an explainer runs: ONNX Runtime providers + the backward's array namespace."""

    name: str                       # "cpu" or "cuda"
    providers: list = field(default_factory=list)
    device_id: int = 0
    fallback_reason: str | None = None  # why "auto" chose the CPU

    def ops(self):
        """A fresh array namespace for this device."""
        if self.name == "cuda":
            from .backends.cupy_ops import CupyOps

            return CupyOps(self.device_id)
        from .backends import NumpyOps

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
            warnings.warn(f"device='auto': running on the CPU because {reason}",
                          GpuFallbackWarning, stacklevel=2)
        return DeviceChoice("cpu", ["CPUExecutionProvider"], device_id, fallback_reason=reason)
    return DeviceChoice("cuda", cuda_providers(device_id), device_id)


def cuda_providers(device_id: int = 0) -> list:
    """ONNX Runtime providers for the CUDA recorder (CPU kept for ops CUDA lacks)."""
    return [(CUDA_PROVIDER, {"device_id": int(device_id),
                             "arena_extend_strategy": "kSameAsRequested"}),
            "CPUExecutionProvider"]


# -- zero-copy hand-over from ONNX Runtime to CuPy ----------------------------------------------
def ortvalue_dtype(value) -> np.dtype:
    """NumPy dtype of an OrtValue (`data_type()` is 'tensor(float)' etc.)."""
    from onnx import helper
    from onnx.onnx_ml_pb2 import TensorProto

    text = value.data_type()
    name = text[len("tensor("):-1] if text.startswith("tensor(") else text
    onnx_names = {"float": "FLOAT", "double": "DOUBLE", "float16": "FLOAT16", "int64": "INT64",
                  "int32": "INT32", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}
    if name not in onnx_names:
        raise TsgbError(f"cannot hand an ONNX Runtime tensor of type {text} to the GPU executor")
    return np.dtype(helper.tensor_dtype_to_np_dtype(getattr(TensorProto, onnx_names[name])))


def ortvalue_to_cupy(value, device_id: int = 0):
    """A CuPy array over an OrtValue's device buffer; the array keeps the OrtValue alive."""
    import cupy

    shape = tuple(int(d) for d in value.shape())
    dtype = ortvalue_dtype(value)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return cupy.empty(shape, dtype=dtype)
    memory = cupy.cuda.UnownedMemory(value.data_ptr(), nbytes, owner=value, device_id=device_id)
    return cupy.ndarray(shape, dtype=dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


class IoBindingRecorder(ForwardRecorder):
    """`ForwardRecorder` whose outputs are bound to `device_type` memory with I/O binding.

    `run(x, values, shapes)` keeps `ForwardRecorder`'s contract: (logits as NumPy,
    {tensor: array where ONNX Runtime left it}, {tensor: shape}). On "cpu" the arrays are
    NumPy; `CudaForwardRecorder` turns device buffers into CuPy arrays without a copy.
    """

    device_type = "cpu"

    def __init__(self, graph: Graph, providers: Sequence | None = None, device_id: int = 0,
                 optimize: bool = True):
        super().__init__(graph, providers, optimize)
        self.device_id = int(device_id)

    def _bind_input(self, binding, x):
        """Bind `x`; return (the array bound, its value as the executor sees it)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        binding.bind_cpu_input(self.graph.input_name, x)
        return x, x

    def _array(self, value):
        return value.numpy()

    def _to_numpy(self, array) -> np.ndarray:
        return np.asarray(array)

    def run(self, x, values: tuple[str, ...] = (), shapes: tuple[str, ...] = ()):
        session = self._session(tuple(values), tuple(shapes))
        names = [o.name for o in session.get_outputs()]
        binding = session.io_binding()
        x, x_value = self._bind_input(binding, x)
        for name in names:
            if name.endswith(SHAPE_SUFFIX):
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, self.device_type, self.device_id)
        try:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        except Exception as exc:  # noqa: BLE001
            raise TsgbError(f"ONNX Runtime failed on the input: {_first_line(exc)}") from exc
        outputs = binding.get_outputs()
        binding.clear_binding_outputs()  # the arrays become the buffers' only owners
        binding.clear_binding_inputs()
        recorded: dict[str, Any] = {}
        for name, value in zip(names, outputs):
            recorded[name] = value.numpy() if name.endswith(SHAPE_SUFFIX) else self._array(value)
        del outputs
        input_name = self.graph.input_name
        value_map = {t: recorded[t] for t in values if t in recorded}
        if input_name in values:
            value_map[input_name] = x_value
        shape_map = {t: tuple(int(d) for d in recorded[t + SHAPE_SUFFIX])
                     for t in shapes if t + SHAPE_SUFFIX in recorded}
        if input_name in shapes:
            shape_map[input_name] = tuple(x.shape)
        return self._to_numpy(recorded[self.graph.logits_name]), value_map, shape_map


class CudaForwardRecorder(IoBindingRecorder):
    """The recording session on the CUDA provider; recorded values are CuPy arrays over
    ONNX Runtime's output buffers (no copy). `x` may be NumPy or CuPy."""

    device_type = "cuda"

    def __init__(self, graph: Graph, device_id: int = 0, optimize: bool = True):
        super().__init__(graph, cuda_providers(device_id), device_id, optimize)

    def session_for(self, model, threads: int | None = None):
        session = super().session_for(model, threads)
        if CUDA_PROVIDER not in session.get_providers():
            raise _unavailable(f"ONNX Runtime could not load {CUDA_PROVIDER} for the model",
                               "check the CUDA/cuDNN libraries or use device='cpu'")
        return session

    def _bind_input(self, binding, x):
        import cupy

        if not isinstance(x, cupy.ndarray):
            return super()._bind_input(binding, x)[0], None
        x = cupy.ascontiguousarray(x, dtype=cupy.float32)
        cupy.cuda.get_current_stream().synchronize()  # ONNX Runtime reads on its own stream
        binding.bind_input(self.graph.input_name, "cuda", self.device_id, np.float32,
                           list(x.shape), x.data.ptr)
        return x, x

    def run(self, x, values: tuple[str, ...] = (), shapes: tuple[str, ...] = ()):
        import cupy

        logits, value_map, shape_map = super().run(x, values, shapes)
        name = self.graph.input_name
        if name in value_map and value_map[name] is None:  # a NumPy input the program reads
            value_map[name] = cupy.asarray(np.ascontiguousarray(x, dtype=np.float32))
        return logits, value_map, shape_map

    def _array(self, value):
        return ortvalue_to_cupy(value, self.device_id)

    def _to_numpy(self, array) -> np.ndarray:
        import cupy

        return cupy.asnumpy(array)


# -- memory -----------------------------------------------------------------------------------
def device_memory_used(device_id: int = 0) -> int:
    """Bytes in use on the GPU (every allocator: CuPy's pool, ONNX Runtime's arena, context)."""
    import cupy

    with cupy.cuda.Device(device_id):
        free, total = cupy.cuda.runtime.memGetInfo()
    return int(total - free)


def peak_gpu_memory(device_id: int = 0) -> dict[str, int]:
    """CuPy pool bytes held (its high-water mark unless freed) and device bytes in use."""
    import cupy

    pool = cupy.get_default_memory_pool()
    return {"cupy_pool_bytes": int(pool.total_bytes()),
            "device_used_bytes": device_memory_used(device_id)}


class GpuMemoryMeter:
    """``with GpuMemoryMeter() as meter: ...`` → `meter.cupy_peak_bytes` (peak bytes held by
    CuPy arrays in the block) and `meter.device_used_bytes` (device-wide, at the end)."""

    def __init__(self, device_id: int = 0):
        self.device_id = device_id
        self.cupy_peak_bytes = 0
        self.device_used_bytes = 0
        self._hook = None

    def __enter__(self) -> "GpuMemoryMeter":
        from cupy.cuda import memory_hook

        meter = self

        class _PeakHook(memory_hook.MemoryHook):
            name = "tsgb_peak"

            def __init__(self):
                self.in_use = 0

            def malloc_postprocess(self, **kwargs):
                self.in_use += int(kwargs["mem_size"])
                meter.cupy_peak_bytes = max(meter.cupy_peak_bytes, self.in_use)

            def free_postprocess(self, **kwargs):
                self.in_use -= int(kwargs["mem_size"])

        self._hook = _PeakHook()
        self._hook.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        import cupy

        self._hook.__exit__(*exc)
        cupy.cuda.get_current_stream().synchronize()
        self.device_used_bytes = device_memory_used(self.device_id)

"""CUDA execution on the engine side: the CUDA forward recorder and GPU memory accounting.

* `check_onnxruntime_cuda` raises `RuntimeUnavailableError` (one line: what is missing, what
  to do) when ONNX Runtime has no usable CUDA provider (device choice: `backends.device`).
* `CudaForwardRecorder` runs the recording session on the CUDA provider with I/O binding:
  recorded tensors stay in GPU memory and become CuPy arrays over the same device buffers
  (no copy); each buffer is released when its CuPy array is dropped (the executor drops a
  forward tensor after its last use).
* `GpuMemoryMeter` measures the peak bytes CuPy holds during a block, plus the device-wide
  bytes in use (ONNX Runtime's arena included) at its end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tsgb_onnx.engine.record import SHAPE_SUFFIX, ForwardRecorder, _onnxruntime, to_float32
from tsgb_onnx.errors import RuntimeUnavailableError, TsgbError
from tsgb_onnx.ir.graph import Graph

CUDA_PROVIDER = "CUDAExecutionProvider"


def unavailable(reason: str, remedy: str) -> RuntimeUnavailableError:
    return RuntimeUnavailableError(f"device='cuda' is unavailable: {reason}; {remedy}")


def check_onnxruntime_cuda(device_id: int = 0, probe: bool = True) -> None:
    """Raise unless ONNX Runtime offers the CUDA provider (and, with `probe`, can load it)."""
    ort = _onnxruntime()
    available = ort.get_available_providers()
    if CUDA_PROVIDER not in available:
        raise unavailable(
            f"onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
            f"(available: {', '.join(available)})",
            "install onnxruntime-gpu (pip install 'tsgb-onnx[gpu]') or use device='cpu'",
        )
    if not probe:
        return
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            model.SerializeToString(),
            options,
            providers=[(CUDA_PROVIDER, {"device_id": int(device_id)}), "CPUExecutionProvider"],
        )
        loaded = session.get_providers()
    except Exception as exc:  # noqa: BLE001 - any loader failure means "not usable"
        raise unavailable(
            f"ONNX Runtime cannot start {CUDA_PROVIDER}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            "check the CUDA and cuDNN libraries onnxruntime-gpu needs, or use device='cpu'",
        ) from None
    if CUDA_PROVIDER not in loaded:
        raise unavailable(
            f"ONNX Runtime could not load {CUDA_PROVIDER} "
            "(its CUDA or cuDNN libraries are missing or do not match the driver)",
            "install the CUDA/cuDNN versions onnxruntime-gpu needs, or use device='cpu'",
        )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def cuda_providers(device_id: int = 0) -> list:
    """ONNX Runtime providers for the CUDA recorder (CPU kept for ops CUDA lacks)."""
    return [
        (CUDA_PROVIDER, {"device_id": int(device_id), "arena_extend_strategy": "kSameAsRequested"}),
        "CPUExecutionProvider",
    ]


# -- zero-copy hand-over from ONNX Runtime to CuPy ----------------------------------------------
def ortvalue_dtype(value) -> np.dtype:
    """NumPy dtype of an OrtValue (`data_type()` is 'tensor(float)' etc.)."""
    from onnx import helper
    from onnx.onnx_ml_pb2 import TensorProto

    text = value.data_type()
    name = text[len("tensor(") : -1] if text.startswith("tensor(") else text
    onnx_names = {
        "float": "FLOAT",
        "double": "DOUBLE",
        "float16": "FLOAT16",
        "int64": "INT64",
        "int32": "INT32",
        "int8": "INT8",
        "uint8": "UINT8",
        "bool": "BOOL",
    }
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

    def __init__(
        self,
        graph: Graph,
        providers: Sequence | None = None,
        device_id: int = 0,
        optimize: bool = True,
    ):
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

    def run(self, x, values: tuple[str, ...] = (), shapes: tuple[str, ...] = (), threads=None):
        session = self._session(tuple(values), tuple(shapes), threads)
        names = [o.name for o in session.get_outputs()]
        binding = session.io_binding()
        if isinstance(x, np.ndarray):
            x = self.feed(x)  # the model input's own dtype
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
            raise TsgbError(f"ONNX Runtime failed on the input: {first_line(exc)}") from exc
        outputs = binding.get_outputs()
        binding.clear_binding_outputs()  # the arrays become the buffers' only owners
        binding.clear_binding_inputs()
        recorded: dict[str, Any] = {}
        for name, value in zip(names, outputs):
            recorded[name] = (
                value.numpy() if name.endswith(SHAPE_SUFFIX) else to_float32(self._array(value))
            )
        del outputs
        input_name = self.graph.input_name
        value_map = {t: recorded[t] for t in values if t in recorded}
        if input_name in values:
            value_map[input_name] = to_float32(x_value)
        shape_map = {
            t: tuple(int(d) for d in recorded[t + SHAPE_SUFFIX])
            for t in shapes
            if t + SHAPE_SUFFIX in recorded
        }
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
            raise unavailable(
                f"ONNX Runtime could not load {CUDA_PROVIDER} for the model",
                "check the CUDA/cuDNN libraries or use device='cpu'",
            )
        return session

    def _bind_input(self, binding, x):
        import cupy

        if not isinstance(x, cupy.ndarray):
            return super()._bind_input(binding, x)[0], None
        x = cupy.ascontiguousarray(x, dtype=cupy.float32)
        cupy.cuda.get_current_stream().synchronize()  # ONNX Runtime reads on its own stream
        binding.bind_input(
            self.graph.input_name, "cuda", self.device_id, np.float32, list(x.shape), x.data.ptr
        )
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


class GpuMemoryMeter:
    """``with GpuMemoryMeter() as meter: ...`` → `meter.cupy_peak_bytes` (peak bytes held by
    CuPy arrays in the block) and `meter.device_used_bytes` (device-wide, at the end)."""

    def __init__(self, device_id: int = 0):
        self.device_id = device_id
        self.cupy_peak_bytes = 0
        self.device_used_bytes = 0
        self._hook = None

    def __enter__(self) -> GpuMemoryMeter:
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

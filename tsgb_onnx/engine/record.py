"""Forward recorder: one ONNX Runtime session returning exactly what a program reads."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from tsgb_onnx.errors import (
    InputError,
    RuntimeUnavailableError,
    TsgbError,
    is_out_of_memory,
    out_of_memory,
)
from tsgb_onnx.ir.graph import Graph

SHAPE_SUFFIX = "::shape"
CPU = "CPUExecutionProvider"
# "0" gives every CPU session its own arena again (ONNX Runtime's default)
SHARED_ARENA_ENV = "TSGB_SHARED_ARENA"
_ARENA: dict[str, bool] = {}
_ARENA_LOCK = threading.Lock()


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeUnavailableError(
            "ONNX Runtime is not installed: pip install 'tsgb-onnx[cpu]' "
            "(or 'tsgb-onnx[gpu]' for CUDA)"
        ) from None
    return onnxruntime


def shared_cpu_arena(ort) -> bool:
    """Whether CPU sessions use one arena shared by the whole process.

    ONNX Runtime gives each session its own arena, which keeps the memory of the largest
    run that session ever made: an evaluation holding the explainer of a method, its
    sub-explainers (SmoothGrad's base method, say) and a plain inference session kept the
    peak of each of them at once. One arena registered on ONNX Runtime's environment (once
    per process) and used by every CPU session (`session.use_env_allocators`) is reused by
    all of them: resident memory is the largest single run, not the sum, at the same speed
    (measured in docs/benchmarks.md). `release_memory` hands its unused part back.
    `TSGB_SHARED_ARENA=0` turns it off; if ONNX Runtime refuses to register it, sessions
    keep their own arenas, as before."""
    with _ARENA_LOCK:
        if "ok" not in _ARENA:
            ok = os.environ.get(SHARED_ARENA_ENV, "1") != "0"
            if ok:
                try:
                    info = ort.OrtMemoryInfo(
                        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                    )
                    # max_mem 0 (no cap), extend strategy 0 (next power of two, the default)
                    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 0, -1, -1))
                except Exception as exc:  # registered already (by the host program): use it
                    ok = "already" in str(exc).lower()
            _ARENA["ok"] = ok
        return _ARENA["ok"]


def _cpu_only(providers: Sequence) -> bool:
    return all((p[0] if isinstance(p, tuple) else p) == CPU for p in providers)


def recording_model(graph: Graph, values: Sequence[str], shapes: Sequence[str]) -> onnx.ModelProto:
    """Copy of the model whose outputs are the logits, `values` and the shapes of `shapes`."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    g = model.graph
    del g.output[:]
    wanted = [graph.logits_name] + [
        t for t in values if t not in (graph.logits_name, graph.input_name)
    ]
    for t in dict.fromkeys(wanted):
        g.output.append(
            helper.make_tensor_value_info(t, graph.dtypes.get(t, onnx.TensorProto.FLOAT), None)
        )
    for t in dict.fromkeys(shapes):
        if t == graph.input_name:
            continue
        out = t + SHAPE_SUFFIX
        g.node.append(helper.make_node("Shape", [t], [out], name=f"record_shape_{len(g.node)}"))
        g.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.INT64, None))
    return model


class ForwardRecorder:
    """Runs the model in ONNX Runtime and returns the tensors a program reads."""

    def __init__(self, graph: Graph, providers: Sequence | None = None, optimize: bool = True):
        self.graph = graph
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        # optimize=False turns ONNX Runtime's graph optimisations off, e.g. so that recorded
        # shapes come from its kernels, not from Shape nodes folded from inferred shapes
        self.optimize = optimize
        self._sessions: dict[tuple, object] = {}
        self._sessions_lock = threading.Lock()  # row threads may ask for a session at once

    def _session(
        self, values: tuple[str, ...], shapes: tuple[str, ...], threads: int | None = None
    ):
        key = (values, shapes, threads)
        with self._sessions_lock:
            if key not in self._sessions:
                model = recording_model(self.graph, values, shapes)
                self._sessions[key] = self.session_for(model, threads)
            return self._sessions[key]

    def session_for(self, model: onnx.ModelProto, threads: int | None = None):
        """An ONNX Runtime session on `model` with this recorder's providers."""
        ort = _onnxruntime()
        available = ort.get_available_providers()
        for p in self.providers:
            name = p[0] if isinstance(p, tuple) else p
            if name not in available:
                raise RuntimeUnavailableError(
                    f"ONNX Runtime provider '{name}' is not available "
                    f"(available: {', '.join(available)})"
                )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # an explainer's optional `target` input is an
        if threads:  # initializer, which ORT would warn about
            options.intra_op_num_threads = threads
        if not self.optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if _cpu_only(self.providers) and shared_cpu_arena(ort):
            options.add_session_config_entry("session.use_env_allocators", "1")
        try:
            return ort.InferenceSession(
                model.SerializeToString(), options, providers=self.providers
            )
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(exc, "loading the model into ONNX Runtime") from exc
            raise TsgbError(f"ONNX Runtime cannot load the model: {exc}") from exc

    def run_session(self, session, names: list[str], feeds: dict) -> list:
        """Run `session`; ONNX Runtime failures become one-line errors."""
        try:
            return session.run(names, feeds)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(exc, "running the model in ONNX Runtime", batch=True) from exc
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TsgbError(f"ONNX Runtime failed on the input: {first}") from exc

    def feed(self, x: np.ndarray) -> np.ndarray:
        """`x` (float32) in the model input's own dtype (e.g. float16)."""
        return as_input_dtype(self.graph, x)

    def run(
        self,
        x: np.ndarray,
        values: tuple[str, ...] = (),
        shapes: tuple[str, ...] = (),
        threads: int | None = None,
    ):
        """Forward `x`; return (logits, {tensor: value}, {tensor: shape}); `threads`: the
        session's intra-op threads (None: ONNX Runtime's default).

        The boundary of the engine's float32: `x` is fed in the model's input dtype, and the
        logits and every recorded float tensor of another float type (float16, float64) come
        back as float32; the backward computes in float32 throughout."""
        session = self._session(tuple(values), tuple(shapes), threads)
        names = [o.name for o in session.get_outputs()]
        fed = self.feed(x)
        outs = self.run_session(session, names, {self.graph.input_name: fed})
        recorded = {name: to_float32(out) for name, out in zip(names, outs)}
        value_map = {t: recorded[t] for t in values if t in recorded}
        if self.graph.input_name in values:
            value_map[self.graph.input_name] = to_float32(fed)
        shape_map = {
            t: tuple(int(d) for d in recorded[t + SHAPE_SUFFIX])
            for t in shapes
            if t + SHAPE_SUFFIX in recorded
        }
        if self.graph.input_name in shapes:
            shape_map[self.graph.input_name] = tuple(x.shape)
        return recorded[self.graph.logits_name], value_map, shape_map

    def infer(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Plain inference: the logits only."""
        return self.run(x, threads=threads)[0]

    def release_memory(self) -> bool:
        """Hand the unused memory of ONNX Runtime's CPU arena back to the system.

        An arena keeps the memory of its largest run for the next one; after a phase of
        large batches (an evaluation's method, deletion curves) that is memory nothing will
        use. ONNX Runtime frees an arena's unused regions only at the end of a run made with
        its `memory.enable_memory_arena_shrinkage` run option: this makes one such run, of
        the plain inference session on one zero row (so with the shared arena,
        `shared_cpu_arena`, the whole process's arena shrinks). False, and nothing done,
        when the model's input has no fixed size apart from the batch or is not on the CPU.
        """
        if not _cpu_only(self.providers):
            return False
        shape = list(self.graph.input_shape or ())
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return False
        shape[0] = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1
        ort = _onnxruntime()
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        session = self._session((), ())
        x = self.feed(np.zeros(shape, dtype=np.float32))
        try:
            session.run([self.graph.logits_name], {self.graph.input_name: x}, options)
        except Exception:  # a model that refuses zeros: nothing released, nothing broken
            return False
        return True


def to_float32(value):
    """A recorded float tensor of another float type as float32 (NumPy or CuPy; other
    dtypes unchanged)."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and dtype.kind == "f" and dtype != np.float32:
        return value.astype(np.float32)
    return value


def as_input_dtype(graph: Graph, x: np.ndarray) -> np.ndarray:
    """`x` cast to the dtype of the model's input (float32, float16 or float64)."""
    elem = graph.dtypes.get(graph.input_name, onnx.TensorProto.FLOAT)
    if elem == onnx.TensorProto.FLOAT:
        return x
    if elem in (onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        with np.errstate(over="ignore"):
            cast = x.astype(dtype)
        if not np.isfinite(cast).all():
            raise InputError(
                f"input holds values beyond the range of the model's {dtype.name} input "
                f"'{graph.input_name}' (largest |x| {float(np.abs(x).max()):.3g}): rescale it"
            )
        return cast
    name = onnx.TensorProto.DataType.Name(elem).lower()
    raise InputError(
        f"model input '{graph.input_name}' is {name}: feed models with float32, float16 or "
        "float64 inputs (e.g. convert with onnxconverter-common's keep_io_types=True)"
    )


def first_non_finite(recorder: ForwardRecorder, x: np.ndarray) -> str | None:
    """The first float tensor (in topological order) on the path to the logits whose value
    on `x` holds NaN or Inf, or None. A diagnosis for the failure path only: it records
    every such tensor in one forward pass (a session of its own, not cached)."""
    graph = recorder.graph
    names = [o for n in graph.path_nodes() for o in n.outputs if o and graph.is_float(o)]
    session = recorder.session_for(recording_model(graph, names, ()))
    outputs = {o.name for o in session.get_outputs()}
    names = [t for t in names if t in outputs]
    values = recorder.run_session(session, names, {graph.input_name: as_input_dtype(graph, x)})
    return next((t for t, v in zip(names, values) if not np.isfinite(v).all()), None)

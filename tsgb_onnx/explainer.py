"""Public API: `Explainer` turns a model + method into saliency maps."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsgb_onnx.backends.compile import SALIENCY, SIGNAL, TARGET, compile_explainer
from tsgb_onnx.backends.device import DeviceChoice, resolve_device
from tsgb_onnx.engine.executor import run_program_rows
from tsgb_onnx.engine.ops import ArrayOps
from tsgb_onnx.engine.program import REFERENCE, Program, plan
from tsgb_onnx.engine.record import ForwardRecorder
from tsgb_onnx.errors import InputError, MethodError, ModelError, TargetError
from tsgb_onnx.ir.graph import Graph, ModelLike, build_graph
from tsgb_onnx.methods.base import MapMethod, Method
from tsgb_onnx.methods.result import Explanation, TargetLike, resolve_targets
from tsgb_onnx.methods.table import get_method

__all__ = ["Explainer", "Explanation", "resolve_targets", "BACKENDS"]

BACKENDS = ("auto", "compiled", "numpy")


@dataclass
class _Shared:
    """What every explainer on one model shares: graph, recorder, backend, caches."""

    graph: Graph
    recorder: ForwardRecorder
    ops: ArrayOps
    device: DeviceChoice
    backend: str
    threads: int
    providers: Sequence | None
    consts: dict = field(default_factory=dict)
    subs: dict = field(default_factory=dict)


class Explainer:
    """Explain an ONNX classifier with a registered method.

    >>> ex = Explainer("model.onnx", method="gradient")
    >>> result = ex.explain(x)          # x: float32 [B, C, H, W]
    >>> result.saliency.shape           # (B, H, W)

    `device`: "cpu" (default), "cuda" (ONNX Runtime's CUDA provider records the forward,
    the backward runs in CuPy with the fused kernels of `kernels/`; one clear
    `RuntimeUnavailableError` when that is not possible) or "auto" (cuda when usable,
    else the CPU, with one `GpuFallbackWarning`).
    """

    def __init__(
        self,
        model: ModelLike,
        method: str = "tsgb",
        providers: Sequence | None = None,
        output: str | None = None,
        threads: int | None = None,
        backend: str = "auto",
        device: str = "cpu",
        **options: Any,
    ):
        self.method: Method | MapMethod = get_method(method)
        self.options = self.method.resolve_options(options)
        if isinstance(model, _Shared):  # a sub-explainer: same graph, recorder and caches
            self._shared = model
            compiled = model.backend == "compiled" and self.method.reference is not None
            self.backend = "numpy" if compiled else model.backend  # the engine runs those
        else:
            self._shared = _shared(model, providers, output, threads, backend, device)
            self.backend = self._shared.backend
        self._init_method()

    # what every explainer on this model shares
    graph = property(lambda self: self._shared.graph)
    recorder = property(lambda self: self._shared.recorder)
    ops = property(lambda self: self._shared.ops)
    device = property(lambda self: self._shared.device)
    threads = property(lambda self: self._shared.threads)

    def _init_method(self) -> None:
        self._programs: dict[tuple, Program] = {}
        self._compiled: dict[str | None, object] = {}
        if self.method.reference is not None and self.backend == "compiled":
            raise MethodError(
                f"method '{self.method.name}' needs a reference forward pass, which the compiled "
                "explainer cannot run: use backend='auto' or 'numpy'"
            )
        if isinstance(self.method, Method):
            self.program()  # plan now: an unsupported op fails before anything runs
        else:
            self.sub_explainer(self.method.backward)  # its rules must cover the graph

    def sub_explainer(self, method: str, **options: Any) -> Explainer:
        """An explainer for another method on the same graph and forward recorder
        (nothing is parsed again; built once per method and options)."""
        subs = self._shared.subs
        key = (method, tuple(sorted((k, _option_key(v)) for k, v in options.items())))
        if key not in subs:
            subs[key] = Explainer(self._shared, method, **options)
        return subs[key]

    def on_model(self, model: ModelLike, method: str, **options: Any) -> Explainer:
        """An explainer for `method` on another model with this one's device, threads and
        logits (e.g. meta-saliency's updated weights); engine backend."""
        cpu = self.device.name != "cuda"
        return Explainer(
            model,
            method=method,
            output=self.graph.logits_name,
            providers=self._shared.providers if cpu else None,
            backend="numpy",
            threads=self.threads,
            device=self.device.name,
            **options,
        )

    def method_named(self, name: str) -> Method | MapMethod:
        """The registered method called `name` (MethodError when there is none)."""
        return get_method(name)

    # -- planning ------------------------------------------------------------------------
    def program(self, layer: str | None = None, taps: Sequence[str] = ()) -> Program:
        """The reverse program from the logits to `layer` (default: the model input), also
        returning the signals at `taps`. Map methods have none: MethodError."""
        key = (layer, tuple(taps))
        if key not in self._programs:
            self._programs[key] = plan(self.graph, self.method, self.options, layer, tuple(taps))
        return self._programs[key]

    # -- running -------------------------------------------------------------------------------
    def infer(self, x: np.ndarray) -> np.ndarray:
        """Plain forward pass: the logits."""
        return self.recorder.infer(self._check_input(x))

    def explain(
        self, x: np.ndarray, target: TargetLike = None, layer: str | None = None
    ) -> Explanation:
        """Saliency of `target` (None: top-1 per row; int; or one per row) for batch `x`."""
        if isinstance(self.method, MapMethod):
            result = self.method.compute(self, self._check_input(x), target, layer, self.options)
            result.method = self.method.name
            return result
        session = self._compiled_session(layer)
        if session is not None:
            return self._explain_compiled(session, x, target, layer)
        program, logits, values, shapes = self._record(x, layer)
        targets = self.targets(target, logits)
        seed = self.ops.one_hot(targets, logits.shape[1], dtype=logits.dtype)
        activation = self._activation(values, program.layer, program.reference)
        signal = self._backward(program, values, shapes, seed)
        return self._finish(signal, activation, logits, targets, program)

    def signals(
        self, x: np.ndarray, target: TargetLike = None, layers: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Signals at several tensors from ONE backward pass (engine path).

        Runs the explainer's rule method (a map method: its `backward` method, default
        the exact gradient) and returns ``(logits, targets, {layer: (activation, signal)})``,
        NumPy arrays; `layers` defaults to the model input. A reference method (deeplift)
        returns the activation at `x`, not its difference from the reference.
        """
        if isinstance(self.method, MapMethod):
            return self.sub_explainer(self.method.backward).signals(x, target, layers)
        layers = tuple(dict.fromkeys(layers)) or (self.graph.input_name,)
        program, logits, values, shapes = self._record(x, layers[0], layers)
        targets = self.targets(target, logits)
        seed = self.ops.one_hot(targets, logits.shape[1], dtype=logits.dtype)
        activations = {t: values[t] for t in layers}
        tapped: dict = {}
        self._backward(program, values, shapes, seed, tapped)
        to_np = self.ops.to_numpy
        return (
            np.asarray(logits),
            targets,
            {t: (to_np(activations[t]), to_np(tapped[t])) for t in layers},
        )

    def reference_input(self, x: np.ndarray) -> np.ndarray:
        """The reference pass's input for `x` (methods with a reference, e.g. the baseline)."""
        ref = np.asarray(self.method.reference(x, self.options), dtype=np.float32)
        try:
            return np.ascontiguousarray(np.broadcast_to(ref, x.shape))
        except ValueError:
            raise InputError(
                f"{self.method.name}: the reference input has shape {ref.shape}, which does not "
                f"broadcast to the input's {tuple(x.shape)}: give a float or a matching array"
            ) from None

    def targets(self, target: TargetLike, logits: np.ndarray) -> np.ndarray:
        """Per-row target classes for `logits` (None: top-1; an int; one per row)."""
        if logits.ndim != 2:
            raise TargetError(
                f"the logits '{self.graph.logits_name}' have shape {logits.shape}, not "
                "[batch, classes]: choose the classifier output with output=NAME"
            )
        return resolve_targets(target, logits)

    def _activation(self, values: dict, layer: str, reference: bool):
        """The layer's value; for a reference method, its difference from the reference."""
        if reference:
            return self.ops.sub(values[layer], values[REFERENCE + layer])
        return values[layer]

    # -- the compiled path: the explainer model of `convert`, one ONNX Runtime session ----------
    def _compiled_session(self, layer: str | None):
        """The compiled explainer for `layer` (built on first use), or None for the engine."""
        # a reference method with backend='compiled' was refused in `_init_method`
        if self.backend == "numpy" or self.method.reference is not None:
            return None
        if layer not in self._compiled:
            self.program(layer)  # a bad layer fails here with the planner's message
            try:
                model = compile_explainer(self.graph, self.method, self.options, layer)
                self._compiled[layer] = self.recorder.session_for(model, self.threads)
            except ModelError:
                if self.backend == "compiled":
                    raise
                self._compiled[layer] = None  # e.g. dynamic image sizes: the engine copes
        return self._compiled[layer]

    def _explain_compiled(self, session, x, target, layer) -> Explanation:
        x = self._check_input(x)
        # the explainer's logits output has a static class count (read from ONNX Runtime)
        logits_meta = next(o for o in session.get_outputs() if o.name == self.graph.logits_name)
        classes = int(logits_meta.shape[1])
        batch = x.shape[0] if x.ndim else 1
        if target is None:
            fed = np.full(batch, -1, dtype=np.int64)
        else:
            fed = resolve_targets(target, np.zeros((batch, classes), np.float32))
        saliency, signal, logits = self.recorder.run_session(
            session,
            [SALIENCY, SIGNAL, self.graph.logits_name],
            {self.graph.input_name: x, TARGET: fed},
        )
        targets = np.where(fed < 0, np.argmax(logits, axis=1), fed).astype(np.int64)
        return Explanation(
            saliency=saliency,
            signal=signal,
            logits=logits,
            target=targets,
            layer=self.program(layer).layer,
            method=self.method.name,
        )

    def vjp(self, x: np.ndarray, seed: np.ndarray, layer: str | None = None) -> np.ndarray:
        """Backward signal at `layer` for an arbitrary signal `seed` at the logits."""
        program, logits, values, shapes = self._record(x, layer)
        seed = np.asarray(seed, dtype=logits.dtype)
        if seed.shape != logits.shape:
            raise InputError(f"seed shape {seed.shape} differs from the logits' {logits.shape}")
        seed = self.ops.asarray(seed, dtype=logits.dtype)
        return self.ops.to_numpy(self._backward(program, values, shapes, seed))

    def _record(self, x, layer, taps: Sequence[str] = ()):
        """Check `x`, plan for `layer` (and `taps`), run the recording forward pass(es)."""
        x = self._check_input(x)
        program = self.program(layer, taps)
        plain = tuple(t for t in program.record if not t.startswith(REFERENCE))
        logits, values, shapes = self.recorder.run(x, plain, program.record_shapes)
        if program.reference:
            names = tuple(t[len(REFERENCE) :] for t in program.record if t.startswith(REFERENCE))
            _, ref_values, _ = self.recorder.run(self.reference_input(x), names)
            values.update({REFERENCE + t: v for t, v in ref_values.items()})
        return program, logits, values, shapes

    def _backward(self, program, values, shapes, seed, tapped: dict | None = None):
        # on the GPU one stream does the whole batch; on the CPU, batch slices in threads
        workers = 1 if self.device.name == "cuda" else self.threads
        return run_program_rows(
            program, self.ops, values, shapes, seed, self._shared.consts, workers, tapped
        )

    def _finish(self, signal, activation, logits, targets, program) -> Explanation:
        ops = self.ops
        product = ops.mul(signal, activation)
        axis = self.graph.channel_axis(program.layer)
        saliency = ops.sum(product, axis=axis) if ops.ndim(product) > 1 else product
        return Explanation(
            saliency=ops.to_numpy(saliency),
            signal=ops.to_numpy(signal),
            logits=np.asarray(logits),
            target=targets,
            layer=program.layer,
            method=self.method.name,
        )

    # -- validation ------------------------------------------------------------------------------
    def _check_input(self, x) -> np.ndarray:
        name = self.graph.input_name
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception:
                raise InputError(f"input must be an array, got {type(x).__name__}") from None
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise InputError(f"input must be a real numeric array, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        expected = self.graph.input_shape
        if expected is not None:
            shown = (
                "["
                + ", ".join(
                    str(d) if isinstance(d, int) else "batch" if i == 0 else str(d)
                    for i, d in enumerate(expected)
                )
                + "]"
            )
            if x.ndim != len(expected):
                raise InputError(
                    f"input has shape {tuple(x.shape)} but model input '{name}' is {shown}: "
                    f"give a {len(expected)}-D array"
                )
            for axis, (got, want) in enumerate(zip(x.shape, expected)):
                if isinstance(want, int) and want > 0 and got != want:
                    hint = (
                        "explain one image at a time or export with a dynamic batch"
                        if axis == 0
                        else "resize or transpose the input"
                    )
                    raise InputError(
                        f"input has shape {tuple(x.shape)} but model input '{name}' is "
                        f"{shown} (axis {axis}: {got} != {want}): {hint}"
                    )
        if x.size == 0:
            raise InputError(f"input has shape {tuple(x.shape)}: it holds no values")
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise InputError(
                f"input holds NaN or Inf (first at index {tuple(int(i) for i in bad)}): "
                "clean the input before explaining"
            )
        return x


def _option_key(value):
    """A hashable stand-in for an option value (arrays by content)."""
    if isinstance(value, np.ndarray):
        return ("array", value.shape, str(value.dtype), value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(_option_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _option_key(v)) for k, v in value.items()))
    return value


def _shared(
    model: ModelLike,
    providers: Sequence | None,
    output: str | None,
    threads: int | None,
    backend: str,
    device: str,
) -> _Shared:
    if backend not in BACKENDS:
        raise MethodError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    choice = resolve_device(device)  # "cuda" without a usable GPU fails here
    if choice.name == "cuda":
        if backend == "compiled":
            raise MethodError(
                "backend='compiled' runs on the CPU provider; with "
                "device='cuda' use backend='auto' (the CuPy engine)"
            )
        if providers is not None:
            raise MethodError(
                "providers= applies to device='cpu' only; device='cuda' "
                "chooses the CUDA provider itself"
            )
        backend = "numpy"  # the engine, with CuPy as its array namespace
    graph = build_graph(model, output=output)
    return _Shared(
        graph=graph,
        recorder=choice.recorder(graph, providers),
        ops=choice.ops(),
        device=choice,
        backend=backend,
        # threads of the NumPy backward (batch slices) and of the compiled session
        threads=threads if threads is not None else (os.cpu_count() or 1),
        providers=providers,
    )

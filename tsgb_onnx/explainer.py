"""Public API: `Explainer` turns a model + method into saliency maps."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsgb_onnx.backends.compile import (
    ACTIVATION,
    SALIENCY,
    SEED,
    SIGNAL,
    TAP_SIGNAL,
    TAP_VALUE,
    TARGET,
    compile_explainer,
)
from tsgb_onnx.backends.device import DeviceChoice, resolve_device
from tsgb_onnx.engine.executor import run_program_rows
from tsgb_onnx.engine.ops import ArrayOps
from tsgb_onnx.engine.program import REFERENCE, Program, live_tensors, plan
from tsgb_onnx.engine.record import ForwardRecorder, first_non_finite, to_float32
from tsgb_onnx.errors import (
    InputError,
    MethodError,
    ModelError,
    NonFiniteError,
    TargetError,
    TsgbError,
    UnsupportedOpError,
)
from tsgb_onnx.io.frameworks import ExportedModel, export_framework_model, framework_of
from tsgb_onnx.ir.graph import Graph, ModelLike, build_graph, check_finite_constants
from tsgb_onnx.methods.base import MapMethod, Method, apply_aliases
from tsgb_onnx.methods.result import (
    Explanation,
    TargetLike,
    dense_seed,
    is_dense_target,
    resolve_dense_targets,
    resolve_targets,
)
from tsgb_onnx.methods.table import get_method
from tsgb_onnx.rules.tsgb import final_linear_node

__all__ = ["Explainer", "Explanation", "resolve_targets", "BACKENDS", "EngineFallbackWarning"]

BACKENDS = ("auto", "compiled", "numpy")
NORMALIZATIONS = ("none", "minmax", "abs-max")
ROW_SPLIT_MIN = 16  # rows of a compiled CPU call from which its rows run in parallel threads
# options naming tensors: framework layer names given there resolve like `layer=`
# methods that need a class of [batch, classes] logits, and why (a DenseTarget is refused)
_DENSE_REFUSALS = {
    "contrastive_ebp": "its dual unit contrasts one class with the other classes of the "
    "classifier layer, and a channel summed over positions has no such dual",
    "groupcam": "it scores its masks by a class's softmax probability over [batch, classes] "
    "logits, which a dense output does not have",
    "meta_saliency": "its weight step is taken towards one class logit per image",
}
_LAYER_OPTIONS = ("layer", "layers")


class EngineFallbackWarning(UserWarning):
    """backend='auto' explains with the NumPy engine because the compiled explainer cannot
    hold the model (e.g. a dynamic image size); said once per model and reason."""


@dataclass
class _Compiled:
    """A compiled explainer model, its session, and the one-thread session a large call's
    row slices run on (built on first use)."""

    model: Any
    session: Any
    row_session: Any = None


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
    noted: set = field(default_factory=set)  # the fallback notes already given
    exported: ExportedModel | None = None  # a framework model's export and layer names


class Explainer:
    """Explain an ONNX classifier with a registered method.

    >>> ex = Explainer("model.onnx", method="gradient")
    >>> result = ex.explain(x)          # x: float32 [B, C, H, W]
    >>> result.saliency.shape           # (B, H, W)

    `model` may also be a PyTorch `nn.Module` (with `example=`, an input tensor) or a Keras
    model: it is exported in memory, and `layer=` takes its module / layer names
    ("layer4", "features.29", "block5_conv3") as well as ONNX tensor names. A torch tensor
    input gives torch tensors back.

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
        example: Any = None,
        **options: Any,
    ):
        chosen = get_method(method)  # an unknown name fails before any export
        if isinstance(model, _Shared):  # a sub-explainer: same graph, recorder and caches
            shared = model
        else:
            exported = None
            if framework_of(model) is not None:
                exported = export_framework_model(model, example)
                model = exported.proto
            elif example is not None:
                raise InputError(
                    "example= is the input a PyTorch module is exported on; this model is "
                    "already ONNX: leave example out"
                )
            shared = _shared(model, providers, output, threads, backend, device)
            shared.exported = exported
        self._attach(shared, chosen, options)
        self._plan_method()

    def _attach(self, shared: _Shared, method: Method | MapMethod, options: dict) -> None:
        """Set up `method` with `options` on `shared` (nothing planned yet)."""
        self.method = method
        self._shared = shared
        self.backend = shared.backend
        self._given = apply_aliases(method.name, method.aliases, dict(options))
        self.options = method.resolve_options(self._layer_options(self._given))
        self._programs: dict[tuple, Program] = {}
        self._compiled: dict[tuple, _Compiled | None] = {}
        self._planned = False

    # what every explainer on this model shares
    graph = property(lambda self: self._shared.graph)
    recorder = property(lambda self: self._shared.recorder)
    ops = property(lambda self: self._shared.ops)
    device = property(lambda self: self._shared.device)
    threads = property(lambda self: self._shared.threads)

    def _plan_method(self) -> None:
        """Plan now what explaining will run, so an op without a rule fails before anything
        runs: a one-pass method from the logits down to the model input; a map method, its
        backward down to the tensors it reads (`MapMethod.needed_layers`) and its base."""
        if self._planned:
            return
        if isinstance(self.method, Method):
            self.program()
        else:
            self._plan_map_method()
        self._planned = True

    def _plan_map_method(self) -> None:
        """Plan the map method's backward down to its layers, then build its base method
        (a wrapper's); an op without a rule is an error naming this method."""
        method = self.method
        layers = method.needed_layers(self.graph, self.options)
        if layers:
            try:
                self._backward_explainer().program(layers[0], tuple(layers))
            except UnsupportedOpError as exc:
                raise exc.read_by(method.name, *self._advice(layers)) from None
        base = method.base_method(self.options)
        if base is None or getattr(self.method_named(base[0]), "pass_options", False):
            return  # a wrapper of a wrapper: its own checks refuse it when it runs
        try:
            self.sub_explainer(base[0], **base[1])
        except UnsupportedOpError as exc:
            raise exc.read_by(method.name, *self._advice([self.graph.input_name])) from None

    def _advice(self, layers: Sequence[str]) -> tuple[str, str]:
        """Where a map method reads its backward (`layers`) and what to do when an op on the
        way has no rule: a layer between that op and the logits, unless it needs the input."""
        graph = self.graph
        if graph.input_name in layers:
            return (
                f"from the logits down to the model input '{graph.input_name}'",
                f"choose a method that reads a layer above it (gradcam, groupcam, normgrad), "
                f"or see `tsgb inspect MODEL --method {self.method.name}`",
            )
        shown = ", ".join(f"'{t}'" for t in layers[:3]) + (" ..." if len(layers) > 3 else "")
        noun = "layer" if len(layers) == 1 else "layers"
        return (
            f"from the logits down to {noun} {shown}",
            "choose a layer between it and the logits (`tsgb inspect MODEL --tensors` lists them)",
        )

    def _backward_explainer(self) -> Explainer:
        """The explainer of this map method's `backward` rule method, planned only for the
        layers asked of it (not down to the input)."""
        return self._sub(self.method.backward, {}, plan=False)

    def tensor_of(self, layer: Any) -> Any:
        """The ONNX tensor name(s) a layer name means: a tensor of the graph stays itself; a
        module / layer name of a framework model given to the constructor maps to the tensor
        it outputs; a list maps element-wise; anything else is returned as it is."""
        if layer is None:
            return None
        if isinstance(layer, (list, tuple)):
            return [self.tensor_of(name) for name in layer]
        if not isinstance(layer, str):
            return layer  # the method's option check or the planner says what is wrong
        graph, exported = self.graph, self._shared.exported
        if exported is None or layer == graph.input_name or layer in graph.producer:
            return layer
        return exported.tensor_for(layer)

    def _layer_options(self, options: dict) -> dict:
        return {k: self.tensor_of(v) if k in _LAYER_OPTIONS else v for k, v in options.items()}

    def with_options(self, **options: Any) -> Explainer:
        """This explainer with some options changed (built once per option set; the graph,
        recorder and caches are shared). Other libraries' names are accepted where the
        method lists them as aliases (e.g. Captum's ``n_steps``)."""
        changed = apply_aliases(self.method.name, self.method.aliases, options)
        return self.sub_explainer(self.method.name, **{**self._given, **changed})

    def sub_explainer(self, method: str, **options: Any) -> Explainer:
        """An explainer for another method on the same graph and forward recorder
        (nothing is parsed again; built once per method and options)."""
        return self._sub(method, options, plan=True)

    def _sub(self, method: str, options: dict, plan: bool) -> Explainer:
        """The shared sub-explainer of `method` with `options`; `plan`: planned as a new
        explainer is (else each program is planned when first used)."""
        subs = self._shared.subs
        key = (method, tuple(sorted((k, _option_key(v)) for k, v in options.items())))
        if key not in subs:
            sub = Explainer.__new__(Explainer)
            sub._attach(self._shared, get_method(method), options)
            subs[key] = sub
        if plan:
            subs[key]._plan_method()
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
        x = self._check_input(x)
        logits = self.recorder.infer(x)
        self._check_finite(x, {"logits": logits})
        return logits

    def infer_before_rows(self, x: np.ndarray) -> np.ndarray:
        """The logits as `infer`, for a pass followed by row-sliced calls (SmoothGrad's and
        Integrated Gradients' clean pass): on the CPU it runs on one-thread sessions, rows
        split over the explainer's threads. A multi-thread ONNX Runtime session's workers
        spin for a while after each run and slowed the row threads that follow (the whole
        method 1.1-1.45x slower on the small nets, tools/bench_averaging.py)."""
        fixed = isinstance((self.graph.input_shape or (None,))[0], int)
        if fixed or self.device.name == "cuda":
            return self.infer(x)
        x = self._check_input(x)
        workers = max(1, min(self.threads or os.cpu_count() or 1, len(x)))
        infer = self.recorder.infer
        logits = np.concatenate(
            list(_row_pool(workers).map(lambda part: infer(part, 1), _row_slices(x, workers)))
        )
        self._check_finite(x, {"logits": logits})
        return logits

    def explain(
        self,
        x: Any,
        target: TargetLike = None,
        layer: str | Sequence[str] | None = None,
        *,
        normalize: str = "none",
        **options: Any,
    ) -> Explanation:
        """Saliency of `target` (None: top-1 per row; int; or one per row) for batch `x`.
        A dense output (segmentation map [B, C, H, W], ...) takes a `DenseTarget(channel,
        mask=..., box=...)` or one per row: the score is the channel summed over the mask.

        `x`: a NumPy array, or a torch tensor (the result's arrays are then CPU tensors).
        `layer`: a tensor name or, for a framework model, a module / layer name (gradcam:
        a list of them). `normalize`: "none" (the raw map), "minmax" per image to [0, 1]
        (pytorch-grad-cam's scaling) or "abs-max" per image to [-1, 1]. Other keywords
        change the method's options for this call (`with_options`).

        A NaN or Inf logit, map or signal is a `NonFiniteError` naming the first non-finite
        tensor of the forward pass (checked once per call, on the outputs)."""
        if normalize not in NORMALIZATIONS:
            raise InputError(
                f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}"
            )
        if options:
            explainer = self.with_options(**options)
            return explainer.explain(x, target, layer, normalize=normalize)
        torch_in = _is_torch(x)
        x = self._check_input(_to_numpy(x) if torch_in else x)
        result = self._explain(x, _to_numpy(target) if _is_torch(target) else target, layer)
        if normalize != "none":
            result.saliency = _normalized(result.saliency, normalize)
        return _to_torch(result) if torch_in else result

    def explain_layers(
        self, x: Any, layers: Sequence[str], target: TargetLike = None
    ) -> dict[str, Explanation]:
        """One backward pass, an `Explanation` at each of `layers` (one-pass methods)."""
        if not isinstance(self.method, Method):
            raise MethodError(
                f"explain_layers needs a one-pass method; '{self.method.name}' is a map "
                "method: call explain(x, layer=...) per layer"
            )
        torch_in = _is_torch(x)
        x = _to_numpy(x) if torch_in else x
        tensors = [self.tensor_of(name) for name in layers]
        logits, targets, taken = self.signals(x, target, tensors)
        results = {}
        for name, tensor in zip(layers, tensors):
            activation, signal = taken[tensor]
            product = signal * activation
            axis = self.graph.channel_axis(tensor)
            result = Explanation(
                saliency=product.sum(axis=axis) if product.ndim > 1 else product,
                signal=signal,
                logits=logits,
                target=targets,
                layer=tensor,
                method=self.method.name,
                activation=activation,
            )
            results[name] = _to_torch(result) if torch_in else result
        return results

    def _explain(self, x: np.ndarray, target: TargetLike, layer) -> Explanation:
        layer = self.tensor_of(layer)
        dense = self._dense_target(target)
        if isinstance(layer, list) and not getattr(self.method, "several_layers", False):
            hint = (
                "explain_layers(x, layers) for several from one backward pass"
                if isinstance(self.method, Method)
                else "one call per layer"
            )
            raise MethodError(
                f"method '{self.method.name}' explains one layer per call: use {hint}"
            )
        if isinstance(self.method, MapMethod):
            result = self.method.compute(self, x, target, layer, self.options)
            result.method = self.method.name
        else:
            compiled = self._compiled_session(layer, dense=dense)
            if compiled is not None:
                result = self._explain_compiled(compiled, x, target, layer)
            else:
                result = self._explain_engine(x, target, layer)
        outputs = {"logits": result.logits, "map": result.saliency, "signal": result.signal}
        self._check_finite(x, outputs, result.layer, targets=result.target)
        return result

    def _explain_engine(self, x: np.ndarray, target: TargetLike, layer: str | None):
        program, logits, values, shapes = self._record(x, layer)
        self._check_finite(x, {"logits": logits})  # before a backward pass through NaN
        targets = self.targets(target, logits)
        seed = self._seed(targets, logits)
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
            try:
                return self._backward_explainer().signals(x, target, layers)
            except UnsupportedOpError as exc:  # a layer given now, below an op without a rule
                wanted = self.tensor_of(list(layers)) or [self.graph.input_name]
                raise exc.read_by(self.method.name, *self._advice(wanted)) from None
        layers = tuple(dict.fromkeys(self.tensor_of(list(layers)))) or (self.graph.input_name,)
        x = self._check_input(x)
        compiled = self._compiled_session(layers[0], layers, self._dense_target(target))
        if compiled is not None:
            logits, targets, taken = self._signals_compiled(compiled, x, target, layers)
        else:
            logits, targets, taken = self._signals_engine(x, target, layers)
        checked = {f"activation at '{t}'": a for t, (a, _) in taken.items()}
        checked.update({f"signal at '{t}'": g for t, (_, g) in taken.items()})
        self._check_finite(x, {"logits": logits, **checked}, layers[0], targets=targets)
        return logits, targets, taken

    def _signals_engine(self, x, target, layers):
        program, logits, values, shapes = self._record(x, layers[0], layers)
        self._check_finite(x, {"logits": logits})
        targets = self.targets(target, logits)
        seed = self._seed(targets, logits)
        activations = {t: values[t] for t in layers}
        tapped: dict = {}
        self._backward(program, values, shapes, seed, tapped)
        to_np = self.ops.to_numpy
        taken = {t: (to_np(activations[t]), to_np(tapped[t])) for t in layers}
        return np.asarray(logits), targets, taken

    def _signals_compiled(self, compiled: _Compiled, x, target, layers):
        feeds, fed = self._session_feeds(compiled.session, x, target)
        names = [self.graph.logits_name]
        for i in range(len(layers)):
            names += [TAP_VALUE.format(i), TAP_SIGNAL.format(i)]
        logits, *tapped = self._run_compiled(compiled, names, feeds)
        logits = to_float32(logits)
        targets = _session_targets(fed, logits)
        taken = {t: (tapped[2 * i], tapped[2 * i + 1]) for i, t in enumerate(layers)}
        return logits, targets, taken

    def _session_feeds(self, session, x, target) -> tuple[dict, np.ndarray]:
        """The compiled explainer's feeds for `x` and `target`, and the targets as fed: class
        indices (-1: top-1), or resolved DenseTargets whose seed is fed as `seed`."""
        feeds = {self.graph.input_name: self.recorder.feed(x)}
        if not is_dense_target(target):
            fed = self._fed_targets(session, x, target)
            feeds[TARGET] = fed
            return feeds, fed
        seed_meta = next(i for i in session.get_inputs() if i.name == SEED)
        shape = (x.shape[0],) + tuple(int(d) for d in seed_meta.shape[1:])
        fed = resolve_dense_targets(target, shape, self._dense_axis())
        feeds[SEED] = dense_seed(fed, shape)
        return feeds, fed

    def _fed_targets(self, session, x, target) -> np.ndarray:
        """The compiled explainer's `target` input: one class per row, -1 for top-1 (the
        class count is read from its logits output, which is static)."""
        logits_meta = next(o for o in session.get_outputs() if o.name == self.graph.logits_name)
        classes = int(logits_meta.shape[1])
        batch = x.shape[0] if x.ndim else 1
        if target is None:
            return np.full(batch, -1, dtype=np.int64)
        return resolve_targets(target, np.zeros((batch, classes), np.float32))

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
        """Per-row target classes for `logits` (None: top-1; an int; one per row); for a
        dense output and DenseTarget(s), the resolved DenseTarget of each row ([B] objects)."""
        if is_dense_target(target):
            return resolve_dense_targets(target, np.shape(logits), self._dense_axis())
        if logits.ndim != 2:
            raise TargetError(self._dense_output_message(logits.shape))
        return resolve_targets(target, logits)

    def _seed(self, targets: np.ndarray, logits):
        """The backward's seed at the logits: one_hot(targets), or for resolved DenseTargets
        each row's channel one-hot x mask."""
        if targets.dtype == object:
            return self.ops.asarray(dense_seed(targets, logits.shape), dtype=logits.dtype)
        return self.ops.one_hot(targets, logits.shape[1], dtype=logits.dtype)

    def _dense_axis(self) -> int:
        """The dense output's default channel axis: 1, or -1 when it is channels-last."""
        return self.graph.channel_axis(self.graph.logits_name)

    def check_target(self, target: TargetLike) -> None:
        """Refuse, before any input is read, a target this explainer cannot explain: a
        DenseTarget for a method that needs a class (MethodError), or one that does not fit
        the output when the output's shape is fixed apart from the batch (TargetError);
        a class target on a dense output (TargetError)."""
        dense = self._dense_target(target)
        shape = self.graph.shapes.get(self.graph.logits_name)
        if dense and shape is not None and all(isinstance(d, int) for d in shape[1:]):
            rows = len(target) if isinstance(target, (list, tuple)) else 1
            resolve_dense_targets(target, (rows, *shape[1:]), self._dense_axis())

    def _dense_target(self, target: TargetLike) -> bool:
        """Whether `target` is dense: a MethodError when the method needs a class, a
        TargetError for a class target on an output that is not [batch, classes]."""
        if is_dense_target(target):
            refusal = self._dense_refusal()
            if refusal is not None:
                raise MethodError(refusal)
            return True
        shape = self.graph.shapes.get(self.graph.logits_name)
        if shape is not None and len(shape) > 2:
            raise TargetError(self._dense_output_message(shape))
        return False

    def _dense_output_message(self, shape) -> str:
        """Why a class target does not apply to logits of `shape` (not [batch, classes])."""
        shown = "[" + ", ".join(str(d) if isinstance(d, int) else "batch" for d in shape) + "]"
        if len(shape) < 3:
            return (
                f"the logits '{self.graph.logits_name}' have shape {shown}, not "
                "[batch, classes]: choose the classifier output with output=NAME"
            )
        return (
            f"the output '{self.graph.logits_name}' has shape {shown}, not [batch, classes], "
            "so a class target does not apply: explain a channel over output positions with "
            "target=tsgb_onnx.DenseTarget(channel, mask=..., box=...) (CLI: --target CHANNEL "
            "--target-mask MASK.png or --target-box y0,x0,y1,x1), or choose a classifier "
            "output with output=NAME"
        )

    def _dense_refusal(self) -> str | None:
        """Why this explainer's method cannot explain a DenseTarget, or None."""
        name = self.method.name
        why = _DENSE_REFUSALS.get(name)
        if name in ("normgrad", "selective_normgrad") and self.options.get("meta_saliency"):
            why = _DENSE_REFUSALS["meta_saliency"]
        if name == "tsgb" and final_linear_node(self.graph) is not None:
            why = (
                "its final-layer rule TSGB-FC (eq. 1-2) rectifies a Gemm/MatMul producing "
                f"[batch, classes] logits, and such a layer produces '{self.graph.logits_name}'"
            )
        if why is None:
            return None
        return (
            f"method '{name}' does not apply to a dense output: {why}; use gradient, "
            "input_x_gradient, guided_backprop, smoothgrad, integrated_gradients or gradcam"
        )

    def _activation(self, values: dict, layer: str, reference: bool):
        """The layer's value; for a reference method, its difference from the reference."""
        if reference:
            return self.ops.sub(values[layer], values[REFERENCE + layer])
        return values[layer]

    # -- the compiled path: the explainer model of `convert`, one ONNX Runtime session ----------
    def _compiled_session(self, layer: str | None, taps: tuple[str, ...] = (), dense: bool = False):
        """The compiled explainer for `layer` and `taps` (built on first use), or None for
        the engine; `dense`: the one fed a DenseTarget's seed."""
        if self.backend == "numpy":
            return None
        key = (layer, taps, "dense") if dense else (layer, taps)
        if key not in self._compiled:
            self.program(layer, taps)  # a bad layer fails here with the planner's message
            try:
                model = compile_explainer(self.graph, self.method, self.options, layer, taps, dense)
                session = self.recorder.session_for(model, self.threads)
                self._compiled[key] = _Compiled(model, session)
            except ModelError as exc:  # e.g. dynamic image sizes: the engine copes
                if self.backend == "compiled":
                    raise
                self._compiled[key] = None
                self._note(
                    f"the compiled explainer cannot hold this model ({exc}); explaining "
                    "with the NumPy engine instead (the same maps, slower)"
                )
        return self._compiled[key]

    def _row_workers(self, batch: int) -> int:
        """Threads a compiled call of `batch` rows is split over (1: one session run)."""
        fixed = isinstance((self.graph.input_shape or (None,))[0], int)
        if fixed or self.device.name == "cuda" or batch < ROW_SPLIT_MIN:
            return 1
        return max(1, min(self.threads or os.cpu_count() or 1, batch // (ROW_SPLIT_MIN // 2)))

    def _run_compiled(self, compiled: _Compiled, names: list[str], feeds: dict) -> list:
        """Run the compiled explainer. A large call on the CPU is split into row slices run
        in parallel threads on a one-thread session of the same model (rows are
        independent): ONNX Runtime's threads inside each op use the cores worse than
        whole rows do (measured in docs/benchmarks.md: up to 1.9x on a ResNet-style net)."""
        batch = len(next(iter(feeds.values())))
        workers = self._row_workers(batch)
        if workers <= 1:
            return self.recorder.run_session(compiled.session, names, feeds)
        if compiled.row_session is None:
            compiled.row_session = self.recorder.session_for(compiled.model, 1)
        row_session = compiled.row_session
        slices = zip(*(_row_slices(v, workers) for v in feeds.values()))
        parts = [dict(zip(feeds, values)) for values in slices]
        run = self.recorder.run_session
        runs = list(_row_pool(workers).map(lambda f: run(row_session, names, f), parts))
        return [np.concatenate([run[i] for run in runs]) for i in range(len(names))]

    def _note(self, message: str) -> None:
        """Warn with `message` once per model (sub-explainers share the record)."""
        if message not in self._shared.noted:
            self._shared.noted.add(message)
            warnings.warn(message, EngineFallbackWarning, stacklevel=5)

    def _explain_compiled(self, compiled: _Compiled, x, target, layer) -> Explanation:
        feeds, fed = self._session_feeds(compiled.session, x, target)
        saliency, signal, logits, activation = self._run_compiled(
            compiled, [SALIENCY, SIGNAL, self.graph.logits_name, ACTIVATION], feeds
        )
        logits = to_float32(logits)
        targets = _session_targets(fed, logits)
        return Explanation(
            saliency=saliency,
            signal=signal,
            logits=logits,
            target=targets,
            layer=self.program(layer).layer,
            method=self.method.name,
            activation=activation,
        )

    def vjp(self, x: np.ndarray, seed: np.ndarray, layer: str | None = None) -> np.ndarray:
        """Backward signal at `layer` for an arbitrary signal `seed` at the logits."""
        x = self._check_input(x)
        program, logits, values, shapes = self._record(x, layer)
        self._check_finite(x, {"logits": logits})
        seed = np.asarray(seed, dtype=logits.dtype)
        if seed.shape != logits.shape:
            raise InputError(f"seed shape {seed.shape} differs from the logits' {logits.shape}")
        if not np.isfinite(seed).all():
            raise InputError("seed holds NaN or Inf: give a finite seed")
        signal = self.ops.to_numpy(
            self._backward(program, values, shapes, self.ops.asarray(seed, dtype=logits.dtype))
        )
        self._check_finite(x, {"signal": signal}, layer, seed=seed)
        return signal

    def _record(self, x, layer, taps: Sequence[str] = ()):
        """Plan for `layer` (and `taps`), run the recording forward pass(es) on `x` (checked
        by the caller)."""
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
            activation=ops.to_numpy(activation),
        )

    # -- non-finite results ------------------------------------------------------------------
    def _check_finite(
        self,
        x: np.ndarray,
        outputs: dict[str, Any],
        layer: str | None = None,
        targets: np.ndarray | None = None,
        seed: np.ndarray | None = None,
    ) -> None:
        """NonFiniteError when an output holds NaN/Inf: one `isfinite` per output and call;
        only then are the forward pass and (with `targets` or `seed`) the backward diagnosed."""
        for what, value in outputs.items():
            if value is not None and not np.isfinite(value).all():
                if seed is None and targets is not None:  # the seed of `targets`
                    seed = _seed_array(targets, outputs["logits"])
                raise NonFiniteError(self._diagnose(x, what, np.asarray(value), layer, seed))

    def _diagnose(self, x, what: str, value: np.ndarray, layer, seed) -> str:
        """The message for a non-finite `value`: where it starts, on the first failing row."""
        kind = "NaN" if np.isnan(value).any() else "Inf"
        bad = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1) if value.ndim else [True]
        row = min(int(np.argmax(bad)), len(x) - 1)
        batch = (self.graph.input_shape or (None,))[0]
        rows = slice(None) if isinstance(batch, int) and batch > 0 else slice(row, row + 1)
        head = f"{kind} in the {what} (row {row})"
        try:
            return head + self._culprit(x[rows], None if seed is None else seed[rows], layer)
        except TsgbError as exc:  # the diagnosis failed: the NaN is still the error
            return f"{head}; where it starts could not be found ({exc})"

    def _culprit(self, x, seed, layer) -> str:
        """The first non-finite tensor of the forward pass, else (a rule method with a
        `seed`) the first non-finite signal of the backward, as the rest of a message."""
        cpu = self.device.name != "cuda"
        recorder = ForwardRecorder(self.graph, self._shared.providers if cpu else None)
        tensor = first_non_finite(recorder, x)
        if tensor is not None:
            node = self.graph.producer[tensor]
            return (
                f": the forward pass first becomes non-finite at tensor '{tensor}' (output of "
                f"node '{node.name}' ({node.op_type})) on the way to the logits, as its values "
                "overflow float32 or leave the op's domain on this input: check the model's "
                "weights and the input's scale"
            )
        found = None
        if seed is not None and isinstance(self.method, Method):
            found = self._first_non_finite_signal(x, seed, layer)
        if found is None:
            return (
                f" of method '{self.method.name}' although every tensor of the forward pass "
                "is finite: the method divides by zero or overflows float32 on this input; "
                "try another method or rescale the input"
            )
        tensor, node = found
        return (
            f": the forward pass is finite, but the backward signal of method "
            f"'{self.method.name}' first becomes non-finite at tensor '{tensor}' (the step of "
            f"node '{node.name}' ({node.op_type})), which divides by (near) zero or overflows "
            "float32 on this input: try another method or rescale the input"
        )

    def _first_non_finite_signal(self, x, seed, layer):
        """(tensor, node) of the first signal, in backward order, that is not finite: one
        more backward pass with every tensor on the path tapped (the failure path only)."""
        graph = self.graph
        live = live_tensors(graph, layer)
        layer = layer or graph.input_name
        taps = tuple(
            t
            for n in graph.nodes
            for t in n.outputs
            if t in live and t not in (layer, graph.logits_name)
        )
        program, logits, values, shapes = self._record(x, layer, taps)
        tapped: dict = {}
        seed = self.ops.asarray(np.asarray(seed, dtype=np.float32), dtype=logits.dtype)
        tapped[layer] = self._backward(program, values, shapes, seed, tapped)
        for step in program.steps:
            for t in step.produces:
                if t in tapped and not np.isfinite(self.ops.to_numpy(tapped[t])).all():
                    return t, step.node
        return None

    # -- validation ------------------------------------------------------------------------------
    def _check_input(self, x) -> np.ndarray:
        name = self.graph.input_name
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except MemoryError:
                raise
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


_ROW_POOLS: dict[int, ThreadPoolExecutor] = {}


def _row_pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of `workers` threads, kept for the process (starting threads per call
    costs milliseconds)."""
    if workers not in _ROW_POOLS:
        _ROW_POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="tsgb-rows")
    return _ROW_POOLS[workers]


def _row_slices(a, parts: int) -> list:
    """`a` cut into `parts` consecutive row slices of near-equal size."""
    bounds = [len(a) * i // parts for i in range(parts + 1)]
    return [a[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


def _is_torch(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor's values as NumPy (any device, no autograd history)."""
    return value.detach().cpu().numpy()


def _to_torch(result: Explanation) -> Explanation:
    """`result` with its arrays as CPU torch tensors (sharing memory)."""
    import torch

    for name in ("saliency", "signal", "logits", "target", "activation"):
        value = getattr(result, name)
        if isinstance(value, np.ndarray) and value.dtype != object:  # DenseTargets stay
            setattr(result, name, torch.from_numpy(np.ascontiguousarray(value)))
    return result


def _session_targets(fed: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """The targets a compiled explainer explained: a fed class (< 0: the row's top-1), or
    the resolved DenseTargets."""
    if fed.dtype == object:
        return fed
    return np.where(fed < 0, np.argmax(logits, axis=1), fed).astype(np.int64)


def _seed_array(targets: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """The NumPy seed of resolved `targets` at `logits` (class one-hots or dense masks)."""
    if targets.dtype == object:
        return dense_seed(targets, np.shape(logits))
    return np.eye(logits.shape[1], dtype=np.float32)[targets]


def _normalized(saliency: np.ndarray, how: str) -> np.ndarray:
    """Per image: "minmax" to [0, 1], "abs-max" to [-1, 1] (an all-zero map stays 0)."""
    flat = saliency.reshape(len(saliency), -1).astype(np.float64)
    shape = (-1,) + (1,) * (saliency.ndim - 1)
    if how == "minmax":
        low = flat.min(axis=1)
        span = flat.max(axis=1) - low
        out = (saliency - low.reshape(shape)) / np.where(span > 0, span, 1.0).reshape(shape)
    else:
        peak = np.abs(flat).max(axis=1)
        out = saliency / np.where(peak > 0, peak, 1.0).reshape(shape)
    return out.astype(np.float32)


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
    check_finite_constants(graph)  # a NaN weight on the path: refused before anything runs
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

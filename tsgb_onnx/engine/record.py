"""Forward recorder: one ONNX Runtime session returning exactly what a program reads."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from tsgb_onnx.errors import RuntimeUnavailableError, TsgbError
from tsgb_onnx.ir.graph import Graph

SHAPE_SUFFIX = "::shape"


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeUnavailableError(
            "ONNX Runtime is not installed: pip install 'tsgb-onnx[cpu]' "
            "(or 'tsgb-onnx[gpu]' for CUDA)"
        ) from None
    return onnxruntime


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

    def _session(self, values: tuple[str, ...], shapes: tuple[str, ...]):
        key = (values, shapes)
        if key not in self._sessions:
            self._sessions[key] = self.session_for(recording_model(self.graph, values, shapes))
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
        try:
            return ort.InferenceSession(
                model.SerializeToString(), options, providers=self.providers
            )
        except Exception as exc:
            raise TsgbError(f"ONNX Runtime cannot load the model: {exc}") from exc

    def run_session(self, session, names: list[str], feeds: dict) -> list:
        """Run `session`; ONNX Runtime failures become one-line errors."""
        try:
            return session.run(names, feeds)
        except Exception as exc:
            raise TsgbError(
                f"ONNX Runtime failed on the input: {str(exc).splitlines()[0]}"
            ) from exc

    def run(self, x: np.ndarray, values: tuple[str, ...] = (), shapes: tuple[str, ...] = ()):
        """Forward `x`; return (logits, {tensor: value}, {tensor: shape})."""
        session = self._session(tuple(values), tuple(shapes))
        names = [o.name for o in session.get_outputs()]
        outs = self.run_session(session, names, {self.graph.input_name: x})
        recorded = dict(zip(names, outs))
        value_map = {t: recorded[t] for t in values if t in recorded}
        if self.graph.input_name in values:
            value_map[self.graph.input_name] = x
        shape_map = {
            t: tuple(int(d) for d in recorded[t + SHAPE_SUFFIX])
            for t in shapes
            if t + SHAPE_SUFFIX in recorded
        }
        if self.graph.input_name in shapes:
            shape_map[self.graph.input_name] = tuple(x.shape)
        return recorded[self.graph.logits_name], value_map, shape_map

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Plain inference: the logits only."""
        return self.run(x)[0]

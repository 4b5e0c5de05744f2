"""Array executor: runs a `Program` on recorded activations with any array namespace."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tsgb_onnx.engine.program import REFERENCE, Program, Step
from tsgb_onnx.errors import ModelError
from tsgb_onnx.ir.graph import Node


class StepView:
    """What a rule sees of the forward pass: its node's recorded inputs and outputs
    (and, for methods with a reference pass, their reference values: `rx(i)`, `ry(i)`)."""

    __slots__ = ("_node", "_step", "_values", "_shapes", "_ops", "_consts")

    def __init__(self, step: Step, values: dict, shapes: dict, ops, consts: dict):
        self._node: Node = step.node
        self._step = step
        self._values = values
        self._shapes = shapes
        self._ops = ops
        self._consts = consts

    def _tensor(self, name: str):
        if name in self._values:
            return self._values[name]
        const = self._node.graph.constants.get(name)
        if const is not None:
            if name not in self._consts:
                # float constants in the backward's float32 (float16 / float64 models)
                dtype = np.float32 if const.dtype.kind == "f" else const.dtype
                self._consts[name] = self._ops.asarray(const, dtype=dtype)
            return self._consts[name]
        raise KeyError(f"tensor '{name}' was not recorded for node '{self._node.name}'")

    def x(self, i: int):
        return self._tensor(self._node.inputs[i])

    def y(self, i: int):
        return self._tensor(self._node.outputs[i])

    def rx(self, i: int):
        """Input `i` in the reference forward pass (a constant is its own reference)."""
        name = self._node.inputs[i]
        return self._tensor(name if name in self._node.graph.constants else REFERENCE + name)

    def ry(self, i: int):
        """Output `i` in the reference forward pass."""
        return self._tensor(REFERENCE + self._node.outputs[i])

    def exposed(self, i: int) -> bool:
        """Whether the signal of input `i` is read by the caller (the program's layer or a
        tap), so it must be exactly the rule's signal, not only equivalent upstream."""
        return i < len(self._node.inputs) and self._node.inputs[i] in self._step.exposed

    def caller_reads(self, tensor: str) -> bool:
        """Whether the caller reads the signal of `tensor` (the program's layer or a tap)."""
        return tensor in self._step.exposed

    def tensor(self, name: str):
        """A forward tensor the rule declared with `"@name"` in its reads."""
        return self._tensor(name)

    def x_shape(self, i: int) -> tuple[int, ...]:
        name = self._node.inputs[i]
        if name in self._values:
            return self._ops.shape(self._values[name])
        if name in self._shapes:
            return self._shapes[name]
        return tuple(self._node.graph.constants[name].shape)

    def wants(self, i: int) -> bool:
        """Whether input `i` receives a signal (skip computing the others)."""
        return i < len(self._node.inputs) and self._node.inputs[i] in self._step.produces


def _signals_per_input(step: Step, outs) -> list:
    """A rule's signals, padded with None to the node's input count (rules return signals
    for the inputs they differentiate only)."""
    outs = list(outs)
    inputs = len(step.node.inputs)
    if len(outs) > inputs:
        raise ModelError(
            f"rule {step.rule.label} returned {len(outs)} signals for node '{step.node.name}' "
            f"({step.node.op_type}), which has {inputs} input(s)"
        )
    return outs + [None] * (inputs - len(outs))


def _zeros_like_tensor(ops, name: str, values: dict, shapes: dict):
    shape = ops.shape(values[name]) if name in values else shapes[name]
    return ops.zeros(shape)


def run_program(
    program: Program,
    ops,
    values: dict[str, Any],
    shapes: dict[str, tuple],
    seed,
    consts: dict | None = None,
    tapped: dict | None = None,
) -> Any:
    """Propagate `seed` (the signal at the logits) back to the program's layer.

    `values` is consumed: each forward tensor is dropped after its last use (the layer's
    and the taps' values are kept). Returns the signal at `program.layer`; when `tapped`
    is a dict, it receives the complete signal of every tap in `program.taps` (taken when
    the tap's producer step pops it; zeros where no signal arrives).
    """
    consts = {} if consts is None else consts
    signals: dict[str, Any] = {program.logits: seed}
    taps = set(program.taps)
    for step in program.steps:
        grads = [signals.pop(o, None) for o in step.node.outputs]
        if tapped is not None and taps:
            for o, g in zip(step.node.outputs, grads):
                if o in taps:
                    tapped[o] = g
        if all(g is None for g in grads):
            continue
        view = StepView(step, values, shapes, ops, consts)
        outs = _signals_per_input(step, step.rule.fn(ops, step.node, view, grads, program.options))
        for name, g in zip(step.node.inputs, outs):
            if g is None or name not in step.produces:
                continue
            prev = signals.get(name)
            signals[name] = g if prev is None else ops.add(prev, g)
        for t in step.release:  # keep the shape: later steps may still ask for it
            released = values.pop(t, None)
            if released is not None:
                shapes[t] = ops.shape(released)
    signal = signals.get(program.layer)
    if signal is None:  # every path to the layer was cut (e.g. all rows dead): no signal
        signal = ops.zeros(ops.shape(values[program.layer]))
    if tapped is not None:
        for t in program.taps:  # graph inputs have no producer step: their signal is final
            if tapped.get(t) is None:
                g = signals.get(t)
                tapped[t] = g if g is not None else _zeros_like_tensor(ops, t, values, shapes)
    return signal


def run_program_rows(
    program: Program,
    ops,
    values: dict[str, Any],
    shapes: dict[str, tuple],
    seed,
    consts: dict | None = None,
    workers: int = 1,
    tapped: dict | None = None,
) -> Any:
    """`run_program` on `workers` slices of the batch in parallel threads.

    Rows of a batch are independent, and array libraries release the GIL inside their
    kernels, so slicing the batch uses every core. Only for batch-major programs; falls back
    to one call otherwise.
    """
    batch = ops.shape(seed)[0] if ops.ndim(seed) else 1
    workers = min(workers, batch)
    if workers <= 1 or not program.batch_major:
        return run_program(program, ops, values, shapes, seed, consts, tapped)
    consts = {} if consts is None else consts
    bounds = [batch * i // workers for i in range(workers + 1)]
    jobs = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part_values = {t: v[lo:hi] for t, v in values.items()}
        part_shapes = {t: (hi - lo,) + tuple(s[1:]) for t, s in shapes.items()}
        jobs.append((part_values, part_shapes, seed[lo:hi]))
    values.clear()  # the slices hold the only references now: released as steps finish
    part_taps: list[dict | None] = [{} if tapped is not None else None for _ in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(
            pool.map(
                lambda k: run_program(
                    program, ops, jobs[k][0], jobs[k][1], jobs[k][2], consts, part_taps[k]
                ),
                range(len(jobs)),
            )
        )
    if tapped is not None:
        for t in program.taps:
            tapped[t] = ops.concat([p[t] for p in part_taps], 0)
    return ops.concat(parts, 0)

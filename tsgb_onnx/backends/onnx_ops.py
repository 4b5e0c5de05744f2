"""ONNX array namespace: the same rules, emitted as ONNX nodes instead of computed.

Handles are `Sym` objects (a tensor name, its shape and dtype); every method appends
standard ONNX nodes (default domain only) to a `GraphBuilder`. Shapes are static except
for dimensions proportional to the batch size (`Batch(k)` = k × B), so the emitted graph
keeps a dynamic batch. Operations whose operands are all constants are computed with
NumPy at build time (constant folding), so e.g. TSGB-FC's W+ and W- become initializers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tsgb_onnx.backends.numpy_ops import NumpyOps, erf_of, gather_nd_layout, pad_adjoint
from tsgb_onnx.engine.ops import EPS
from tsgb_onnx.errors import ModelError
from tsgb_onnx.ir.geometry import Window


@dataclass(frozen=True)
class Batch:
    """A dimension equal to k × (batch size)."""

    k: int = 1

    def __mul__(self, other):
        if isinstance(other, (int, np.integer)):
            return Batch(self.k * int(other))
        return NotImplemented

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return "B" if self.k == 1 else f"{self.k}B"


Dim = "int | Batch"
FOLD_LIMIT = 1 << 16  # elements
_ONNX_TYPE = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.bool_): TensorProto.BOOL,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.float64): TensorProto.DOUBLE,
}


class Sym:
    """A tensor of the emitted graph: `name` (None until a constant is first used),
    `shape`, `dtype`, and `value` when it is a build-time constant."""

    __slots__ = ("name", "shape", "dtype", "value")

    def __init__(self, name: str | None, shape: tuple, dtype, value: np.ndarray | None = None):
        self.name = name
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.value = value

    @property
    def is_const(self) -> bool:
        return self.value is not None

    def __repr__(self) -> str:
        return f"Sym({self.name!r}, {self.shape}, {self.dtype}{', const' if self.is_const else ''})"


class GraphBuilder:
    """Collects the nodes and initializers appended to a model; names never clash."""

    def __init__(self, opset: int, taken: set[str], prefix: str = "tsgb"):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.required_opset = 13  # raised by ops that need a newer form (ScatterElements add)
        self._taken = set(taken)
        self._prefix = prefix
        self._count = 0

    def fresh(self, hint: str) -> str:
        while True:
            self._count += 1
            name = f"{self._prefix}/{hint}_{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def initializer(self, array: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        # np.asarray, not np.ascontiguousarray: that one turns a 0-d constant into shape (1,)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def node(
        self, op: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, **attrs
    ) -> list[str]:
        names = (
            [self.fresh(op.lower()) for _ in range(outputs)]
            if isinstance(outputs, int)
            else list(outputs)
        )
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, list(inputs), names, name=self.fresh(op), **attrs))
        return names


def broadcast_shapes(*shapes: tuple) -> tuple:
    """NumPy broadcasting of shapes that may hold `Batch` dimensions."""
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        dim = 1
        for d in dims:
            if d == 1 or d == dim:
                continue
            if dim == 1 or isinstance(d, Batch):
                dim = d
            elif not isinstance(dim, Batch):
                raise ModelError(f"shapes {shapes} do not broadcast")
        out.append(dim)
    return tuple(out)


class OnnxOps:
    """The executor's array namespace, appending ONNX nodes to `builder`.

    `batch_source` names a tensor whose first dimension is the batch size (the model
    input); it is read (with a Shape node) only when a dynamic shape must be built.
    """

    name = "onnx"

    def __init__(self, builder: GraphBuilder, batch_source: str | None = None):
        self.b = builder
        self.opset = builder.opset
        self._np = NumpyOps()
        self._batch_source = batch_source
        self._batch: str | None = None
        self._scalars: dict[tuple, Sym] = {}
        self._initializers: dict[tuple, str] = {}  # small constants by value
        self._emitted: dict[tuple, Sym] = {}  # nodes by (op, inputs, attributes)

    # -- handles -------------------------------------------------------------------------
    def const(self, value, dtype=None, name: str | None = None) -> Sym:
        """A build-time constant; `name` when it is already an initializer of the model."""
        array = np.asarray(value, dtype=dtype)
        return Sym(name, array.shape, array.dtype, array)

    def _lift(self, v, dtype=np.float32) -> Sym:
        if isinstance(v, Sym):
            return v
        if isinstance(v, np.ndarray) and v.ndim > 0:
            return self.const(v, dtype)
        key = (float(v), np.dtype(dtype).str)
        if key not in self._scalars:
            self._scalars[key] = self.const(v, dtype)
        return self._scalars[key]

    def _in(self, v) -> str:
        """Tensor name of `v`, adding an initializer the first time a constant is used
        (small constants of equal value share one, so equal nodes can be shared too)."""
        v = self._lift(v)
        if v.name is None:
            key = None
            if v.value.size <= FOLD_LIMIT:
                key = (v.value.dtype.str, v.value.shape, v.value.tobytes())
                v.name = self._initializers.get(key)
            if v.name is None:
                v.name = self.b.initializer(v.value)
                if key is not None:
                    self._initializers[key] = v.name
        return v.name

    def _emit(self, op: str, inputs: Sequence, shape, dtype=np.float32, **attrs) -> Sym:
        """One node; a node equal to one emitted before (op, inputs, attributes) is not
        emitted again: its output is reused (all emitted ops are pure)."""
        names = [self._in(i) if not isinstance(i, str) else i for i in inputs]
        key = (op, tuple(names), repr(sorted(attrs.items())))
        if key not in self._emitted:
            (out,) = self.b.node(op, names, **attrs)
            self._emitted[key] = Sym(out, shape, dtype)
        return self._emitted[key]

    def _ints(self, values: Sequence[int]) -> Sym:
        return self.const(np.asarray(list(values), dtype=np.int64))

    @staticmethod
    def _all_const(*args) -> bool:
        return all(not isinstance(a, Sym) or a.is_const for a in args)

    @staticmethod
    def _foldable(*args) -> bool:
        """Constant operands small enough to fold now; larger ones (weights) stay nodes on
        the model's initializers, which the runtime folds at load (no copies in the file)."""
        return all(
            not isinstance(a, Sym) or (a.is_const and a.value.size <= FOLD_LIMIT) for a in args
        )

    def _fold(self, fn, *args) -> Sym:
        """Compute `fn` with NumPy on constant operands."""
        values = [a.value if isinstance(a, Sym) else a for a in args]
        return self.const(np.asarray(fn(*values)))

    # -- the batch dimension -----------------------------------------------------------------
    def _batch_size(self) -> str:
        """A [1] int64 tensor holding the batch size (one Shape node, made on first use)."""
        if self._batch is None:
            if self._batch_source is None:
                raise ModelError("a dynamic batch needs a batch source tensor")
            if self.opset >= 15:
                (self._batch,) = self.b.node("Shape", [self._batch_source], start=0, end=1)
            else:
                (shape,) = self.b.node("Shape", [self._batch_source])
                (self._batch,) = self.b.node(
                    "Slice", [shape, self._in(self._ints([0])), self._in(self._ints([1]))]
                )
        return self._batch

    def shape_tensor(self, shape: Sequence) -> Sym:
        """An int64 tensor holding `shape` (built from the batch size where needed)."""
        if not any(isinstance(d, Batch) for d in shape):
            return self._ints(int(d) for d in shape)
        parts = []
        for d in shape:
            if isinstance(d, Batch):
                b = self._batch_size()
                if d.k != 1:
                    (b,) = self.b.node("Mul", [b, self._in(self._ints([d.k]))])
                parts.append(b)
            else:
                parts.append(self._in(self._ints([int(d)])))
        return self._emit("Concat", parts, (len(shape),), np.int64, axis=0)

    def _reshape_target(self, shape: Sequence) -> Sym:
        dynamic = [i for i, d in enumerate(shape) if isinstance(d, Batch)]
        if len(dynamic) > 1:
            return self.shape_tensor(shape)
        return self._ints(-1 if isinstance(d, Batch) else int(d) for d in shape)

    # -- conversion ----------------------------------------------------------------------------
    def asarray(self, value: Any, dtype: Any = np.float32) -> Sym:
        if isinstance(value, Sym):
            if value.dtype == np.dtype(dtype):
                return value
            if value.is_const:
                return self.const(value.value, dtype)
            return self._emit("Cast", [value], value.shape, dtype, to=_ONNX_TYPE[np.dtype(dtype)])
        return self.const(value, dtype)

    def to_numpy(self, a: Sym) -> NoReturn:
        raise TypeError("the ONNX namespace has no values: run the emitted model")

    def shape(self, a: Sym) -> tuple:
        return a.shape

    def ndim(self, a: Sym) -> int:
        return len(a.shape)

    def one_hot(self, target: Any, classes: int, dtype: Any = np.float32) -> Sym:
        """Rows of `classes` zeros with a 1 at each `target` (integers in [0, classes)):
        folded for constant targets, else Equal against 0..classes-1 and a Cast."""
        if not isinstance(target, Sym) or target.is_const:
            value = target.value if isinstance(target, Sym) else target
            return self.const(self._np.one_hot(np.asarray(value), int(classes), dtype))
        rows = target.shape[0]
        if target.dtype != np.dtype(np.int64):
            target = self._emit("Cast", [target], target.shape, np.int64, to=TensorProto.INT64)
        column = self.reshape(target, (rows, 1))
        classes_row = self.const(np.arange(int(classes), dtype=np.int64).reshape(1, -1))
        hit = self._emit("Equal", [column, classes_row], (rows, int(classes)), np.bool_)
        return self.asarray(hit, dtype)

    def zeros(self, shape: Sequence, dtype: Any = np.float32) -> Sym:
        if not any(isinstance(d, Batch) for d in shape):
            return self.const(np.zeros(tuple(int(s) for s in shape), dtype=dtype))
        value = numpy_helper.from_array(np.zeros(1, dtype=dtype), "value")
        return self._emit(
            "ConstantOfShape", [self.shape_tensor(shape)], tuple(shape), dtype, value=value
        )

    # -- element-wise ----------------------------------------------------------------------------
    def _binary(self, op: str, fn, a, b, dtype=None) -> Sym:
        a, b = self._lift(a), self._lift(b)
        if self._foldable(a, b):
            return self._fold(fn, a, b)
        return self._emit(op, [a, b], broadcast_shapes(a.shape, b.shape), dtype or a.dtype)

    def _unary(self, op: str, fn, a) -> Sym:
        if self._foldable(a):
            return self._fold(fn, a)
        return self._emit(op, [a], a.shape, a.dtype)

    def add(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Add", np.add, a, b)

    def sub(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Sub", np.subtract, a, b)

    def mul(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Mul", np.multiply, a, b)

    def div(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Div", np.divide, a, b)

    def maximum(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Max", np.maximum, a, b)

    def minimum(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Min", np.minimum, a, b)

    def power(self, a: Sym, p: float) -> Sym:
        return self._binary("Pow", np.power, a, p)

    def greater(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Greater", np.greater, a, b, dtype=np.bool_)

    def less(self, a: Sym, b: Sym | float) -> Sym:
        return self._binary("Less", np.less, a, b, dtype=np.bool_)

    def logical_and(self, a: Sym, b: Sym) -> Sym:
        return self._binary("And", np.logical_and, a, b, dtype=np.bool_)

    def neg(self, a: Sym) -> Sym:
        return self._unary("Neg", np.negative, a)

    def abs(self, a: Sym) -> Sym:
        return self._unary("Abs", np.abs, a)

    def sign(self, a: Sym) -> Sym:
        """x / max(|x|, FLT_MIN): the sign of every normal float and of 0 (ORT's Sign
        kernel is several times slower than Abs + Max + Div); subnormals map into (-1, 1)."""
        if self._foldable(a):
            return self._fold(np.sign, a)
        tiny = float(np.finfo(np.float32).tiny)
        return self.div(a, self.maximum(self.abs(a), tiny))

    def exp(self, a: Sym) -> Sym:
        return self._unary("Exp", np.exp, a)

    def erf(self, a: Sym) -> Sym:
        return self._unary("Erf", lambda v: erf_of(np, v), a)

    def square(self, a: Sym) -> Sym:
        return self.mul(a, a)

    def where(self, cond: Sym, a: Sym | float, b: Sym | float) -> Sym:
        cond, a, b = self._lift(cond, np.bool_), self._lift(a), self._lift(b)
        if cond.is_const and a.is_const and b.is_const:
            return self._fold(lambda c, x, y: np.where(c, x, y).astype(np.float32), cond, a, b)
        return self._emit("Where", [cond, a, b], broadcast_shapes(cond.shape, a.shape, b.shape))

    def mask(self, g: Sym, cond: Sym) -> Sym:
        """`g` where `cond` holds, 0 elsewhere (a multiply: faster than Where in ORT)."""
        g, cond = self._lift(g), self._lift(cond, np.bool_)
        if g.is_const and cond.is_const:
            return self._fold(self._np.mask, g, cond)
        return self.mul(g, self.asarray(cond, np.float32))

    def mask_below(self, g: Sym, y: Sym, bound: float) -> Sym:
        """`g` where y < bound, 0 elsewhere, for y <= bound: the 0/1 mask is one HardSigmoid,
        max(0, min(1, K * (bound - y))) with K a power of two (so K * y is exact) large
        enough that one float step below `bound` already gives >= 1, and 0 at y = bound
        exactly (K * bound is exact too). Faster in ONNX Runtime than Less + Cast."""
        g, y = self._lift(g), self._lift(y)
        bound32 = np.float32(bound)
        step = bound32 - np.nextafter(bound32, np.float32(-np.inf))
        if (
            self._all_const(g, y)
            or not np.isfinite(bound32)
            or bound32 <= 0
            or bound32 < np.finfo(np.float32).tiny * 2**24
        ):
            return self.mask(g, self.less(y, bound))
        k = 2.0 ** int(np.ceil(np.log2(2.0 / float(step))))
        if not np.isfinite(np.float32(k * float(bound32))):
            return self.mask(g, self.less(y, bound))
        below = self._emit("HardSigmoid", [y], y.shape, alpha=-k, beta=k * float(bound32))
        return self.mul(g, below)

    def div_stab(self, a: Sym, d: Sym, eps: float = EPS, nonnegative: bool = False) -> Sym:
        """a / (d + eps*sgn(d)) with sgn(0) = 1 (NumPy's rule, as nodes); `nonnegative`
        denominators (box sums of |X|) need no sign test."""
        if self._all_const(a, d):
            return self._fold(self._np.div_stab, a, d)
        if nonnegative:
            return self.div(a, self.add(d, eps))
        step = self.where(self.less(d, 0.0), -eps, eps)
        return self.div(a, self.add(d, step))

    # -- reductions and layout -------------------------------------------------------------------
    def _axes(self, axis, rank: int) -> list[int]:
        if axis is None:
            return list(range(rank))
        axes = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
        return sorted(int(a) % rank for a in axes)

    def _reduce(self, op: str, a: Sym, axes: list[int], keepdims: bool) -> Sym:
        shape = tuple(
            1 if i in axes else d for i, d in enumerate(a.shape) if keepdims or i not in axes
        )
        axes_as_input = self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13)
        if axes_as_input:
            return self._emit(op, [a, self._ints(axes)], shape, a.dtype, keepdims=int(keepdims))
        return self._emit(op, [a], shape, a.dtype, axes=axes, keepdims=int(keepdims))

    def sum(self, a: Sym, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Sym:
        if a.is_const:
            return self._fold(lambda v: np.sum(v, axis=axis, keepdims=keepdims), a)
        return self._reduce("ReduceSum", a, self._axes(axis, len(a.shape)), keepdims)

    def any_negative(self, a: Sym, axes: Sequence[int]) -> Sym:
        if a.is_const:
            return self._fold(lambda v: self._np.any_negative(v, axes), a)
        smallest = self._reduce("ReduceMin", a, self._axes(tuple(axes), len(a.shape)), True)
        return self.less(smallest, 0.0)

    def reshape(self, a: Sym, shape: Sequence) -> Sym:
        shape = tuple(d if isinstance(d, Batch) else int(d) for d in shape)
        if self._foldable(a):
            return self.const(a.value.reshape(shape))
        if shape == a.shape:
            return a
        return self._emit("Reshape", [a, self._reshape_target(shape)], shape, a.dtype)

    def transpose(self, a: Sym, perm: Sequence[int]) -> Sym:
        perm = [int(p) for p in perm]
        if self._foldable(a):
            return self.const(np.transpose(a.value, perm))
        return self._emit("Transpose", [a], tuple(a.shape[p] for p in perm), a.dtype, perm=perm)

    def swap_last(self, a: Sym) -> Sym:
        perm = list(range(len(a.shape)))
        perm[-1], perm[-2] = perm[-2], perm[-1]
        return self.transpose(a, perm)

    def expand_to(self, a: Sym, shape: Sequence) -> Sym:
        """Broadcast `a` to `shape`."""
        shape = tuple(shape)
        if a.is_const and not any(isinstance(d, Batch) for d in shape):
            return self.const(np.broadcast_to(a.value, shape).copy())
        if a.shape == shape:
            return a
        return self._emit("Expand", [a, self.shape_tensor(shape)], shape, a.dtype)

    def sum_to_shape(self, g: Sym, shape: Sequence) -> Sym:
        """Reduce a broadcast signal back to an operand's shape."""
        shape = tuple(shape)
        if g.shape == shape:
            return g
        lead = len(g.shape) - len(shape)
        axes = list(range(lead)) + [
            lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1
        ]
        if axes:
            g = (
                self._fold(lambda v: np.sum(v, axis=tuple(axes), keepdims=True), g)
                if g.is_const
                else self._reduce("ReduceSum", g, axes, True)
            )
        return self.reshape(g, shape)

    def matmul(self, a: Sym, b: Sym) -> Sym:
        if self._foldable(a, b):
            return self._fold(np.matmul, a, b)
        sa, sb = a.shape, b.shape
        a2 = (1,) + sa if len(sa) == 1 else sa
        b2 = sb + (1,) if len(sb) == 1 else sb
        shape = broadcast_shapes(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
        if len(sa) == 1:
            shape = shape[:-2] + shape[-1:]
        if len(sb) == 1:
            shape = shape[:-1]
        return self._emit("MatMul", [a, b], shape)

    def concat(self, arrays: Sequence[Sym], axis: int) -> Sym:
        arrays = list(arrays)
        rank = len(arrays[0].shape)
        axis = axis % rank
        if self._all_const(*arrays):
            return self.const(np.concatenate([a.value for a in arrays], axis=axis))
        size = sum(int(a.shape[axis]) for a in arrays)
        shape = arrays[0].shape[:axis] + (size,) + arrays[0].shape[axis + 1 :]
        return self._emit("Concat", arrays, shape, arrays[0].dtype, axis=axis)

    def split(self, a: Sym, sizes: Sequence[int], axis: int) -> list[Sym]:
        axis = axis % len(a.shape)
        outs = self.b.node(
            "Split", [self._in(a), self._in(self._ints(sizes))], len(sizes), axis=axis
        )
        return [
            Sym(o, a.shape[:axis] + (int(s),) + a.shape[axis + 1 :], a.dtype)
            for o, s in zip(outs, sizes)
        ]

    # -- placing windows: slices and zero pads on spatial axes ------------------------------------
    def _place(self, t: Sym, axes: Sequence[int], begins: Sequence[int], sizes: Sequence[int]):
        """out[..., i, ...] = t[..., i + begin, ...] for i < size along each axis (zero
        where i + begin falls outside t)."""
        starts, ends, cut_axes = [], [], []
        pad_before = [0] * len(t.shape)
        pad_after = [0] * len(t.shape)
        shape = list(t.shape)
        for axis, begin, size in zip(axes, begins, sizes):
            have = int(t.shape[axis])
            start, end = min(max(begin, 0), have), min(max(begin + size, 0), have)
            if start != 0 or end != have:
                starts.append(start)
                ends.append(end)
                cut_axes.append(axis)
            pad_before[axis] = max(-begin, 0)
            pad_after[axis] = size - pad_before[axis] - (end - start)
            shape[axis] = end - start
        if cut_axes:
            t = self._emit(
                "Slice",
                [t, self._ints(starts), self._ints(ends), self._ints(cut_axes)],
                tuple(shape),
                t.dtype,
            )
        if any(pad_before) or any(pad_after):
            for axis, size in zip(axes, sizes):
                shape[axis] = size
            t = self._emit("Pad", [t, self._ints(pad_before + pad_after)], tuple(shape), t.dtype)
        return t

    def axis_matmul(self, a: Sym, axis: int, matrix: Any) -> Sym:
        """`a`'s `axis` contracted with the constant `matrix` [m, n] (a MatMul)."""
        matrix = np.asarray(matrix, dtype=np.float32)
        a = self._lift(a)
        if self._foldable(a):
            return self._fold(lambda v: self._np.axis_matmul(v, axis, matrix), a)
        return self._axis_matmul(a, axis, matrix)

    def _axis_matmul(self, g: Sym, axis: int, matrix: np.ndarray) -> Sym:
        """Contract `g`'s `axis` with `matrix` [m, n] (the result's axis has size n)."""
        rank = len(g.shape)
        axis %= rank
        if isinstance(g.shape[axis], Batch):
            raise ModelError("cannot emit a backward step that mixes rows of the batch")
        if axis == rank - 1:
            return self.matmul(g, self.const(matrix))
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        return self.transpose(self.matmul(self.transpose(g, perm), self.const(matrix)), perm)

    # -- composite steps -----------------------------------------------------------------------
    def _window_attrs(self, win: Window) -> dict:
        return dict(
            kernel_shape=list(win.kernel), strides=list(win.strides), dilations=list(win.dilations)
        )

    def _full_size(self, win: Window, out: Sequence[int]) -> list[int]:
        return [(int(out[i]) - 1) * win.strides[i] + win.extent(i) for i in range(win.nd)]

    def _transposed_conv(
        self, t: Sym, w: Sym, group: int, win: Window, spatial: Sequence[int], rank_channels: int
    ) -> Sym:
        """Adjoint of a Conv (`w`, `group`, `win`) applied to `t`, cropped to `spatial`.

        Unstrided with constant weights, it is a Conv with the kernel flipped and its
        in/out channels swapped per group (ORT's Conv is much faster than its ConvTranspose,
        above all for grouped kernels); otherwise a ConvTranspose, cropped.
        """
        nd = win.nd
        out = [int(o) for o in t.shape[2:]]
        strided = any(s != 1 for s in win.strides)
        ext = [win.extent(i) for i in range(nd)]
        fits = all(win.pads[i] <= ext[i] - 1 for i in range(nd))
        if not w.is_const or not fits or strided:
            full = self._full_size(win, out)
            y = self._emit(
                "ConvTranspose",
                [t, w],
                t.shape[:1] + (rank_channels,) + tuple(full),
                group=int(group),
                pads=[0] * (2 * nd),
                **self._window_attrs(win),
            )
            return self._place(y, range(2, 2 + nd), win.pads[:nd], [int(s) for s in spatial])
        n, mg = int(w.shape[0]), int(w.shape[1])
        ng = n // group
        kernel = self.reshape(w, (group, ng, mg) + win.kernel)
        kernel = self.transpose(kernel, [0, 2, 1] + list(range(3, 3 + nd)))
        kernel = self._flip(self.reshape(kernel, (group * mg, ng) + win.kernel), range(2, 2 + nd))
        size = [int(d) for d in t.shape[2:]]
        ends = [int(spatial[i]) - size[i] + win.pads[i] for i in range(nd)]
        pads = [ext[i] - 1 - win.pads[i] for i in range(nd)] + [max(e, 0) for e in ends]
        result = [size[i] - win.pads[i] + max(ends[i], 0) for i in range(nd)]
        y = self._emit(
            "Conv",
            [t, kernel],
            t.shape[:1] + (group * mg,) + tuple(result),
            group=int(group),
            pads=pads,
            kernel_shape=list(win.kernel),
            dilations=list(win.dilations),
        )
        if any(e < 0 for e in ends):
            y = self._place(y, range(2, 2 + nd), [0] * nd, [int(s) for s in spatial])
        return y

    def _flip(self, a: Sym, axes) -> Sym:
        axes = list(axes)
        if self._foldable(a):
            return self.const(np.ascontiguousarray(np.flip(a.value, axis=tuple(axes))))
        big = np.iinfo(np.int64).max
        return self._emit(
            "Slice",
            [
                a,
                self._ints([-1] * len(axes)),
                self._ints([-big] * len(axes)),
                self._ints(axes),
                self._ints([-1] * len(axes)),
            ],
            a.shape,
            a.dtype,
        )

    def conv_input_grad(self, gy: Sym, w: Sym, x_shape: Sequence, win: Window, group: int) -> Sym:
        """Exact Conv input gradient (the conv's adjoint with its own weights)."""
        return self._transposed_conv(
            gy, self._lift(w), int(group), win, x_shape[2:], int(x_shape[1])
        )

    def _ones_kernel(self, channels: int, win: Window) -> Sym:
        return self.const(np.ones((channels, 1) + win.kernel, dtype=np.float32))

    def box_sum(self, a: Sym, win: Window, out: Sequence[int]) -> Sym:
        """Sum over every window: a depthwise Conv with a kernel of ones."""
        return self._box_conv(a, win, out)

    def _box_conv(self, a: Sym, win: Window, out: Sequence[int], plus: float = 0.0) -> Sym:
        """`box_sum` + `plus`: the depthwise Conv with a kernel of ones and a bias of `plus`."""
        if win.is_identity:
            return self.add(a, plus) if plus else a
        if a.is_const:
            return self._fold(lambda v: self._np.box_sum(v, win, out) + np.float32(plus), a)
        spatial = [int(s) for s in a.shape[2:]]
        padded = win.padded_size(spatial, out)
        ends = [padded[i] - spatial[i] - win.pads[i] for i in range(win.nd)]
        channels = int(a.shape[1])
        inputs = [a, self._ones_kernel(channels, win)]
        if plus:
            inputs.append(self.const(np.full(channels, plus, dtype=np.float32)))
        return self._emit(
            "Conv",
            inputs,
            a.shape[:2] + tuple(int(o) for o in out),
            group=channels,
            pads=list(win.pads[: win.nd]) + ends,
            **self._window_attrs(win),
        )

    def div_box_sum(self, a: Sym, mass: Sym, win: Window, out: Sequence[int]) -> Sym:
        """a ⊘ box_sum(mass) for mass >= 0: the stabiliser is the box Conv's bias."""
        if self._all_const(a, mass):
            return self._fold(lambda x, m: self._np.div_box_sum(x, m, win, out), a, mass)
        return self.div(a, self._box_conv(mass, win, out, plus=EPS))

    def box_sum_transposed(self, r: Sym, win: Window, spatial: Sequence[int]) -> Sym:
        """Adjoint of `box_sum`: the transposed depthwise conv with a kernel of ones."""
        if win.is_identity:
            return r
        channels = int(r.shape[1])
        return self._transposed_conv(
            r, self._ones_kernel(channels, win), channels, win, spatial, channels
        )

    def maxpool_input_grad(self, x: Sym, gy: Sym, win: Window) -> Sym:
        """MaxPool's indices, then a scatter-add of the signal (needs opset 16).

        The pool is re-run with explicit end pads that give exactly the recorded output size
        (ceil_mode and auto_pad resolved), cropping input that no window reads. ONNX Runtime
        wants every pad < kernel: an axis that needs more (a dilated pool) is padded by a Pad
        with the lowest finite value instead, which ONNX Runtime's windows start their
        maximum from, so the arg-maxes are the same; the signal is cropped back.
        """
        self.b.required_opset = max(self.b.required_opset, 16)
        nd = win.nd
        axes = range(2, 2 + nd)
        spatial = [int(s) for s in x.shape[2:]]
        out = [int(o) for o in gy.shape[2:]]
        ends = [
            (out[i] - 1) * win.strides[i] + win.extent(i) - spatial[i] - win.pads[i]
            for i in range(nd)
        ]
        read = [spatial[i] + min(ends[i], 0) for i in range(nd)]
        if read != spatial:
            x = self._place(x, axes, [0] * nd, read)
        begins, ends = list(win.pads[:nd]), [max(e, 0) for e in ends]
        wide = [i for i in range(nd) if max(begins[i], ends[i]) >= win.kernel[i]]
        explicit = [0] * (2 * nd)
        for i in wide:
            explicit[i], explicit[i + nd] = begins[i], ends[i]
            begins[i] = ends[i] = 0
        pooled = x
        if wide:
            shape = x.shape[:2] + tuple(read[i] + explicit[i] + explicit[i + nd] for i in range(nd))
            lowest = self.const(np.array(np.finfo(x.dtype).min, dtype=x.dtype))
            pads = self._ints([0, 0] + explicit[:nd] + [0, 0] + explicit[nd:])
            pooled = self._emit("Pad", [x, pads, lowest], shape, x.dtype)
        (_, indices) = self.b.node(
            "MaxPool",
            [self._in(pooled)],
            2,
            pads=begins + ends,
            **self._window_attrs(win),
        )
        flat = math.prod(pooled.shape)
        flat_index = self._emit("Reshape", [indices, self._ints([-1])], (flat,), np.int64)
        flat_signal = self.reshape(gy, (math.prod(gy.shape),))
        scattered = self._emit(
            "ScatterElements",
            [self.zeros((flat,)), flat_index, flat_signal],
            (flat,),
            axis=0,
            reduction="add",
        )
        gx = self.reshape(scattered, pooled.shape)
        if wide:
            gx = self._place(gx, axes, explicit[:nd], read)
        if read != spatial:
            gx = self._place(gx, axes, [0] * nd, spatial)
        return gx

    def avgpool_divisor(
        self, spatial: Sequence[int], out: Sequence[int], win: Window, count_include_pad: bool
    ) -> Sym:
        return self.const(self._np.avgpool_divisor(spatial, out, win, count_include_pad))

    def pad_input_grad(self, g: Sym, x_shape: Sequence, pads: Sequence[int], mode: str) -> Sym:
        """Adjoint of ONNX Pad: a slice (constant mode) or one matrix per padded axis."""
        nd = len(x_shape)
        axes = [a for a in range(nd) if int(pads[a]) or int(pads[a + nd])]
        if mode == "constant":
            return self._place(
                g, axes, [int(pads[a]) for a in axes], [int(x_shape[a]) for a in axes]
            )
        for axis in axes:
            adjoint = pad_adjoint(int(x_shape[axis]), int(g.shape[axis]), int(pads[axis]), mode)
            g = self._axis_matmul(g, axis, adjoint)
        return g

    def scatter_slices(self, g: Sym, x_shape: Sequence, index: tuple) -> Sym:
        """Adjoint of a slice: zero pads (unit steps) or a selection matrix per axis."""
        unit_axes, begins, sizes = [], [], []
        for axis, sl in enumerate(index):
            if sl == slice(None):
                continue
            dim = int(x_shape[axis])
            start, _, step = sl.indices(dim)
            if step == 1:
                unit_axes.append(axis)
                begins.append(-start)
                sizes.append(dim)
            else:
                picked = np.arange(dim)[sl]
                matrix = np.zeros((len(picked), dim), dtype=np.float32)
                matrix[np.arange(len(picked)), picked] = 1
                g = self._axis_matmul(g, axis, matrix)
        return self._place(g, unit_axes, begins, sizes) if unit_axes else g

    def channel_window_sum(self, a: Sym, size: int) -> Sym:
        """LRN's window sum over channels (see NumpyOps)."""
        return self._channel_window(a, (size - 1) // 2, size // 2)

    def channel_window_sum_transposed(self, a: Sym, size: int) -> Sym:
        return self._channel_window(a, size // 2, (size - 1) // 2)

    def _channel_window(self, a: Sym, before: int, after: int) -> Sym:
        if a.is_const:
            return self._fold(lambda v: NumpyOps._channel_window(v, before, after), a)
        channels = int(a.shape[1])
        padded = self._place(a, [1], [-before], [channels + before + after])
        total = None
        for k in range(before + after + 1):
            part = self._place(padded, [1], [k], [channels])
            total = part if total is None else self.add(total, part)
        return total

    # -- index adjoints: ScatterElements with reduction="add" (opset 16) -----------------------
    def _int64(self, indices: Any) -> Sym:
        """Integer indices as an int64 handle (a recorded index tensor reaches the emitter
        cast to float32, exactly for |index| < 2**24)."""
        if not isinstance(indices, Sym):
            return self.const(np.asarray(indices, dtype=np.int64))
        if indices.is_const:
            return self.const(indices.value.astype(np.int64))
        if indices.dtype == np.dtype(np.int64):
            return indices
        return self._emit("Cast", [indices], indices.shape, np.int64, to=TensorProto.INT64)

    def _scatter_add(self, shape: tuple, axis: int, index: Sym, updates: Sym) -> Sym:
        """zeros(`shape`) with `updates` added at `index` along `axis` (index and updates of
        one shape)."""
        self.b.required_opset = max(self.b.required_opset, 16)
        shape = tuple(shape)
        value = numpy_helper.from_array(np.zeros(1, dtype=np.float32), "value")
        zeros = self._emit(  # made at run time: no tensor of zeros stored in the file
            "ConstantOfShape", [self.shape_tensor(shape)], shape, np.float32, value=value
        )
        return self._emit(
            "ScatterElements", [zeros, index, updates], shape, axis=int(axis), reduction="add"
        )

    def _broadcast_index(self, index: Sym, shape: tuple) -> Sym:
        """`index` broadcast to `shape`: folded when small, else an Expand node (a large
        constant index is not stored expanded)."""
        static = not any(isinstance(d, Batch) for d in shape)
        if index.is_const and static and math.prod(int(d) for d in shape) <= FOLD_LIMIT:
            return self.expand_to(index, shape)
        if index.shape == tuple(shape):
            return index
        return self._emit("Expand", [index, self.shape_tensor(shape)], tuple(shape), np.int64)

    def gather_input_grad(self, g: Sym, indices: Any, x_shape: Sequence, axis: int) -> Sym:
        """Adjoint of Gather: a selection-matrix MatMul for small constant indices, else a
        ScatterElements(add) of `g` with the indices broadcast over the other axes."""
        g, x_shape = self._lift(g), tuple(x_shape)
        rank = len(x_shape)
        axis %= rank
        idx = self._int64(indices)
        n = math.prod(idx.shape)
        size = x_shape[axis]
        moved = self.reshape(g, x_shape[:axis] + (n,) + x_shape[axis + 1 :])
        if idx.is_const and not isinstance(size, Batch) and n * int(size) <= FOLD_LIMIT:
            rows = idx.value.reshape(-1) % int(size)
            matrix = np.zeros((n, int(size)), dtype=np.float32)
            np.add.at(matrix, (np.arange(n), rows), 1.0)
            return self.axis_matmul(moved, axis, matrix)
        column = self.reshape(idx, (1,) * axis + (n,) + (1,) * (rank - axis - 1))
        return self._scatter_add(x_shape, axis, self._broadcast_index(column, moved.shape), moved)

    def gather_elements_input_grad(self, g: Sym, indices: Any, x_shape: Sequence, axis: int) -> Sym:
        """Adjoint of GatherElements: one ScatterElements(add)."""
        g, x_shape = self._lift(g), tuple(x_shape)
        return self._scatter_add(x_shape, axis % len(x_shape), self._int64(indices), g)

    def gather_nd_input_grad(self, g: Sym, indices: Any, x_shape: Sequence, batch_dims: int) -> Sym:
        """Adjoint of GatherND: the data viewed as [P, K, T] (batch dims, indexed dims, the
        slice), each index tuple a flat position in K, one ScatterElements(add) on axis 1."""
        g, x_shape, b = self._lift(g), tuple(x_shape), int(batch_dims)
        idx = self._int64(indices)
        k = int(idx.shape[-1])
        indexed, tail = x_shape[b : b + k], x_shape[b + k :]
        if any(isinstance(d, Batch) for d in indexed + tail):
            raise ModelError("cannot emit a GatherND backward that indexes the batch axis")
        p = 1
        for d in x_shape[:b]:
            p = d * p
        m, k_size, t = math.prod(idx.shape[b:-1]), math.prod(indexed), math.prod(tail)
        if idx.is_const:
            _, flat, _, _ = gather_nd_layout(
                idx.value, tuple(idx.shape[:b]) + tuple(indexed) + tuple(tail), b
            )
            flat = self.const(flat)
        else:
            dims = self.const(np.asarray(indexed, dtype=np.int64))
            strides = self.const(
                np.asarray([math.prod(indexed[j + 1 :]) for j in range(k)], dtype=np.int64)
            )
            wrapped = self._emit("Mod", [idx, dims], idx.shape, np.int64)
            offsets = self._emit("Mul", [wrapped, strides], idx.shape, np.int64)
            flat = self._reduce("ReduceSum", offsets, [len(idx.shape) - 1], True)
        flat = self._broadcast_index(self.reshape(flat, (p, m, 1)), (p, m, t))
        scattered = self._scatter_add((p, k_size, t), 1, flat, self.reshape(g, (p, m, t)))
        return self.reshape(scattered, x_shape)

    def einsum(self, equation: str, operands: Sequence[Sym]) -> Sym:
        """One Einsum node (folded for small constant operands)."""
        operands = [self._lift(o) for o in operands]
        if self._foldable(*operands):
            return self._fold(lambda *v: self._np.einsum(equation, v), *operands)
        inputs, output = equation.replace(" ", "").split("->")
        dims: dict[str, Any] = {}
        for letters, operand in zip(inputs.split(","), operands):
            for letter, d in zip(letters, operand.shape):
                if dims.get(letter, 1) == 1 or isinstance(d, Batch):
                    dims[letter] = d
        shape = tuple(dims[letter] for letter in output)
        return self._emit("Einsum", operands, shape, equation=equation.replace(" ", ""))

    def conv(self, x: Sym, w: Sym, win: Window, group: int, out: Sequence[int]) -> Sym:
        """Forward Conv of `x` with `w` (no bias, zero padding) onto the `out` grid."""
        x, w = self._lift(x), self._lift(w)
        if x.is_const and w.is_const:
            return self._fold(lambda a, b: self._np.conv(a, b, win, group, out), x, w)
        spatial = [int(s) for s in x.shape[2:]]
        out = [int(o) for o in out]
        padded = win.padded_size(spatial, out)
        ends = [padded[i] - spatial[i] - win.pads[i] for i in range(win.nd)]
        return self._emit(
            "Conv",
            [x, w],
            x.shape[:1] + (int(w.shape[0]),) + tuple(out),
            group=int(group),
            pads=list(win.pads[: win.nd]) + ends,
            **self._window_attrs(win),
        )

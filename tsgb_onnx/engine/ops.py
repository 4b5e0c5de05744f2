"""The backend contract: every operation a backward rule may call, and fused steps.

A rule is written once against `ArrayOps`; each backend implements all of it:
`backends.numpy_ops.NumpyOps` computes on the CPU, `backends.cupy_ops.CupyOps` on the GPU,
`backends.onnx_ops.OnnxOps` appends ONNX nodes (`tsgb convert`). `Array` is whatever the
backend's handles are (an ndarray, a CuPy array, a symbolic tensor); shapes may hold
symbolic batch dimensions on the emitter.

A *composite step* is a function of primitives that a backend may replace with one fused
kernel, registered per (backend name, step name), in the spirit of JAX's
``register_lowering(..., platform=)``:

    @composite("tsgb_conv")                 # the rule module: the portable definition
    def tsgb_conv_step(ops, x, y, g, win, groups, *, nonnegative_x=False, ...): ...

    @register_fused("cupy", "tsgb_conv")    # the backend module: its kernel
    def _tsgb_conv_kernel(ops, x, y, g, win, groups, *, nonnegative_x=False, ...): ...

The fused function receives exactly the arguments (hints included) of the composition.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from tsgb_onnx.ir.geometry import Window

Array = Any
Shape = Sequence[Any]  # ints, or symbolic batch dimensions on the ONNX emitter
EPS = 1e-10  # the stabiliser of `div_stab`: a / (d + EPS * sgn(d)), sgn(0) = 1


@runtime_checkable
class ArrayOps(Protocol):
    """Operations a backward rule may call (`name` identifies the backend)."""

    name: str

    # -- conversion and shapes ---------------------------------------------------------------
    def asarray(self, value: Any, dtype: Any = ...) -> Array: ...
    def to_numpy(self, a: Array) -> Any: ...
    def shape(self, a: Array) -> tuple[Any, ...]: ...
    def ndim(self, a: Array) -> int: ...
    def zeros(self, shape: Shape, dtype: Any = ...) -> Array: ...
    def one_hot(self, target: Any, classes: int, dtype: Any = ...) -> Array:
        """[len(target), classes]: 1 at each row's target class (in [0, classes)), else 0."""
        ...

    # -- element-wise (NumPy broadcasting) ---------------------------------------------------
    def add(self, a: Array, b: Array | float) -> Array: ...
    def sub(self, a: Array, b: Array | float) -> Array: ...
    def mul(self, a: Array, b: Array | float) -> Array: ...
    def div(self, a: Array, b: Array | float) -> Array: ...
    def neg(self, a: Array) -> Array: ...
    def abs(self, a: Array) -> Array: ...
    def sign(self, a: Array) -> Array: ...
    def exp(self, a: Array) -> Array: ...
    def erf(self, a: Array) -> Array:
        """The error function (GELU's derivative needs it)."""
        ...

    def square(self, a: Array) -> Array: ...
    def power(self, a: Array, p: float) -> Array: ...
    def maximum(self, a: Array, b: Array | float) -> Array: ...
    def minimum(self, a: Array, b: Array | float) -> Array: ...
    def where(self, cond: Array, a: Array | float, b: Array | float) -> Array: ...
    def greater(self, a: Array, b: Array | float) -> Array: ...
    def less(self, a: Array, b: Array | float) -> Array: ...
    def logical_and(self, a: Array, b: Array) -> Array: ...
    def mask(self, g: Array, cond: Array) -> Array:
        """g where cond holds, else 0."""
        ...

    def mask_below(self, g: Array, y: Array, bound: float) -> Array:
        """g * [y < bound], for y <= bound (ReLU6's upper mask)."""
        ...

    def div_stab(self, a: Array, d: Array, eps: float = EPS, nonnegative: bool = False) -> Array:
        """a / (d + eps * sgn(d)), sgn(0) = 1 (`nonnegative`: the caller knows d >= 0)."""
        ...

    # -- reductions and layout ---------------------------------------------------------------
    def sum(
        self, a: Array, axis: int | Sequence[int] | None = None, keepdims: bool = False
    ) -> Array: ...
    def any_negative(self, a: Array, axes: Sequence[int]) -> Array:
        """Per remaining index, whether any value over `axes` is < 0 (kept as size-1 axes)."""
        ...

    def reshape(self, a: Array, shape: Shape) -> Array: ...
    def transpose(self, a: Array, perm: Sequence[int]) -> Array: ...
    def swap_last(self, a: Array) -> Array: ...
    def expand_to(self, a: Array, shape: Shape) -> Array: ...
    def sum_to_shape(self, g: Array, shape: Shape) -> Array:
        """Sum a broadcast result back to `shape` (the adjoint of broadcasting)."""
        ...

    def matmul(self, a: Array, b: Array) -> Array: ...
    def concat(self, arrays: Sequence[Array], axis: int) -> Array: ...
    def split(self, a: Array, sizes: Sequence[int], axis: int) -> list[Array]: ...

    # -- composite steps of convolutions and pools -------------------------------------------
    def conv(self, x: Array, w: Array, win: Window, group: int, out: Sequence[int]) -> Array: ...
    def conv_input_grad(
        self, gy: Array, w: Array, x_shape: Shape, win: Window, group: int
    ) -> Array: ...
    def box_sum(self, a: Array, win: Window, out: Sequence[int]) -> Array:
        """Sum of each window (a conv with a ones kernel, per channel)."""
        ...

    def div_box_sum(self, a: Array, mass: Array, win: Window, out: Sequence[int]) -> Array:
        """a ⊘ box_sum(mass) for mass >= 0 (TSGB-Conv's R ⊘ box(|X|))."""
        ...

    def box_sum_transposed(self, r: Array, win: Window, spatial: Sequence[int]) -> Array: ...
    def maxpool_input_grad(self, x: Array, gy: Array, win: Window) -> Array: ...
    def avgpool_divisor(
        self, spatial: Sequence[int], out: Sequence[int], win: Window, count_include_pad: bool
    ) -> Array:
        """Counted elements of each window, shape [1, 1, *out] (a constant of the shapes)."""
        ...

    def pad_input_grad(self, g: Array, x_shape: Shape, pads: Sequence[int], mode: str) -> Array: ...
    def scatter_slices(self, g: Array, x_shape: Shape, index: tuple) -> Array: ...
    def channel_window_sum(self, a: Array, size: int) -> Array: ...
    def channel_window_sum_transposed(self, a: Array, size: int) -> Array: ...

    # -- linear maps along one axis, index adjoints, contractions ------------------------------
    def axis_matmul(self, a: Array, axis: int, matrix: Any) -> Array:
        """Contract `a`'s `axis` (size m) with `matrix` [m, n], a NumPy constant of the
        rule (interpolation and selection matrices): the result's `axis` has size n."""
        ...

    def gather_input_grad(self, g: Array, indices: Any, x_shape: Shape, axis: int) -> Array:
        """Adjoint of ONNX Gather(x, indices, axis): zeros of `x_shape` with each slice of `g`
        added at its index along `axis` (negative indices count from the end; repeated
        indices accumulate). `indices`: a constant or a recorded integer tensor."""
        ...

    def gather_elements_input_grad(
        self, g: Array, indices: Any, x_shape: Shape, axis: int
    ) -> Array:
        """Adjoint of ONNX GatherElements(x, indices, axis) (`indices` has `g`'s shape)."""
        ...

    def gather_nd_input_grad(
        self, g: Array, indices: Any, x_shape: Shape, batch_dims: int
    ) -> Array:
        """Adjoint of ONNX GatherND(x, indices, batch_dims): a scatter-add of `g`."""
        ...

    def einsum(self, equation: str, operands: Sequence[Array]) -> Array:
        """`numpy.einsum` with an explicit output (`"ij,jk->ik"`; letters only, no ellipsis)."""
        ...


# The signature of a backward rule: fn(ops, node, fwd, grads, opts) -> signals.
#   ops    the backend (`ArrayOps`)
#   node   the `ir.graph.Node` (attributes, constant inputs, static shapes)
#   fwd    the recorded forward tensors it declared in `reads` (`engine.executor.StepView`)
#   grads  one incoming signal per node output (None where no signal arrives)
#   opts   the method's options
# It returns signals for a prefix of the node's inputs (None: no signal); the executor pads
# the list to the node's input count.
RuleFn = Callable[..., Sequence[Any]]

F = TypeVar("F", bound=Callable[..., Any])
_FUSED: dict[tuple[str, str], Callable[..., Any]] = {}


def register_fused(backend: str, step: str) -> Callable[[F], F]:
    """Decorator: `fn(ops, *args, **hints)` replaces composite `step` on backend `backend`."""

    def wrap(fn: F) -> F:
        _FUSED[(backend, step)] = fn
        return fn

    return wrap


def fused_for(backend: str, step: str) -> Callable[..., Any] | None:
    """The fused kernel registered for (`backend`, `step`), if any."""
    return _FUSED.get((backend, step))


def composite(step: str) -> Callable[[F], F]:
    """Decorator: `fn(ops, ...)` is the portable definition of composite `step`; a call runs
    the backend's fused kernel instead when one is registered for ``ops.name``."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(ops: ArrayOps, *args: Any, **kwargs: Any) -> Any:
            fused = fused_for(ops.name, step)
            return (fused or fn)(ops, *args, **kwargs)

        call.step = step  # type: ignore[attr-defined]
        call.portable = fn  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return wrap

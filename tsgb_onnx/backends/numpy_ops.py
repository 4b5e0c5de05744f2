"""NumPy array namespace for backward rules (the CPU executor's backend).

Rules call only methods of an `ArrayOps` object, so the same rule runs on another
backend (CuPy) that provides the same methods. Composite steps (conv transpose, pool
backward, box sums) are methods too, so a backend can replace them with fused kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tsgb_onnx.engine.ops import EPS  # defined once there; cupy_ops/onnx_ops import it here
from tsgb_onnx.ir.geometry import Window

Arr = np.ndarray  # this backend's array handle


class NumpyOps:
    """Array operations on NumPy ndarrays (float32)."""

    name = "numpy"
    xp = np

    # -- conversion -------------------------------------------------------------------
    def asarray(self, value: Any, dtype: Any = np.float32) -> Arr:
        return np.asarray(value, dtype=dtype)

    def to_numpy(self, a: Arr) -> Arr:
        return np.asarray(a)

    def shape(self, a: Arr) -> tuple[int, ...]:
        return tuple(a.shape)

    def ndim(self, a: Arr) -> int:
        return a.ndim

    def zeros(self, shape: Sequence[int], dtype: Any = np.float32) -> Arr:
        return np.zeros(tuple(int(s) for s in shape), dtype=dtype)

    def one_hot(self, target: Any, classes: int, dtype: Any = np.float32) -> Arr:
        out = np.zeros((len(target), classes), dtype=dtype)
        out[np.arange(len(target)), target] = 1
        return out

    # -- element-wise -------------------------------------------------------------------
    def add(self, a: Arr, b: Arr | float) -> Arr:
        return a + b

    def sub(self, a: Arr, b: Arr | float) -> Arr:
        return a - b

    def mul(self, a: Arr, b: Arr | float) -> Arr:
        return a * b

    def div(self, a: Arr, b: Arr | float) -> Arr:
        return a / b

    def neg(self, a: Arr) -> Arr:
        return -a

    def abs(self, a: Arr) -> Arr:
        return np.abs(a)

    def sign(self, a: Arr) -> Arr:
        return np.sign(a)

    def exp(self, a: Arr) -> Arr:
        return np.exp(a)

    def erf(self, a: Arr) -> Arr:
        return erf_of(np, a)

    def square(self, a: Arr) -> Arr:
        return np.square(a)

    def power(self, a: Arr, p: float) -> Arr:
        return np.power(a, p)

    def maximum(self, a: Arr, b: Arr | float) -> Arr:
        return np.maximum(a, b)

    def minimum(self, a: Arr, b: Arr | float) -> Arr:
        return np.minimum(a, b)

    def where(self, cond: Arr, a: Arr | float, b: Arr | float) -> Arr:
        return np.where(cond, a, b).astype(np.float32, copy=False)

    def greater(self, a: Arr, b: Arr | float) -> Arr:
        return a > b

    def less(self, a: Arr, b: Arr | float) -> Arr:
        return a < b

    def logical_and(self, a: Arr, b: Arr) -> Arr:
        return np.logical_and(a, b)

    def mask(self, g: Arr, cond: Arr) -> Arr:
        """`g` where `cond` holds, 0 elsewhere."""
        return g * cond

    def mask_below(self, g: Arr, y: Arr, bound: float) -> Arr:
        """`g` where y < bound, 0 elsewhere, for y <= bound (a Clip's output and its max)."""
        return self.mask(g, self.less(y, bound))

    def div_stab(self, a: Arr, d: Arr, eps: float = EPS, nonnegative: bool = False) -> Arr:
        """a / (d + eps*sgn(d)) with sgn(0) = 1: never NaN or Inf for finite inputs.
        (`nonnegative` promises d >= 0; a backend may skip the sign test.)"""
        step = np.asarray(eps, dtype=d.dtype)
        stabilised = np.where(d >= 0, step, -step)  # sgn(0) = sgn(-0) = +1
        stabilised += d
        return np.divide(a, stabilised, out=stabilised)

    # -- reductions and layout -------------------------------------------------------------
    def sum(self, a: Arr, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Arr:
        return np.sum(a, axis=axis, keepdims=keepdims)

    def any_negative(self, a: Arr, axes: Sequence[int]) -> Arr:
        return np.any(a < 0, axis=tuple(axes), keepdims=True)

    def reshape(self, a: Arr, shape: Sequence[int]) -> Arr:
        return a.reshape(tuple(int(s) for s in shape))

    def transpose(self, a: Arr, perm: Sequence[int]) -> Arr:
        return np.ascontiguousarray(a.transpose(tuple(perm)))

    def swap_last(self, a: Arr) -> Arr:
        return np.swapaxes(a, -1, -2)

    def expand_to(self, a: Arr, shape: Sequence[int]) -> Arr:
        """Broadcast `a` to `shape` as a new writable array."""
        return np.ascontiguousarray(np.broadcast_to(a, tuple(int(s) for s in shape)))

    def sum_to_shape(self, g: Arr, shape: Sequence[int]) -> Arr:
        """Reduce a broadcast signal back to an operand's shape."""
        shape = tuple(int(s) for s in shape)
        if g.shape == shape:
            return g
        lead = g.ndim - len(shape)
        if lead > 0:
            g = g.sum(axis=tuple(range(lead)))
        axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
        if axes:
            g = g.sum(axis=axes, keepdims=True)
        return g.reshape(shape)

    def matmul(self, a: Arr, b: Arr) -> Arr:
        return np.matmul(a, b)

    def concat(self, arrays: Sequence[Arr], axis: int) -> Arr:
        return np.concatenate(arrays, axis=axis)

    def split(self, a: Arr, sizes: Sequence[int], axis: int) -> list[Arr]:
        bounds = np.cumsum(sizes)[:-1]
        return np.split(a, bounds, axis=axis)

    # -- composite steps (a GPU backend may fuse these) --------------------------------------
    def conv_input_grad(
        self, gy: Arr, w: Arr, x_shape: Sequence[int], win: Window, group: int
    ) -> Arr:
        """Exact Conv input gradient: transposed convolution of `gy` with `w`."""
        B, M = int(x_shape[0]), int(x_shape[1])
        spatial = tuple(int(s) for s in x_shape[2:])
        out = gy.shape[2:]
        N, Mg = w.shape[0], w.shape[1]
        Ng = N // group
        P = int(np.prod(out))
        padded = win.padded_size(spatial, out)
        gx = np.zeros((B, M) + padded, dtype=np.float32)
        gyr = gy.reshape(B, group, Ng, P)
        wr = w.reshape((group, Ng, Mg) + w.shape[2:])
        for offset in win.offsets():
            wk = wr[(slice(None),) * 3 + tuple(offset)]  # (G, Ng, Mg)
            if Ng == 1 and Mg == 1:
                contrib = gyr * wk.reshape(1, group, 1, 1)  # depthwise: (B, G, 1, P)
            else:
                contrib = np.matmul(wk.transpose(0, 2, 1), gyr)  # (B, G, Mg, P)
            sl = (slice(None), slice(None)) + win.window_slices(offset, out)
            gx[sl] += contrib.reshape((B, M) + tuple(out))
        return gx[(slice(None), slice(None)) + win.crop(spatial)]

    def box_sum(self, a: Arr, win: Window, out: Sequence[int]) -> Arr:
        """Sum of `a` (zero-padded) over every window: a conv with a kernel of ones."""
        if win.is_identity:
            return a
        spatial = a.shape[2:]
        padded = win.padded_size(spatial, out)
        ap = np.zeros(a.shape[:2] + padded, dtype=a.dtype)
        ap[(slice(None), slice(None)) + win.crop(spatial)] = a
        total = None
        for offset in win.offsets():
            v = ap[(slice(None), slice(None)) + win.window_slices(offset, out)]
            total = v.copy() if total is None else np.add(total, v, out=total)
        return total

    def div_box_sum(self, a: Arr, mass: Arr, win: Window, out: Sequence[int]) -> Arr:
        """a ⊘ box_sum(mass) for mass >= 0 (`div_stab` with a non-negative denominator)."""
        return self.div_stab(a, self.box_sum(mass, win, out), nonnegative=True)

    def box_sum_transposed(self, r: Arr, win: Window, spatial: Sequence[int]) -> Arr:
        """Adjoint of `box_sum`: scatter each window's value back over its inputs."""
        if win.is_identity:
            return r
        out = r.shape[2:]
        padded = win.padded_size(spatial, out)
        gx = np.zeros(r.shape[:2] + padded, dtype=r.dtype)
        for offset in win.offsets():
            gx[(slice(None), slice(None)) + win.window_slices(offset, out)] += r
        return gx[(slice(None), slice(None)) + win.crop(spatial)]

    def maxpool_input_grad(self, x: Arr, gy: Arr, win: Window) -> Arr:
        """Route each output's signal to its window's arg-max (ties: first index)."""
        spatial = x.shape[2:]
        out = gy.shape[2:]
        padded = win.padded_size(spatial, out)
        xp = np.full(x.shape[:2] + padded, -np.inf, dtype=x.dtype)
        xp[(slice(None), slice(None)) + win.crop(spatial)] = x
        best = arg = None
        for k, offset in enumerate(win.offsets()):
            v = xp[(slice(None), slice(None)) + win.window_slices(offset, out)]
            if best is None:
                best, arg = v.copy(), np.zeros(v.shape, dtype=np.int32)
            else:
                better = v > best
                np.copyto(best, v, where=better)
                arg[better] = k
        gx = np.zeros_like(xp)
        for k, offset in enumerate(win.offsets()):
            gx[(slice(None), slice(None)) + win.window_slices(offset, out)] += np.where(
                arg == k, gy, 0
            )
        return gx[(slice(None), slice(None)) + win.crop(spatial)]

    def avgpool_divisor(
        self, spatial: Sequence[int], out: Sequence[int], win: Window, count_include_pad: bool
    ) -> Arr:
        """Number of counted elements in each window, shape [1, 1, *out]."""
        ones = np.ones((1, 1) + tuple(spatial), dtype=np.float32)
        if count_include_pad:
            nd = win.nd
            grown = tuple(spatial[i] + win.pads[i] + win.pads[i + nd] for i in range(nd))
            ones = np.ones((1, 1) + grown, dtype=np.float32)
            shifted = Window(win.kernel, win.strides, win.dilations, (0,) * (2 * nd))
            # windows of `shifted` over the explicitly padded input; ceil-mode overhang uncounted
            return self.box_sum(ones, shifted, out)
        return self.box_sum(ones, win, out)

    def pad_input_grad(self, g: Arr, x_shape: Sequence[int], pads: Sequence[int], mode: str) -> Arr:
        """Adjoint of ONNX Pad (constant, edge, reflect, wrap; negative pads crop)."""
        nd = len(x_shape)
        for axis in range(nd):
            begin, end = int(pads[axis]), int(pads[axis + nd])
            if begin == 0 and end == 0:
                continue
            adjoint = pad_adjoint(int(x_shape[axis]), g.shape[axis], begin, mode)
            g = np.moveaxis(np.tensordot(g, adjoint, axes=([axis], [0])), -1, axis)
        return np.ascontiguousarray(g)

    def scatter_slices(self, g: Arr, x_shape: Sequence[int], index: tuple) -> Arr:
        """Zeros of `x_shape` with `g` written at `index` (adjoint of a slice)."""
        gx = np.zeros(tuple(int(s) for s in x_shape), dtype=np.float32)
        gx[index] = g
        return gx

    def channel_window_sum(self, a: Arr, size: int) -> Arr:
        """LRN's window sum over channels: out[c] = sum a[c - (size-1)//2 .. c + size//2]."""
        return self._channel_window(a, (size - 1) // 2, size // 2)

    def channel_window_sum_transposed(self, a: Arr, size: int) -> Arr:
        """Adjoint of `channel_window_sum`: the window mirrored."""
        return self._channel_window(a, size // 2, (size - 1) // 2)

    @staticmethod
    def _channel_window(a: Arr, before: int, after: int) -> Arr:
        pad = [(0, 0)] * a.ndim
        pad[1] = (before, after)
        padded = np.pad(a, pad)
        channels = a.shape[1]
        total = np.zeros_like(a)
        for k in range(before + after + 1):
            total += padded[:, k : k + channels]
        return total

    # -- linear maps along one axis, index adjoints, contractions ---------------------------
    def axis_matmul(self, a: Arr, axis: int, matrix: Any) -> Arr:
        """`a`'s `axis` (size m) contracted with `matrix` [m, n]: that axis gets size n."""
        axis %= a.ndim
        m = np.asarray(matrix, dtype=np.float32)
        return np.ascontiguousarray(np.moveaxis(np.tensordot(a, m, axes=([axis], [0])), -1, axis))

    def gather_input_grad(self, g: Arr, indices: Any, x_shape: Sequence[int], axis: int) -> Arr:
        """Adjoint of Gather: `g`'s slices added into zeros of `x_shape` at `indices`."""
        x_shape = tuple(int(s) for s in x_shape)
        axis %= len(x_shape)
        idx = np.asarray(indices).astype(np.int64).reshape(-1) % x_shape[axis]
        gm = g.reshape(x_shape[:axis] + (idx.size,) + x_shape[axis + 1 :])
        gx = np.zeros(x_shape, dtype=np.float32)
        np.add.at(np.moveaxis(gx, axis, 0), idx, np.moveaxis(gm, axis, 0))
        return gx

    def gather_elements_input_grad(
        self, g: Arr, indices: Any, x_shape: Sequence[int], axis: int
    ) -> Arr:
        """Adjoint of GatherElements: g[i] added at x[i with i[axis] = indices[i]]."""
        x_shape = tuple(int(s) for s in x_shape)
        axis %= len(x_shape)
        idx = np.asarray(indices).astype(np.int64) % x_shape[axis]
        where = list(np.indices(idx.shape, sparse=True))
        where[axis] = idx
        gx = np.zeros(x_shape, dtype=np.float32)
        np.add.at(gx, tuple(where), g)
        return gx

    def gather_nd_input_grad(
        self, g: Arr, indices: Any, x_shape: Sequence[int], batch_dims: int
    ) -> Arr:
        """Adjoint of GatherND: g's slices added at the indexed positions of each batch."""
        x_shape = tuple(int(s) for s in x_shape)
        p, flat, k_size, tail = gather_nd_layout(np.asarray(indices), x_shape, batch_dims)
        gx = np.zeros((p, k_size, tail), dtype=np.float32)
        np.add.at(gx, (np.arange(p)[:, None], flat), g.reshape(p, flat.shape[1], tail))
        return gx.reshape(x_shape)

    def einsum(self, equation: str, operands: Sequence[Arr]) -> Arr:
        return np.einsum(equation, *operands).astype(np.float32, copy=False)

    def conv(self, x: Arr, w: Arr, win: Window, group: int, out: Sequence[int]) -> Arr:
        """Forward Conv of `x` with `w` (no bias, zero padding) onto the `out` grid."""
        B, M = x.shape[0], x.shape[1]
        spatial = x.shape[2:]
        out = tuple(int(o) for o in out)
        N, Mg = w.shape[0], w.shape[1]
        Ng = N // group
        P = int(np.prod(out))
        padded = win.padded_size(spatial, out)
        xp = np.zeros((B, M) + padded, dtype=np.float32)
        xp[(slice(None), slice(None)) + win.crop(spatial)] = x
        wr = w.reshape((group, Ng, Mg) + w.shape[2:])
        y = np.zeros((B, group, Ng, P), dtype=np.float32)
        for offset in win.offsets():
            v = xp[(slice(None), slice(None)) + win.window_slices(offset, out)]
            v = v.reshape(B, group, Mg, P)
            wk = wr[(slice(None),) * 3 + tuple(offset)]  # (G, Ng, Mg)
            if Ng == 1 and Mg == 1:
                y += v * wk.reshape(1, group, 1, 1)
            else:
                y += np.matmul(wk, v)
        return y.reshape((B, N) + out)


def pad_adjoint(n: int, m: int, begin: int, mode: str) -> np.ndarray:
    """[m, n] matrix A with dX = dY A along one axis of ONNX Pad (n inputs, m outputs)."""
    src = np.arange(m) - begin
    if mode == "edge":
        src = np.clip(src, 0, n - 1)
    elif mode == "reflect":
        src = np.abs(src)
        src = np.where(src > n - 1, 2 * (n - 1) - src, src)
    elif mode == "wrap":
        src = np.mod(src, n)
    valid = (src >= 0) & (src < n)
    adjoint = np.zeros((m, n), dtype=np.float32)
    adjoint[np.nonzero(valid)[0], src[valid]] = 1
    return adjoint


def gather_nd_layout(
    indices: np.ndarray, x_shape: Sequence[int], batch_dims: int
) -> tuple[int, np.ndarray, int, int]:
    """GatherND's indices as flat positions: (P, flat [P, M], K, T) for data viewed as
    [P, K, T] (P the batch dims, K the indexed dims, T the slice each index selects)."""
    k = int(indices.shape[-1])
    b = int(batch_dims)
    indexed = [int(d) for d in x_shape[b : b + k]]
    p = int(np.prod(x_shape[:b], dtype=np.int64))
    tail = int(np.prod(x_shape[b + k :], dtype=np.int64))
    idx = indices.astype(np.int64).reshape(p, -1, k) % np.asarray(indexed, dtype=np.int64)
    flat = np.ravel_multi_index(tuple(np.moveaxis(idx, -1, 0)), indexed) if k else idx[..., 0] * 0
    return p, flat.reshape(p, -1), int(np.prod(indexed, dtype=np.int64)), tail


# Cephes' erf/erfc rational approximations (S. L. Moshier, public domain; the ones SciPy's
# special.erf uses), evaluated in float64: accurate to float64 rounding.
_ERF_T = (
    9.60497373987051638749e0,
    9.00260197203842689217e1,
    2.23200534594684319226e3,
    7.00332514112805075473e3,
    5.55923013010394962768e4,
)
_ERF_U = (
    1.0,
    3.35617141647503099647e1,
    5.21357949780152679795e2,
    4.59432382970980127987e3,
    2.26290000613890934246e4,
    4.92673942608635921086e4,
)
_ERFC_P = (
    2.46196981473530512524e-10,
    5.64189564831068821977e-1,
    7.46321056442269912687e0,
    4.86371970985681366614e1,
    1.96520832956077098242e2,
    5.26445194995477358631e2,
    9.34528527171957607540e2,
    1.02755188689515710272e3,
    5.57535335369399327526e2,
)
_ERFC_Q = (
    1.0,
    1.32281951154744992508e1,
    8.67072140885989742329e1,
    3.54937778887819891062e2,
    9.75708501743205489753e2,
    1.82390916687909736289e3,
    2.24633760818710981792e3,
    1.65666309194161350182e3,
    5.57535340817727675546e2,
)
_ERFC_R = (
    5.64189583547755073984e-1,
    1.27536670759978104416e0,
    5.01905042251180477414e0,
    6.16021097993053585195e0,
    7.40974269950448939160e0,
    2.97886665372100240670e0,
)
_ERFC_S = (
    1.0,
    2.26052863220117276590e0,
    9.39603524938001434673e0,
    1.20489539808096656605e1,
    1.70814450747565897222e1,
    9.60896809063285878198e0,
    3.36907645100081516050e0,
)


def _poly(xp: Any, x: Any, coefficients: Sequence[float]) -> Any:
    total = xp.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        total = total * x + c
    return total


def erf_of(xp: Any, a: Any) -> Any:
    """erf of a float array on array module `xp` (NumPy or CuPy), computed in float64."""
    x = xp.asarray(a, dtype=np.float64)
    ax = xp.abs(x)
    inner = xp.minimum(xp.maximum(x, -1.0), 1.0)
    small = inner * _poly(xp, inner * inner, _ERF_T) / _poly(xp, inner * inner, _ERF_U)
    big = xp.minimum(xp.maximum(ax, 1.0), 27.0)  # erfc(27) underflows float64: erf = ±1
    near = _poly(xp, big, _ERFC_P) / _poly(xp, big, _ERFC_Q)
    far = _poly(xp, big, _ERFC_R) / _poly(xp, big, _ERFC_S)
    erfc = xp.exp(-big * big) * xp.where(big < 8.0, near, far)
    large = xp.where(x < 0, erfc - 1.0, 1.0 - erfc)
    return xp.where(ax <= 1.0, small, large).astype(np.float32)

"""NumPy array namespace for backward rules (the CPU executor's backend).

Rules call only methods of an `ArrayOps` object, so the same rule runs on another
backend (CuPy) that provides the same methods. Composite steps (conv transpose, pool
backward, box sums) are methods too, so a backend can replace them with fused kernels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tsgb_onnx.ir.geometry import Window

EPS = 1e-10


class NumpyOps:
    """Array operations on NumPy ndarrays (float32)."""

    name = "numpy"
    xp = np

    # -- conversion -------------------------------------------------------------------
    def asarray(self, value: Any, dtype=np.float32) -> np.ndarray:
        return np.asarray(value, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def shape(self, a) -> tuple[int, ...]:
        return tuple(a.shape)

    def ndim(self, a) -> int:
        return a.ndim

    def zeros(self, shape: Sequence[int], dtype=np.float32) -> np.ndarray:
        return np.zeros(tuple(int(s) for s in shape), dtype=dtype)

    def one_hot(self, target: np.ndarray, classes: int, dtype=np.float32) -> np.ndarray:
        out = np.zeros((len(target), classes), dtype=dtype)
        out[np.arange(len(target)), target] = 1
        return out

    # -- element-wise -------------------------------------------------------------------
    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def mul(self, a, b):
        return a * b

    def div(self, a, b):
        return a / b

    def neg(self, a):
        return -a

    def abs(self, a):
        return np.abs(a)

    def sign(self, a):
        return np.sign(a)

    def exp(self, a):
        return np.exp(a)

    def square(self, a):
        return np.square(a)

    def power(self, a, p):
        return np.power(a, p)

    def maximum(self, a, b):
        return np.maximum(a, b)

    def minimum(self, a, b):
        return np.minimum(a, b)

    def where(self, cond, a, b):
        return np.where(cond, a, b).astype(np.float32, copy=False)

    def greater(self, a, b):
        return a > b

    def less(self, a, b):
        return a < b

    def logical_and(self, a, b):
        return np.logical_and(a, b)

    def mask(self, g, cond):
        """`g` where `cond` holds, 0 elsewhere."""
        return g * cond

    def mask_below(self, g, y, bound: float):
        """`g` where y < bound, 0 elsewhere, for y <= bound (a Clip's output and its max)."""
        return self.mask(g, self.less(y, bound))

    def div_stab(self, a, d, eps: float = EPS, nonnegative: bool = False):
        """a / (d + eps*sgn(d)) with sgn(0) = 1: never NaN or Inf for finite inputs.
        (`nonnegative` promises d >= 0; a backend may skip the sign test.)"""
        step = np.asarray(eps, dtype=d.dtype)
        stabilised = np.where(d >= 0, step, -step)  # sgn(0) = sgn(-0) = +1
        stabilised += d
        return np.divide(a, stabilised, out=stabilised)

    # -- reductions and layout -------------------------------------------------------------
    def sum(self, a, axis=None, keepdims: bool = False):
        return np.sum(a, axis=axis, keepdims=keepdims)

    def any_negative(self, a, axes):
        return np.any(a < 0, axis=tuple(axes), keepdims=True)

    def reshape(self, a, shape: Sequence[int]):
        return a.reshape(tuple(int(s) for s in shape))

    def transpose(self, a, perm: Sequence[int]):
        return np.ascontiguousarray(a.transpose(tuple(perm)))

    def swap_last(self, a):
        return np.swapaxes(a, -1, -2)

    def broadcast_to(self, a, shape: Sequence[int]):
        return np.broadcast_to(a, tuple(int(s) for s in shape))

    def expand_to(self, a, shape: Sequence[int]):
        """Broadcast `a` to `shape` as a new writable array."""
        return np.ascontiguousarray(np.broadcast_to(a, tuple(int(s) for s in shape)))

    def sum_to_shape(self, g, shape: Sequence[int]):
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

    def matmul(self, a, b):
        return np.matmul(a, b)

    def concat(self, arrays, axis: int):
        return np.concatenate(arrays, axis=axis)

    def split(self, a, sizes: Sequence[int], axis: int):
        bounds = np.cumsum(sizes)[:-1]
        return np.split(a, bounds, axis=axis)

    # -- composite steps (a GPU backend may fuse these) --------------------------------------
    def conv_input_grad(self, gy, w, x_shape: Sequence[int], win: Window, group: int):
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

    def box_sum(self, a, win: Window, out: Sequence[int]):
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

    def div_box_sum(self, a, mass, win: Window, out: Sequence[int]):
        """a ⊘ box_sum(mass) for mass >= 0 (`div_stab` with a non-negative denominator)."""
        return self.div_stab(a, self.box_sum(mass, win, out), nonnegative=True)

    def box_sum_transposed(self, r, win: Window, spatial: Sequence[int]):
        """Adjoint of `box_sum`: scatter each window's value back over its inputs."""
        if win.is_identity:
            return r
        out = r.shape[2:]
        padded = win.padded_size(spatial, out)
        gx = np.zeros(r.shape[:2] + padded, dtype=r.dtype)
        for offset in win.offsets():
            gx[(slice(None), slice(None)) + win.window_slices(offset, out)] += r
        return gx[(slice(None), slice(None)) + win.crop(spatial)]

    def maxpool_input_grad(self, x, gy, win: Window):
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

    def avgpool_divisor(self, spatial: Sequence[int], out: Sequence[int], win: Window,
                        count_include_pad: bool):
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

    def pad_input_grad(self, g, x_shape: Sequence[int], pads: Sequence[int], mode: str):
        """Adjoint of ONNX Pad (constant, edge, reflect, wrap; negative pads crop)."""
        nd = len(x_shape)
        for axis in range(nd):
            begin, end = int(pads[axis]), int(pads[axis + nd])
            if begin == 0 and end == 0:
                continue
            adjoint = pad_adjoint(int(x_shape[axis]), g.shape[axis], begin, mode)
            g = np.moveaxis(np.tensordot(g, adjoint, axes=([axis], [0])), -1, axis)
        return np.ascontiguousarray(g)

    def scatter_slices(self, g, x_shape: Sequence[int], index: tuple):
        """Zeros of `x_shape` with `g` written at `index` (adjoint of a slice)."""
        gx = np.zeros(tuple(int(s) for s in x_shape), dtype=np.float32)
        gx[index] = g
        return gx

    def channel_window_sum(self, a, size: int):
        """LRN's window sum over channels: out[c] = sum a[c - (size-1)//2 .. c + size//2]."""
        return self._channel_window(a, (size - 1) // 2, size // 2)

    def channel_window_sum_transposed(self, a, size: int):
        """Adjoint of `channel_window_sum`: the window mirrored."""
        return self._channel_window(a, size // 2, (size - 1) // 2)

    @staticmethod
    def _channel_window(a, before: int, after: int):
        pad = [(0, 0)] * a.ndim
        pad[1] = (before, after)
        padded = np.pad(a, pad)
        channels = a.shape[1]
        total = np.zeros_like(a)
        for k in range(before + after + 1):
            total += padded[:, k:k + channels]
        return total

    def conv(self, x, w, win: Window, group: int, out: Sequence[int]):
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

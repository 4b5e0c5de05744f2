"""Window geometry shared by Conv and pooling rules (pure Python on shapes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

from tsgb_onnx.errors import ModelError


@dataclass(frozen=True)
class Window:
    """Sliding-window geometry of a Conv / pool over `nd` spatial axes.

    `pads` is ONNX order (all begins, then all ends) and already resolves auto_pad.
    """

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]

    @property
    def nd(self) -> int:
        return len(self.kernel)

    def offsets(self):
        """Kernel offsets in row-major order (the order PyTorch scans a window)."""
        return product(*(range(k) for k in self.kernel))

    def extent(self, axis: int) -> int:
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1

    def padded_size(self, spatial: Sequence[int], out: Sequence[int]) -> tuple[int, ...]:
        """Size of the padded input that holds every window (ceil_mode included)."""
        return tuple(
            max(
                spatial[i] + self.pads[i] + self.pads[i + self.nd],
                (out[i] - 1) * self.strides[i] + self.extent(i),
            )
            for i in range(self.nd)
        )

    def window_slices(self, offset: Sequence[int], out: Sequence[int]) -> tuple[slice, ...]:
        """Slices of the padded input read by kernel `offset` for every output position."""
        return tuple(
            slice(
                offset[i] * self.dilations[i],
                offset[i] * self.dilations[i] + (out[i] - 1) * self.strides[i] + 1,
                self.strides[i],
            )
            for i in range(self.nd)
        )

    @property
    def is_identity(self) -> bool:
        """A 1x1 window with stride 1 and no padding: box sums are the identity."""
        return (
            all(k == 1 for k in self.kernel)
            and all(s == 1 for s in self.strides)
            and not any(self.pads)
        )

    def crop(self, spatial: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(self.pads[i], self.pads[i] + spatial[i]) for i in range(self.nd))


def window_of(node, spatial: Sequence[int], kernel: Sequence[int] | None = None) -> Window:
    """Resolve a Conv/pool node's window (strides, dilations, pads, auto_pad)."""
    if kernel is None:
        kernel = node.attr("kernel_shape")
        if kernel is None:
            w = node.const(1)
            if w is None:
                raise ModelError(
                    f"node '{node.name}' ({node.op_type}): weights must be constant "
                    "or kernel_shape given"
                )
            kernel = w.shape[2:]
    kernel = tuple(int(k) for k in kernel)
    nd = len(kernel)
    strides = tuple(node.attr("strides") or (1,) * nd)
    dilations = tuple(node.attr("dilations") or (1,) * nd)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for i in range(nd):
            out = math.ceil(spatial[i] / strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i], 0)
            small = total // 2
            big = total - small
            begins.append(small if auto_pad == "SAME_UPPER" else big)
            ends.append(big if auto_pad == "SAME_UPPER" else small)
        pads = tuple(begins + ends)
    elif auto_pad == "VALID":
        pads = (0,) * (2 * nd)
    else:
        pads = tuple(node.attr("pads") or (0,) * (2 * nd))
    return Window(kernel, strides, dilations, pads)

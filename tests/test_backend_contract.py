"""The backend contract (`engine.ops.ArrayOps`) and the three backends that implement it.

* Structure: every backend class has every operation the Protocol declares, with the same
  parameter names (and defaults where the Protocol gives one).
* Conformance: every contract operation, run on the same random float32 inputs by
  `NumpyOps` (the reference), by `XpOps(numpy)` (the CuPy code path over NumPy) and by
  `OnnxOps` (the emitted nodes, run in ONNX Runtime with a dynamic batch), gives the same
  values: to ~1e-5 for arithmetic, exactly for masks, comparisons and selections.
* A guard fails when a contract operation has no conformance case.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

from tsgb_onnx.backends import numpy_ops  # noqa: E402
from tsgb_onnx.backends.cupy_ops import CupyOps, XpOps  # noqa: E402
from tsgb_onnx.backends.numpy_ops import NumpyOps  # noqa: E402
from tsgb_onnx.backends.onnx_ops import Batch, GraphBuilder, OnnxOps, Sym  # noqa: E402
from tsgb_onnx.engine.ops import EPS, ArrayOps  # noqa: E402
from tsgb_onnx.ir.geometry import Window  # noqa: E402

B = 2  # the batch size of the test inputs; a leading axis of this size is dynamic on ONNX
OPSET = 17
RTOL = ATOL = 1e-5


def contract_ops() -> list[str]:
    """The operations `ArrayOps` declares (its public methods)."""
    return sorted(
        n for n, v in vars(ArrayOps).items() if inspect.isfunction(v) and not n.startswith("_")
    )


BACKENDS = [NumpyOps, XpOps, CupyOps, OnnxOps]
# public methods that are not backward-rule operations (the emitter's own handles)
NOT_CONTRACT = {"OnnxOps": {"const", "shape_tensor"}}


# -- structure ----------------------------------------------------------------------------------
def _params(fn: Callable) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())[1:]  # without self


@pytest.mark.parametrize("cls", BACKENDS, ids=lambda c: c.__name__)
def test_backend_implements_every_contract_op(cls):
    missing = [op for op in contract_ops() if not callable(getattr(cls, op, None))]
    assert not missing, f"{cls.__name__} lacks contract operations {missing}"
    for op in contract_ops():
        want, got = _params(getattr(ArrayOps, op)), _params(getattr(cls, op))
        assert [p.name for p in got] == [p.name for p in want], (
            f"{cls.__name__}.{op}{inspect.signature(getattr(cls, op))} != "
            f"ArrayOps.{op}{inspect.signature(getattr(ArrayOps, op))}"
        )
        for w, g in zip(want, got):
            assert g.kind == w.kind, f"{cls.__name__}.{op}: parameter {g.name} kind"
            assert (g.default is inspect.Parameter.empty) == (
                w.default is inspect.Parameter.empty
            ), f"{cls.__name__}.{op}: parameter {g.name} default presence"
            if w.default not in (inspect.Parameter.empty, Ellipsis):
                assert g.default == w.default, f"{cls.__name__}.{op}: default of {g.name}"


@pytest.mark.parametrize("cls", BACKENDS, ids=lambda c: c.__name__)
def test_backend_has_no_public_op_outside_the_contract(cls):
    contract = set(contract_ops()) | NOT_CONTRACT.get(cls.__name__, set())
    public = {n for n, v in inspect.getmembers(cls, callable) if not n.startswith("_")}
    assert public <= contract, f"{cls.__name__}: not in ArrayOps: {sorted(public - contract)}"


def test_eps_is_defined_once():
    assert numpy_ops.EPS is EPS  # re-exported for the GPU backend, not redefined
    for cls in BACKENDS:
        assert inspect.signature(cls.div_stab).parameters["eps"].default is EPS, cls.__name__


def test_backend_instances_satisfy_the_protocol():
    for ops in (NumpyOps(), XpOps(np), OnnxOps(GraphBuilder(OPSET, set()))):
        assert isinstance(ops, ArrayOps), type(ops).__name__


# -- conformance cases ----------------------------------------------------------------------------
rng = np.random.default_rng(20240611)


def _f32(*shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _with_zeros(a: np.ndarray, offset: int = 0) -> np.ndarray:
    """`a` with exact zeros, +0 and -0, from element `offset` on."""
    a = a.copy()
    flat = a.reshape(-1)
    flat[offset::7] = 0.0
    flat[offset + 3 :: 11] = -0.0
    return a


# a strided, padded (asymmetric), dilated 2-D window over 9x8 -> 4x4, and an unstrided one
WIN = Window(kernel=(3, 2), strides=(2, 2), dilations=(2, 1), pads=(1, 1, 2, 0))
WIN_UNIT = Window(kernel=(3, 2), strides=(1, 1), dilations=(2, 1), pads=(2, 1, 1, 0))
SPATIAL = (9, 8)


def _out(win: Window, spatial=SPATIAL) -> tuple[int, ...]:
    return tuple(
        (spatial[i] + win.pads[i] + win.pads[i + win.nd] - win.extent(i)) // win.strides[i] + 1
        for i in range(win.nd)
    )


OUT, OUT_UNIT = _out(WIN), _out(WIN_UNIT)
assert OUT == (4, 4) and OUT_UNIT == (8, 8)


@dataclass
class Case:
    op: str  # the contract operation under test (the test id starts with it)
    fn: Callable[..., Any]  # fn(ops, *handles) -> result
    inputs: list = field(default_factory=list)
    variant: str = ""
    exact: bool = False  # masks, comparisons, selections: bit-exact
    const: tuple = ()  # inputs that are constants (weights) on the emitter
    onnx_raises: type | None = None

    @property
    def id(self) -> str:
        return f"{self.op}-{self.variant}" if self.variant else self.op


def _cases() -> list[Case]:
    a = _with_zeros(_f32(B, 3, 4, 5))
    b = _with_zeros(_f32(B, 3, 4, 5), offset=2)
    row = _f32(1, 3, 1, 5)
    nonzero = (np.abs(_f32(B, 3, 4, 5)) + 0.5) * np.sign(_f32(B, 3, 4, 5))
    ties = np.where(rng.random(a.shape) < 0.3, a, b).astype(np.float32)  # equal where < 0.3
    cond = rng.random(a.shape) < 0.5
    cond2 = rng.random(a.shape) < 0.5
    mixed = a.copy()
    mixed[1] = np.abs(mixed[1])  # row 1 has no negative value
    bounded = np.minimum(np.abs(_f32(B, 3, 4, 5)) * 4, 6).astype(np.float32)
    bounded.reshape(-1)[::5] = 6.0
    bounded.reshape(-1)[1::9] = np.nextafter(np.float32(6), np.float32(0))
    x = _f32(B, 4, *SPATIAL)
    w = _f32(6, 2, *WIN.kernel)  # 4 -> 6 channels in 2 groups
    w_dw = _f32(4, 1, *WIN.kernel)  # depthwise
    gy, gy_unit = _f32(B, 6, *OUT), _f32(B, 6, *OUT_UNIT)
    mass = np.abs(_f32(B, 4, *SPATIAL))
    mass[:, :, :4, :4] = 0.0  # windows with no mass: the stabiliser alone
    r, r_unit = _f32(B, 4, *OUT), _f32(B, 4, *OUT_UNIT)
    small = _f32(B, 3, 5, 6)
    target = np.array([3, 0], dtype=np.int64)
    lead = lambda ops, h: tuple(ops.shape(h)[:1])  # noqa: E731 - the (maybe dynamic) batch
    interp = _f32(4, 6)  # an axis of size 4 becomes 6
    take = np.array([[0, -1], [2, 2], [3, 1]], dtype=np.int64)  # repeats and a negative index
    picks = rng.integers(-5, 5, (B, 3, 4, 2))
    many = rng.integers(-300, 300, 300)
    rng_nd = np.array([[0, 1, 2], [-1, 0, 4], [0, 1, 2], [2, 3, -5]], dtype=np.int64)

    return [
        # conversion and shapes
        Case("asarray", lambda ops: ops.asarray([[1, -2], [0, 4.5]]), variant="list"),
        Case("asarray", lambda ops, m: ops.asarray(m, np.float32), [cond], variant="cast"),
        Case("asarray", lambda ops, t: ops.asarray(t), [a], variant="same"),
        Case("to_numpy", lambda ops, t: ops.to_numpy(t), [a], onnx_raises=TypeError),
        Case("shape", lambda ops, t: ops.shape(t), [a]),
        Case("ndim", lambda ops, t: ops.ndim(t), [a]),
        Case("zeros", lambda ops: ops.zeros((2, 3)), variant="static"),
        Case("zeros", lambda ops, t: ops.zeros(ops.shape(t)), [a], variant="batch"),
        Case("one_hot", lambda ops, t: ops.one_hot(t, 5), [target], exact=True),
        Case(
            "one_hot", lambda ops: ops.one_hot(np.array([1, 4, 0]), 5), exact=True, variant="values"
        ),
        # element-wise
        Case("add", lambda ops, p, q: ops.add(p, q), [a, row], variant="broadcast"),
        Case("add", lambda ops, p: ops.add(p, 1.5), [a], variant="scalar"),
        Case("sub", lambda ops, p, q: ops.sub(p, q), [a, b]),
        Case("sub", lambda ops, p: ops.sub(p, 0.25), [a], variant="scalar"),
        Case("mul", lambda ops, p, q: ops.mul(p, q), [a, row], variant="broadcast"),
        Case("mul", lambda ops, p: ops.mul(p, -3.0), [a], variant="scalar"),
        Case("div", lambda ops, p, q: ops.div(p, q), [a, nonzero]),
        Case("div", lambda ops, p: ops.div(p, 4.0), [a], variant="scalar"),
        Case("neg", lambda ops, p: ops.neg(p), [a], exact=True),
        Case("abs", lambda ops, p: ops.abs(p), [a], exact=True),
        Case("sign", lambda ops, p: ops.sign(p), [a], exact=True),
        Case("exp", lambda ops, p: ops.exp(p), [a]),
        Case("erf", lambda ops, p: ops.erf(p), [a]),
        Case("erf", lambda ops, p: ops.erf(ops.mul(p, 4.0)), [a], variant="tails"),
        Case("square", lambda ops, p: ops.square(p), [a]),
        Case("power", lambda ops, p: ops.power(p, -0.75), [np.abs(a) + 1]),
        Case("power", lambda ops, p: ops.power(p, 2.0), [a], variant="square"),
        Case("maximum", lambda ops, p, q: ops.maximum(p, q), [a, ties], exact=True),
        Case("maximum", lambda ops, p: ops.maximum(p, 0.0), [a], exact=True, variant="relu"),
        Case("minimum", lambda ops, p, q: ops.minimum(p, q), [a, ties], exact=True),
        Case("minimum", lambda ops, p: ops.minimum(p, 0.0), [a], exact=True, variant="scalar"),
        Case("where", lambda ops, c, p, q: ops.where(c, p, q), [cond, a, b], exact=True),
        Case(
            "where",
            lambda ops, c, p: ops.where(c, p, 0.0),
            [cond, a],
            exact=True,
            variant="scalar_b",
        ),
        Case(
            "where",
            lambda ops, c, q: ops.where(c, 1.0, q),
            [cond, b],
            exact=True,
            variant="scalar_a",
        ),
        Case("greater", lambda ops, p, q: ops.greater(p, q), [a, ties], exact=True),
        Case("greater", lambda ops, p: ops.greater(p, 0.0), [a], exact=True, variant="zero"),
        Case("less", lambda ops, p, q: ops.less(p, q), [a, ties], exact=True),
        Case("less", lambda ops, p: ops.less(p, 0.0), [a], exact=True, variant="zero"),
        Case("logical_and", lambda ops, c, d: ops.logical_and(c, d), [cond, cond2], exact=True),
        Case("mask", lambda ops, g, c: ops.mask(g, c), [a, cond], exact=True),
        Case("mask_below", lambda ops, g, y: ops.mask_below(g, y, 6.0), [a, bounded], exact=True),
        # numerators nonzero where d is +0 or -0: sgn(0) = +1 shows in the result's sign
        Case("div_stab", lambda ops, p, d: ops.div_stab(p, d), [nonzero, a], variant="signed"),
        Case(
            "div_stab",
            lambda ops, p, d: ops.div_stab(p, ops.abs(d), nonnegative=True),
            [nonzero, a],
            variant="nonnegative",
        ),
        Case(
            "div_stab", lambda ops, p, d: ops.div_stab(p, d, eps=1e-3), [nonzero, a], variant="eps"
        ),
        Case(
            "div_stab",
            lambda ops, p, d: ops.div_stab(p, ops.abs(d), 1e-3, True),
            [nonzero, a],
            variant="nonnegative_eps",
        ),
        # reductions and layout
        Case("sum", lambda ops, p: ops.sum(p), [a], variant="all"),
        Case("sum", lambda ops, p: ops.sum(p, axis=(2, 3), keepdims=True), [a], variant="keepdims"),
        Case("sum", lambda ops, p: ops.sum(p, axis=-3), [a], variant="axis"),
        Case("any_negative", lambda ops, p: ops.any_negative(p, (1, 2, 3)), [mixed], exact=True),
        Case("reshape", lambda ops, p: ops.reshape(p, lead(ops, p) + (12, 5)), [a], exact=True),
        Case("reshape", lambda ops, p: ops.reshape(p, (3, 5)), [row], exact=True, variant="static"),
        Case("transpose", lambda ops, p: ops.transpose(p, (0, 2, 3, 1)), [a], exact=True),
        Case("swap_last", lambda ops, p: ops.swap_last(p), [a], exact=True),
        Case(
            "expand_to",
            lambda ops, p: ops.expand_to(p, lead(ops, p) + (3, 4, 5)),
            [a[:, :1].copy()],
            exact=True,
        ),
        Case(
            "expand_to",
            lambda ops, p, q: ops.expand_to(q, ops.shape(p)),
            [a, row],
            exact=True,
            variant="batch_from_other",
        ),
        Case("sum_to_shape", lambda ops, g: ops.sum_to_shape(g, (3, 1, 5)), [a]),
        Case(
            "sum_to_shape",
            lambda ops, g: ops.sum_to_shape(g, lead(ops, g) + (1, 4, 1)),
            [a],
            variant="keep_batch",
        ),
        Case(
            "sum_to_shape",
            lambda ops, g: ops.sum_to_shape(g, ops.shape(g)),
            [a],
            exact=True,
            variant="same",
        ),
        Case("matmul", lambda ops, p, q: ops.matmul(p, q), [a, _f32(5, 6)], const=(1,)),
        Case(
            "matmul", lambda ops, p, q: ops.matmul(p, ops.swap_last(q)), [a, b], variant="batched"
        ),
        Case("concat", lambda ops, p, q: ops.concat([p, q], 1), [a, b], exact=True),
        Case(
            "concat", lambda ops, p, q: ops.concat([p, q], -1), [a, b], exact=True, variant="last"
        ),
        Case("split", lambda ops, p: ops.split(p, [1, 2], 1), [a], exact=True),
        # composite steps of convolutions and pools
        Case(
            "conv",
            lambda ops, t, k: ops.conv(t, k, WIN, 2, OUT),
            [x, w],
            const=(1,),
            variant="grouped",
        ),
        Case(
            "conv",
            lambda ops, t, k: ops.conv(t, k, WIN, 4, OUT),
            [x, w_dw],
            const=(1,),
            variant="depthwise",
        ),
        Case("conv", lambda ops, t, k: ops.conv(t, k, WIN, 2, OUT), [x, w], variant="sym_w"),
        Case(
            "conv_input_grad",
            lambda ops, g, k: ops.conv_input_grad(g, k, lead(ops, g) + (4,) + SPATIAL, WIN, 2),
            [gy, w],
            const=(1,),
            variant="strided",
        ),
        Case(
            "conv_input_grad",
            lambda ops, g, k: ops.conv_input_grad(g, k, lead(ops, g) + (4,) + SPATIAL, WIN_UNIT, 2),
            [gy_unit, w],
            const=(1,),
            variant="unstrided",
        ),
        Case(
            "conv_input_grad",
            lambda ops, g, k: ops.conv_input_grad(g, k, lead(ops, g) + (4,) + SPATIAL, WIN_UNIT, 2),
            [gy_unit, w],
            variant="sym_w",
        ),
        Case("box_sum", lambda ops, t: ops.box_sum(t, WIN, OUT), [x]),
        Case(
            "box_sum", lambda ops, t: ops.box_sum(t, WIN_UNIT, OUT_UNIT), [x], variant="unstrided"
        ),
        Case("div_box_sum", lambda ops, t, m: ops.div_box_sum(t, m, WIN, OUT), [r, mass]),
        Case("box_sum_transposed", lambda ops, t: ops.box_sum_transposed(t, WIN, SPATIAL), [r]),
        Case(
            "box_sum_transposed",
            lambda ops, t: ops.box_sum_transposed(t, WIN_UNIT, SPATIAL),
            [r_unit],
            variant="unstrided",
        ),
        Case("maxpool_input_grad", lambda ops, t, g: ops.maxpool_input_grad(t, g, WIN), [x, r]),
        # after a ReLU, on a coarse grid: ties in most windows go to the first (row-major)
        Case(
            "maxpool_input_grad",
            lambda ops, t, g: ops.maxpool_input_grad(t, g, WIN),
            [np.maximum(np.round(x), 0), r],
            variant="ties",
        ),
        Case(
            "avgpool_divisor",
            lambda ops: ops.avgpool_divisor(SPATIAL, OUT, WIN, False),
            exact=True,
            variant="exclude_pad",
        ),
        Case(
            "avgpool_divisor",
            lambda ops: ops.avgpool_divisor(SPATIAL, OUT, WIN, True),
            exact=True,
            variant="include_pad",
        ),
        *[
            Case(
                "pad_input_grad",
                lambda ops, g, pads=pads, mode=mode: ops.pad_input_grad(
                    g, lead(ops, g) + small.shape[1:], pads, mode
                ),
                [_f32(B, *(small.shape[i] + pads[i] + pads[i + 4] for i in range(1, 4)))],
                variant=name,
            )
            for name, mode, pads in [
                ("constant", "constant", [0, 1, 2, 1, 0, 2, 1, 2]),
                ("crop", "constant", [0, 0, -1, 2, 0, 1, 1, -2]),
                ("edge", "edge", [0, 1, 2, 1, 0, 2, 1, 2]),
                ("reflect", "reflect", [0, 1, 2, 1, 0, 2, 1, 2]),
                ("wrap", "wrap", [0, 1, 2, 1, 0, 2, 1, 2]),
            ]
        ],
        Case(
            "scatter_slices",
            lambda ops, g: ops.scatter_slices(
                g,
                lead(ops, g) + (3, 4, 5),
                (slice(None), slice(2, 0, -1), slice(0, 4, 2), slice(1, None)),
            ),
            [_f32(B, 2, 2, 4)],
            exact=True,
            variant="steps",
        ),
        Case(
            "scatter_slices",
            lambda ops, g: ops.scatter_slices(
                g, lead(ops, g) + (3, 4, 5), (slice(None), slice(1, 3), slice(None), slice(0, 4))
            ),
            [_f32(B, 2, 4, 4)],
            exact=True,
            variant="unit",
        ),
        *[
            Case(
                op,
                lambda ops, t, op=op, size=size: getattr(ops, op)(t, size),
                [small],
                variant=f"size{size}",
            )
            for op in ("channel_window_sum", "channel_window_sum_transposed")
            for size in (1, 2, 3, 4)
        ],
        # linear maps along one axis, index adjoints, contractions
        Case("axis_matmul", lambda ops, p: ops.axis_matmul(p, 2, interp), [a]),
        Case(
            "axis_matmul", lambda ops, p: ops.axis_matmul(p, -1, interp.T[:5]), [a], variant="last"
        ),
        Case(
            "axis_matmul",
            lambda ops, p: ops.axis_matmul(p, 1, interp[:3]),
            [a],
            const=(0,),
            variant="const",
        ),
        Case(
            "gather_input_grad",
            lambda ops, g: ops.gather_input_grad(g, take, lead(ops, g) + (3, 4, 5), 2),
            [_f32(B, 3, 3, 2, 5)],
            variant="const",
        ),
        Case(
            "gather_input_grad",
            lambda ops, g: ops.gather_input_grad(g, np.array(-2), lead(ops, g) + (3, 4, 5), -3),
            [_f32(B, 4, 5)],
            variant="scalar",
        ),
        Case(
            "gather_input_grad",
            lambda ops, g, i: ops.gather_input_grad(g, i, lead(ops, g) + (3, 4, 5), 2),
            [_f32(B, 3, 3, 2, 5), take],
            variant="recorded",
        ),
        Case(
            "gather_input_grad",
            lambda ops, g, i: ops.gather_input_grad(g, ops.asarray(i), lead(ops, g) + (3, 4, 5), 2),
            [_f32(B, 3, 3, 2, 5), take],
            variant="float_indices",
        ),
        Case(  # too many for a selection matrix: the emitter scatters
            "gather_input_grad",
            lambda ops, g: ops.gather_input_grad(g, many, lead(ops, g) + (3, 300, 5), 2),
            [_f32(B, 3, 300, 5)],
            variant="const_scatter",
        ),
        Case(
            "gather_elements_input_grad",
            lambda ops, g, i: ops.gather_elements_input_grad(g, i, lead(ops, g) + (3, 4, 5), 2),
            [_f32(B, 3, 6, 5), rng.integers(-4, 4, (B, 3, 6, 5))],
        ),
        Case(
            "gather_elements_input_grad",
            lambda ops, g: ops.gather_elements_input_grad(g, picks, lead(ops, g) + (3, 4, 5), -1),
            [_f32(B, 3, 4, 2)],
            variant="const",
        ),
        Case(
            "gather_nd_input_grad",
            lambda ops, g, i: ops.gather_nd_input_grad(g, i, (3, 4, 5), 0),
            [_f32(6, 3, 5), rng.integers(-3, 3, (6, 3, 2))],
            variant="recorded",
        ),
        Case(
            "gather_nd_input_grad",
            lambda ops, g: ops.gather_nd_input_grad(g, rng_nd, (3, 4, 5), 0),
            [_f32(4)],
            variant="const_full_index",
        ),
        Case(
            "gather_nd_input_grad",
            lambda ops, g, i: ops.gather_nd_input_grad(g, i, lead(ops, g) + (4, 5, 3), 1),
            [_f32(B, 6, 3), rng.integers(-4, 4, (B, 6, 2))],
            variant="batch_dims",
        ),
        Case(
            "gather_nd_input_grad",
            lambda ops, g, i: ops.gather_nd_input_grad(
                g, ops.asarray(i), lead(ops, g) + (4, 5, 3), 1
            ),
            [_f32(B, 6, 3), rng.integers(-4, 4, (B, 6, 2))],
            variant="float_indices",
        ),
        Case(
            "einsum",
            lambda ops, p, q: ops.einsum("bhqd,bhkd->bhqk", [p, q]),
            [a, b],
        ),
        Case(
            "einsum",
            lambda ops, p, q: ops.einsum("bchw,bc->bhw", [p, q]),
            [a, _f32(B, 3)],
            variant="channel_weights",
        ),
        Case(
            "einsum",
            lambda ops, p, q: ops.einsum("bchw,ck->bkhw", [p, q]),
            [a, _f32(3, 6)],
            const=(1,),
            variant="const",
        ),
    ]


CASES = _cases()


def test_every_contract_op_has_a_conformance_case():
    covered, contract = {c.op for c in CASES}, set(contract_ops())
    assert not contract - covered, (
        f"contract operations without a conformance case: {sorted(contract - covered)}"
    )
    assert covered <= contract, f"cases for unknown ops: {sorted(covered - contract)}"
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


# -- running a case on each backend --------------------------------------------------------------
def _run_array(ops, case: Case):
    result = case.fn(ops, *(arr.copy() for arr in case.inputs))
    return np.asarray(result) if isinstance(result, np.generic) else result  # sum(): a scalar


def _batched(arr: np.ndarray) -> bool:
    return arr.ndim >= 1 and arr.shape[0] == B


def _dims(shape) -> list:
    return [
        "B" if isinstance(d, Batch) and d.k == 1 else (None if isinstance(d, Batch) else int(d))
        for d in shape
    ]


def _resolve(shape) -> tuple[int, ...]:
    return tuple(d.k * B if isinstance(d, Batch) else int(d) for d in shape)


def _run_onnx(case: Case):
    """The case on `OnnxOps`: inputs become graph inputs (`Batch` on a leading axis of size
    B) or constants; the nodes it appends run in ONNX Runtime."""
    names = [f"in{i}" for i in range(len(case.inputs))]
    builder = GraphBuilder(OPSET, set(names))
    source = next((n for n, arr in zip(names, case.inputs) if _batched(arr)), None)
    ops = OnnxOps(builder, batch_source=source)
    handles, graph_inputs, feeds = [], [], {}
    for i, (name, arr) in enumerate(zip(names, case.inputs)):
        if i in case.const:
            handles.append(ops.const(arr))
            continue
        shape = ((Batch(1),) + arr.shape[1:]) if _batched(arr) else arr.shape
        handles.append(Sym(name, shape, arr.dtype))
        graph_inputs.append(
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(arr.dtype), _dims(shape)
            )
        )
        feeds[name] = arr
    if case.onnx_raises is not None:
        with pytest.raises(case.onnx_raises):
            case.fn(ops, *handles)
        return None
    result = case.fn(ops, *handles)
    if isinstance(result, tuple):  # a shape
        return _resolve(result)
    if isinstance(result, int):
        return result
    syms = result if isinstance(result, list) else [result]
    assert all(isinstance(s, Sym) for s in syms), result
    values: list = [s.value if s.is_const else None for s in syms]
    emitted = [(i, s) for i, s in enumerate(syms) if not s.is_const]
    if emitted:
        nodes = list(builder.nodes)
        outputs = []
        for i, s in emitted:
            nodes.append(helper.make_node("Identity", [s.name], [f"out{i}"]))
            outputs.append(
                helper.make_tensor_value_info(
                    f"out{i}", helper.np_dtype_to_tensor_dtype(s.dtype), _dims(s.shape)
                )
            )
        graph = helper.make_graph(
            nodes, "contract", graph_inputs, outputs, list(builder.initializers)
        )
        opset = max(OPSET, builder.required_opset)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        got = session.run([f"out{i}" for i, _ in emitted], feeds)
        for (i, s), value in zip(emitted, got):
            assert value.shape == _resolve(s.shape), (
                f"{case.id}: the emitter tracked shape {s.shape}, ONNX Runtime gave {value.shape}"
            )
            assert value.dtype == s.dtype, f"{case.id}: tracked {s.dtype}, got {value.dtype}"
            values[i] = value
    return values if isinstance(result, list) else values[0]


def _compare(got, want, case: Case, backend: str) -> None:
    where = f"{case.id} on {backend}"
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for g, w in zip(got, want):
            _compare(g, w, case, backend)
        return
    if isinstance(want, (tuple, int)):
        assert not isinstance(got, np.ndarray) and got == want, f"{where}: {got} != {want}"
        return
    got = np.asarray(got)
    assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
    if case.exact or want.dtype == np.bool_:
        np.testing.assert_array_equal(got, want, err_msg=where)
    else:
        np.testing.assert_allclose(
            got, want, rtol=RTOL, atol=ATOL * max(1.0, np.abs(want).max()), err_msg=where
        )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_contract_op_conforms(case: Case):
    want = _run_array(NumpyOps(), case)
    if isinstance(want, list):
        assert all(isinstance(w, np.ndarray) for w in want)
    elif not isinstance(want, (tuple, int)):
        assert isinstance(want, np.ndarray), f"NumpyOps.{case.op} returned {type(want)}"
    assert np.isfinite(
        np.concatenate(
            [
                np.ravel(np.asarray(w, dtype=np.float64))
                for w in (want if isinstance(want, list) else [want])
            ]
        )
    ).all(), "the reference must be finite"
    _compare(_run_array(XpOps(np), case), want, case, "XpOps(numpy)")
    got = _run_onnx(case)
    if case.onnx_raises is None:
        _compare(got, want, case, "OnnxOps + ONNX Runtime")

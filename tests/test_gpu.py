"""GPU path: device selection, the xp-generic namespace, the fused CUDA kernels.

CPU-runnable: device resolution with the installed (CPU) ONNX Runtime, `XpOps(numpy)` against
`NumpyOps`, the im2col Conv input gradient, the kernels' indexing logic (a NumPy transcription
of each kernel, and the real `.cu` source compiled for the CPU behind a tiny CUDA shim), and
the I/O-binding recorder on the CPU provider. GPU tests skip cleanly without CuPy and a GPU.
"""

from __future__ import annotations

import ctypes
import gc
import inspect
import shutil
import subprocess
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest

from tsgb_onnx.backends import device
from tsgb_onnx.backends.cupy_ops import FusedSteps, XpOps, conv_geometry, kernel_path
from tsgb_onnx.backends.numpy_ops import NumpyOps
from tsgb_onnx.engine import cuda
from tsgb_onnx.errors import MethodError, RuntimeUnavailableError
from tsgb_onnx.ir.geometry import Window
from tsgb_onnx.rules.tsgb import tsgb_conv_step

RNG_SEED = 1234


def _gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no GPU
        return 0


def _ort_has_cuda() -> bool:
    try:
        cuda.check_onnxruntime_cuda()
        return True
    except RuntimeUnavailableError:
        return False


needs_gpu = pytest.mark.skipif(_gpu_count() == 0, reason="needs CuPy and a CUDA GPU")


# -- device resolution (real CPU onnxruntime) ----------------------------------------------------
def test_cpu_device_uses_numpy():
    choice = device.resolve_device("cpu")
    assert choice.name == "cpu" and choice.providers == ["CPUExecutionProvider"]
    assert isinstance(choice.ops(), NumpyOps)


def test_unknown_device_is_a_method_error():
    with pytest.raises(MethodError, match="device must be one of cpu, cuda, auto"):
        device.resolve_device("tpu")


@pytest.mark.skipif(_ort_has_cuda(), reason="this onnxruntime offers the CUDA provider")
def test_cuda_without_cuda_provider_fails_with_one_line():
    with pytest.raises(RuntimeUnavailableError) as info:
        device.resolve_device("cuda")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("device='cuda' is unavailable: onnxruntime ")
    assert "has no CUDAExecutionProvider" in message and "device='cpu'" in message


@pytest.mark.skipif(_ort_has_cuda() and _gpu_count() > 0, reason="a GPU is usable here")
def test_auto_falls_back_to_cpu_and_warns_once():
    device._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = device.resolve_device("auto")
        second = device.resolve_device("auto")
    assert first.name == second.name == "cpu"
    assert first.fallback_reason and first.fallback_reason == second.fallback_reason
    notes = [w for w in caught if issubclass(w.category, device.GpuFallbackWarning)]
    assert len(notes) == 1
    assert str(notes[0].message).startswith("device='auto': running on the CPU because ")


def test_cupy_check_without_gpu_fails_with_one_line():
    pytest.importorskip("cupy")
    if _gpu_count() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeUnavailableError) as info:
        device.check_cupy()
    message = str(info.value)
    assert "\n" not in message and message.startswith("device='cuda' is unavailable: no ")


def test_kernel_source_is_found():
    assert Path(kernel_path()).read_text().count('extern "C" __global__') == 5


# -- XpOps on NumPy is NumpyOps --------------------------------------------------------------------
_OPERATOR_ONLY = {
    "add",
    "sub",
    "mul",
    "div",
    "neg",
    "greater",
    "less",
    "mask",
    "reshape",
    "shape",
    "ndim",
    "sum_to_shape",
    "div_box_sum",
    "mask_below",
}


def test_xp_ops_overrides_every_numpy_specific_method():
    """A method XpOps inherits from NumpyOps must not call NumPy (it would break on CuPy)."""
    public = {n for n, v in vars(NumpyOps).items() if callable(v) and not n.startswith("_")}
    inherited = public - set(vars(XpOps))
    assert inherited == _OPERATOR_ONLY
    for name in inherited:
        assert "np." not in inspect.getsource(getattr(NumpyOps, name)), name


def _windows(rng, nd, count):
    for _ in range(count):
        kernel = tuple(int(k) for k in rng.integers(1, 4, nd))
        strides = tuple(int(s) for s in rng.integers(1, 3, nd))
        dilations = tuple(int(d) for d in rng.integers(1, 3, nd))
        pads = tuple(int(p) for p in rng.integers(0, 3, 2 * nd))
        yield Window(kernel, strides, dilations, pads)


def _out_size(spatial, win):
    return tuple(
        (spatial[i] + win.pads[i] + win.pads[i + win.nd] - win.extent(i)) // win.strides[i] + 1
        for i in range(win.nd)
    )


def _spatial(rng, nd):
    return tuple(int(s) for s in rng.integers(5, 9, nd))


def _same(a, b, rel=1e-6):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = max(float(np.abs(b).max()) if b.size else 0.0, 1e-30)
    assert float(np.abs(a.astype(np.float64) - b).max() if b.size else 0.0) <= rel * scale


def test_xp_ops_elementwise_and_layout_match_numpy_ops():
    rng = np.random.default_rng(RNG_SEED)
    ref, xp = NumpyOps(), XpOps(np)
    a = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    a[0, 0, 0, :2] = 0.0
    b[0, 1, 0, :3] = 0.0
    for name in ("abs", "sign", "exp", "square"):
        _same(getattr(xp, name)(a), getattr(ref, name)(a))
    for name in ("maximum", "minimum", "div_stab", "logical_and"):
        _same(getattr(xp, name)(a, b), getattr(ref, name)(a, b))
    _same(xp.power(np.abs(a) + 1, -0.75), ref.power(np.abs(a) + 1, -0.75))
    _same(xp.where(a > 0, a, 0), ref.where(a > 0, a, 0))
    _same(xp.where(a > 0, 1.0, b), ref.where(a > 0, 1.0, b))
    _same(xp.sum(a, axis=(2, 3), keepdims=True), ref.sum(a, axis=(2, 3), keepdims=True))
    _same(xp.any_negative(a, (1, 2, 3)), ref.any_negative(a, (1, 2, 3)))
    _same(xp.transpose(a, (0, 2, 3, 1)), ref.transpose(a, (0, 2, 3, 1)))
    _same(xp.swap_last(a), ref.swap_last(a))
    _same(xp.expand_to(a[:, :1], a.shape), ref.expand_to(a[:, :1], a.shape))
    _same(xp.matmul(a, xp.swap_last(b)), ref.matmul(a, ref.swap_last(b)))
    _same(xp.concat([a, b], 1), ref.concat([a, b], 1))
    for got, want in zip(xp.split(a, [1, 2], 1), ref.split(a, [1, 2], 1)):
        _same(got, want)
    _same(xp.zeros((2, 3)), ref.zeros((2, 3)))
    _same(xp.asarray([1, 2]), ref.asarray([1, 2]))
    _same(xp.to_numpy(a), ref.to_numpy(a))
    _same(xp.one_hot(np.array([2, 0]), 4), ref.one_hot(np.array([2, 0]), 4))
    for size in (1, 2, 3, 5):
        _same(xp.channel_window_sum(a, size), ref.channel_window_sum(a, size))
        _same(xp.channel_window_sum_transposed(a, size), ref.channel_window_sum_transposed(a, size))
    index = (slice(None), slice(2, 0, -1), slice(0, 4, 2), slice(1, None))
    g = rng.standard_normal((2, 2, 2, 4)).astype(np.float32)
    _same(xp.scatter_slices(g, a.shape, index), ref.scatter_slices(g, a.shape, index))
    for mode in ("constant", "edge", "reflect", "wrap"):
        pads = [0, 1, 2, 1, 0, 2, 1, 2]
        gp = rng.standard_normal((2, 6, 7, 8)).astype(np.float32)
        _same(
            xp.pad_input_grad(gp, a.shape, pads, mode), ref.pad_input_grad(gp, a.shape, pads, mode)
        )


def test_xp_ops_window_steps_match_numpy_ops():
    rng = np.random.default_rng(RNG_SEED + 1)
    ref, xp = NumpyOps(), XpOps(np)
    for nd in (1, 2, 3):
        for win in _windows(rng, nd, 4):
            spatial = _spatial(rng, nd)
            out = _out_size(spatial, win)
            x = rng.standard_normal((2, 3) + spatial).astype(np.float32)
            r = rng.standard_normal((2, 3) + out).astype(np.float32)
            _same(xp.box_sum(x, win, out), ref.box_sum(x, win, out))
            _same(xp.box_sum_transposed(r, win, spatial), ref.box_sum_transposed(r, win, spatial))
            _same(xp.maxpool_input_grad(x, r, win), ref.maxpool_input_grad(x, r, win))
            for include in (False, True):
                _same(
                    xp.avgpool_divisor(spatial, out, win, include),
                    ref.avgpool_divisor(spatial, out, win, include),
                )


def test_im2col_conv_and_conv_input_grad_match_numpy_ops():
    """im2col Conv and its adjoint (the exact Conv gradient), cuBLAS on CuPy, equal NumpyOps'
    per-offset forms,
    for groups, depthwise, strides, dilations, asymmetric pads, 1-3 spatial axes, and
    batch chunking (a tiny column budget)."""
    rng = np.random.default_rng(RNG_SEED + 2)
    ref = NumpyOps()
    chunked = XpOps(np, column_budget_bytes=1)
    whole = XpOps(np)
    for nd in (1, 2, 3):
        for case, win in enumerate(_windows(rng, nd, 4)):
            group, per_in, per_out = [(1, 3, 4), (2, 2, 3), (4, 1, 1), (3, 1, 2)][case]
            spatial = _spatial(rng, nd)
            out = _out_size(spatial, win)
            x_shape = (3, group * per_in) + spatial
            w = rng.standard_normal((group * per_out, per_in) + win.kernel).astype(np.float32)
            gy = rng.standard_normal((3, group * per_out) + out).astype(np.float32)
            want = ref.conv_input_grad(gy, w, x_shape, win, group)
            _same(whole.conv_input_grad(gy, w, x_shape, win, group), want, 1e-5)
            _same(chunked.conv_input_grad(gy, w, x_shape, win, group), want, 1e-5)
            x = rng.standard_normal(x_shape).astype(np.float32)
            want = ref.conv(x, w, win, group, out)
            _same(whole.conv(x, w, win, group, out), want, 1e-5)
            _same(chunked.conv(x, w, win, group, out), want, 1e-5)


def _run_with(explainer, ops, x, target):
    from tsgb_onnx.engine.executor import run_program

    program = explainer.program()
    logits, values, shapes = explainer.recorder.run(x, program.record, program.record_shapes)
    seed = ops.one_hot(np.asarray(target), logits.shape[1])
    signal = run_program(program, ops, values, shapes, seed, {})
    return ops.to_numpy(signal)


@pytest.mark.parametrize(
    "net", ["resnet50_style", "densenet_style", "mobilenetv2_style", "silu_se_net", "cnn1d"]
)
def test_xp_ops_runs_every_rule_like_numpy_ops(onnx_zoo, net):
    """`gradient` and `tsgb` programs of reference nets: XpOps(numpy) == NumpyOps."""
    from tsgb_onnx import Explainer

    _, proto = onnx_zoo.get(net, False)
    x = onnx_zoo.example(net, batch=3, seed=7).numpy()
    for method in ("gradient", "tsgb"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            explainer = Explainer(proto, method=method, backend="numpy", threads=1)
        target = [0, 3, 1]
        want = _run_with(explainer, NumpyOps(), x, target)
        got = _run_with(explainer, XpOps(np), x, target)
        _same(got, want, 1e-5)


# -- the CUDA kernels: NumPy transcription (same index arithmetic as the .cu source) --------------
def _flat(a):
    return a.reshape(-1)


def _t_group_sums(
    y, g, x, relevance, mass, batch, groups, n_per_group, m_per_group, out_size, in_size
):
    y, g, x, relevance, mass = map(_flat, (y, g, x, relevance, mass))
    n_rel, n_mass = batch * groups * out_size, batch * groups * in_size
    i = np.arange(n_rel + n_mass, dtype=np.int64)
    first = i[i < n_rel]
    o, bg = first % out_size, first // out_size
    base = bg * n_per_group * out_size + o
    acc = np.zeros(first.shape, np.float32)
    for n in range(n_per_group):
        acc += y[base + n * out_size] * g[base + n * out_size]
    relevance[first] = acc
    j = i[i >= n_rel] - n_rel
    s, bg = j % in_size, j // in_size
    base = bg * m_per_group * in_size + s
    acc = np.zeros(j.shape, np.float32)
    for m in range(m_per_group):
        acc += np.abs(x[base + m * in_size])
    mass[j] = acc


def _gather(flat_array, index, valid):
    return np.where(valid, flat_array[np.clip(index, 0, flat_array.size - 1)], np.float32(0))


def _t_box_ratio(
    ratio, mass, planes, s0, s1, s2, o0, o1, o2, k0, k1, k2, st0, st1, st2, d0, d1, d2, p0, p1, p2
):
    ratio, mass = _flat(ratio), _flat(mass)
    out_size, in_size = o0 * o1 * o2, s0 * s1 * s2
    i = np.arange(planes * out_size, dtype=np.int64)
    plane, o = i // out_size, i % out_size
    a2, a1, a0 = o % o2, (o // o2) % o1, o // (o2 * o1)
    box = np.zeros(i.shape, np.float32)
    for c0 in range(k0):
        i0 = a0 * st0 + c0 * d0 - p0
        for c1 in range(k1):
            i1 = a1 * st1 + c1 * d1 - p1
            for c2 in range(k2):
                i2 = a2 * st2 + c2 * d2 - p2
                valid = (i0 >= 0) & (i0 < s0) & (i1 >= 0) & (i1 < s1) & (i2 >= 0) & (i2 < s2)
                box += _gather(mass, plane * in_size + (i0 * s1 + i1) * s2 + i2, valid)
    ratio[i] = ratio[i] / (box + np.float32(1e-10))


def _t_spread_sign(
    ratio,
    x,
    gx,
    planes,
    m_per_group,
    s0,
    s1,
    s2,
    o0,
    o1,
    o2,
    k0,
    k1,
    k2,
    st0,
    st1,
    st2,
    d0,
    d1,
    d2,
    p0,
    p1,
    p2,
):
    ratio, x, gx = map(_flat, (ratio, x, gx))
    out_size, in_size = o0 * o1 * o2, s0 * s1 * s2
    i = np.arange(planes * in_size, dtype=np.int64)
    plane, s = i // in_size, i % in_size
    a2, a1, a0 = s % s2, (s // s2) % s1, s // (s2 * s1)
    spread = np.zeros(i.shape, np.float32)
    for c0 in range(k0):
        t0 = a0 + p0 - c0 * d0
        ok0 = (t0 >= 0) & (t0 % st0 == 0) & (t0 // st0 < o0)
        for c1 in range(k1):
            t1 = a1 + p1 - c1 * d1
            ok1 = (t1 >= 0) & (t1 % st1 == 0) & (t1 // st1 < o1)
            for c2 in range(k2):
                t2 = a2 + p2 - c2 * d2
                ok2 = (t2 >= 0) & (t2 % st2 == 0) & (t2 // st2 < o2)
                index = plane * out_size + ((t0 // st0) * o1 + t1 // st1) * o2 + t2 // st2
                spread += _gather(ratio, index, ok0 & ok1 & ok2)
    base = plane * m_per_group * in_size + s
    for m in range(m_per_group):
        v = x[base + m * in_size]
        sign = ((v > 0).astype(np.int64) - (v < 0).astype(np.int64)).astype(np.float32)
        gx[base + m * in_size] = sign * spread


def _t_eq6(g, y, x, gx, total):
    g, y, x, gx = map(_flat, (g, y, x, gx))
    i = np.arange(total)
    d = x[i]
    stabilised = d + np.where(d >= 0, np.float32(1e-10), np.float32(-1e-10))
    gx[i] = g[i] * (y[i] / stabilised)


def _t_fc_combine(positive, negative, g, h, batch, classes, alpha):
    positive, negative, g, h = map(_flat, (positive, negative, g, h))
    i = np.arange(batch * classes)
    b, n = i // classes, i % classes
    scale = (positive[i] / (negative[i] + np.float32(1e-10))) * alpha
    h[b * 2 * classes + n] = g[i]
    h[b * 2 * classes + classes + n] = scale * g[i]


_TRANSCRIPTIONS = {
    "tsgb_group_sums": _t_group_sums,
    "tsgb_box_ratio": _t_box_ratio,
    "tsgb_spread_sign": _t_spread_sign,
    "tsgb_eq6": _t_eq6,
    "tsgb_fc_combine": _t_fc_combine,
}


def transcription_launch(name, threads, args):
    _TRANSCRIPTIONS[name](*[a if isinstance(a, np.ndarray) else a.item() for a in args])


# -- the CUDA kernels: the real .cu source compiled for the CPU behind a CUDA shim ----------------
_SHIM = """
#include <math.h>
struct tsgb_uint3 { unsigned int x, y, z; };
extern "C" { tsgb_uint3 threadIdx, blockIdx, blockDim, gridDim; }
#define __global__
"""


class ShimKernels:
    """Runs the kernels of kernels/tsgb_steps.cu on the CPU, one emulated thread at a time
    over a small grid (every kernel is a grid-stride loop, so the result is launch-shape free)."""

    def __init__(self, library: Path, blocks: int = 3, block: int = 4):
        self.library = library
        self.lib = ctypes.CDLL(str(library))
        self.blocks, self.block = blocks, block

    def __call__(self, name, threads, args):
        converted = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous and a.dtype == np.float32
                converted.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int64):
                converted.append(ctypes.c_longlong(int(a)))
            elif isinstance(a, np.float32):
                converted.append(ctypes.c_float(float(a)))
            else:
                raise TypeError(f"kernel argument of type {type(a).__name__}")
        fn = getattr(self.lib, name)
        fn.restype = None
        dims = {
            n: _Uint3.in_dll(self.lib, n) for n in ("threadIdx", "blockIdx", "blockDim", "gridDim")
        }
        dims["blockDim"].x, dims["gridDim"].x = self.block, self.blocks
        for b in range(self.blocks):
            for t in range(self.block):
                dims["blockIdx"].x, dims["threadIdx"].x = b, t
                fn(*converted)


class _Uint3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


@pytest.fixture(scope="module")
def shim_launch(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("needs a C++ compiler to run the CUDA source on the CPU")
    folder = tmp_path_factory.mktemp("kernels")
    (folder / "shim.h").write_text(_SHIM)
    library = folder / "tsgb_steps.so"
    subprocess.run(
        [
            compiler,
            "-O1",
            "-shared",
            "-fPIC",
            "-x",
            "c++",
            "-include",
            str(folder / "shim.h"),
            kernel_path(),
            "-o",
            str(library),
        ],
        check=True,
        capture_output=True,
    )
    return ShimKernels(library)


@pytest.fixture(params=["transcription", "cuda_source_on_cpu"])
def launch(request):
    if request.param == "transcription":
        return transcription_launch
    return request.getfixturevalue("shim_launch")


def _conv_cases(rng):
    for nd in (1, 2, 3):
        for case, win in enumerate(_windows(rng, nd, 3)):
            groups, per_in, per_out = [(1, 3, 4), (2, 2, 3), (3, 1, 1)][case]
            spatial = _spatial(rng, nd)
            yield (
                win,
                groups,
                (2, groups * per_in) + spatial,
                (2, groups * per_out) + _out_size(spatial, win),
            )
    yield Window((1, 1), (1, 1), (1, 1), (0, 0, 0, 0)), 1, (2, 5, 4, 3), (2, 6, 4, 3)


def test_fused_conv_step_matches_the_composition(launch):
    rng = np.random.default_rng(RNG_SEED + 3)
    fused = FusedSteps(np, launch)
    for win, groups, x_shape, y_shape in _conv_cases(rng):
        x = rng.standard_normal(x_shape).astype(np.float32)
        x.reshape(-1)[::7] = 0.0  # sign(0) = 0
        y = np.maximum(rng.standard_normal(y_shape), 0).astype(np.float32)  # a Relu output
        g = rng.standard_normal(y_shape).astype(np.float32)
        want = tsgb_conv_step(NumpyOps(), x, y, g, win, groups)
        _same(fused.tsgb_conv_step(x, y, g, win, groups), want, 1e-5)


def test_conv_geometry_pads_to_three_axes():
    win = Window((3,), (2,), (1,), (1, 2))
    assert conv_geometry((1, 2, 9), (1, 4, 5), win) == (
        1,
        1,
        9,
        1,
        1,
        5,
        1,
        1,
        3,
        1,
        1,
        2,
        1,
        1,
        1,
        0,
        0,
        1,
    )


def test_fused_eq6_step_matches_the_rule(launch):
    rng = np.random.default_rng(RNG_SEED + 4)
    g, y, x = (rng.standard_normal((3, 4, 5, 6)).astype(np.float32) for _ in range(3))
    x.reshape(-1)[::5] = 0.0
    x.reshape(-1)[1::5] = -0.0
    ref = NumpyOps()
    want = ref.mul(g, ref.div_stab(y, x))
    got = FusedSteps(np, launch).tsgb_eq6_step(g, y, x)
    _same(got, want, 1e-6)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("compat", [False, True])
def test_fused_fc_step_matches_the_rule(launch, compat):
    rng = np.random.default_rng(RNG_SEED + 5)
    x = rng.standard_normal((4, 7)).astype(np.float32)
    x[:, 0] = 0.0
    w = rng.standard_normal((7, 5)).astype(np.float32)
    g = rng.standard_normal((4, 5)).astype(np.float32)
    ref, alpha = NumpyOps(), 0.5
    w_pos, w_neg = ref.maximum(w, 0.0), ref.minimum(w, 0.0)
    positive = ref.matmul(x, w_pos)
    negative = ref.abs(ref.matmul(x, w_neg)) if compat else ref.matmul(ref.abs(x), ref.abs(w_neg))
    scale = ref.mul(ref.div_stab(positive, negative), alpha)
    want = ref.add(
        ref.matmul(g, ref.swap_last(w_pos)), ref.matmul(ref.mul(scale, g), ref.swap_last(w_neg))
    )
    fused = FusedSteps(np, launch)
    _same(fused.tsgb_fc_step(x, w, g, alpha, compat), want, 1e-5)
    _same(fused.tsgb_fc_step(x[None], w, g[None], alpha, compat), want[None], 1e-5)  # batched


class CountingFusedSteps(FusedSteps):
    """FusedSteps that count the fused conv steps run."""

    calls = 0

    def tsgb_conv_step(self, *args):
        self.calls += 1
        return super().tsgb_conv_step(*args)


class FusedXpOps(XpOps):
    """XpOps(numpy) named "cupy", so the fused kernels registered for CuPy replace the TSGB
    composite steps, run through the CUDA source on the CPU (what CupyOps does on a GPU)."""

    name = "cupy"

    def __init__(self, launch):
        super().__init__(np)
        self.fused = CountingFusedSteps(np, launch)

    @property
    def calls(self) -> int:
        return self.fused.calls


@pytest.mark.parametrize("net", ["resnet50_style", "mobilenetv2_style", "cnn1d"])
def test_fused_kernels_run_tsgb_programs_like_numpy(onnx_zoo, shim_launch, net):
    """The `tsgb` rules with the CUDA source's fused steps (run on the CPU) == NumpyOps."""
    from tsgb_onnx import Explainer

    _, proto = onnx_zoo.get(net, False)
    x = onnx_zoo.example(net, batch=2, seed=5).numpy()
    explainer = Explainer(proto, method="tsgb", backend="numpy", threads=1)
    ops = FusedXpOps(ShimKernels(shim_launch.library, blocks=4, block=8))
    got = _run_with(explainer, ops, x, [2, 0])
    assert ops.calls > 0
    _same(got, _run_with(explainer, NumpyOps(), x, [2, 0]), 1e-4)


# -- the I/O-binding recorder (the CUDA recorder's code path) on the CPU provider -----------------
def test_io_binding_recorder_equals_forward_recorder(onnx_zoo):
    from tsgb_onnx import Explainer
    from tsgb_onnx.engine.record import ForwardRecorder

    _, proto = onnx_zoo.get("resnet50_style", False)
    explainer = Explainer(proto, method="tsgb", backend="numpy")
    program = explainer.program()
    x = onnx_zoo.example("resnet50_style", batch=2).numpy()
    want = ForwardRecorder(explainer.graph).run(x, program.record, program.record_shapes)
    got = cuda.IoBindingRecorder(explainer.graph).run(x, program.record, program.record_shapes)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1].keys() == want[1].keys() and got[2] == want[2]
    for name in want[1]:
        np.testing.assert_array_equal(got[1][name], want[1][name])


def test_ortvalue_dtype_names():
    ort = pytest.importorskip("onnxruntime")
    for dtype in (np.float32, np.float16, np.int64, np.bool_):
        value = ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 1), dtype))
        assert cuda.ortvalue_dtype(value) == np.dtype(dtype)


# -- GPU: CuPy executor == NumPy executor ----------------------------------------------------------
GPU_NETS = [
    "vgg16_style",
    "resnet50_style",
    "densenet_style",
    "mobilenetv2_style",
    "silu_se_net",
    "cnn1d",
    "efficientnet_lite0",
]


def _map(signal, x):
    return (np.asarray(signal) * x).sum(axis=1)


def _close_maps(got, want):
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= 1e-4 * scale


@needs_gpu
@pytest.mark.parametrize("method", ["gradient", "tsgb"])
@pytest.mark.parametrize("net", GPU_NETS)
def test_cupy_executor_equals_numpy_executor(onnx_zoo, net, method):
    import cupy

    from tsgb_onnx import Explainer
    from tsgb_onnx.backends.cupy_ops import CupyOps
    from tsgb_onnx.engine.executor import run_program

    _, proto = onnx_zoo.get(net, False)
    x = onnx_zoo.example(net, batch=4, seed=3).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = Explainer(proto, method=method, backend="numpy", threads=1)
    program = explainer.program()
    logits, values, shapes = explainer.recorder.run(x, program.record, program.record_shapes)
    target = np.array([0, 1, 3, 2]) % logits.shape[1]  # mixed targets
    want = _map(
        run_program(
            program,
            NumpyOps(),
            dict(values),
            dict(shapes),
            NumpyOps().one_hot(target, logits.shape[1]),
            {},
        ),
        x,
    )
    ops = CupyOps()
    seed = ops.one_hot(target, logits.shape[1])
    # activations recorded on the CPU, moved to the GPU
    on_gpu = {k: cupy.asarray(v) for k, v in values.items()}
    _close_maps(
        _map(ops.to_numpy(run_program(program, ops, on_gpu, dict(shapes), seed, {})), x), want
    )
    if _ort_has_cuda():  # recorded by ONNX Runtime on CUDA, handed over without a copy
        recorder = cuda.CudaForwardRecorder(explainer.graph)
        cuda_logits, cuda_values, cuda_shapes = recorder.run(
            x, program.record, program.record_shapes
        )
        np.testing.assert_allclose(cuda_logits, logits, rtol=1e-3, atol=1e-3)
        owners = [
            weakref.ref(v.data.mem.owner)
            for k, v in cuda_values.items()
            if k != explainer.graph.input_name
        ]
        signal = run_program(program, ops, cuda_values, cuda_shapes, seed, {})
        _close_maps(_map(ops.to_numpy(signal), x), want)
        del cuda_values
        gc.collect()
        assert all(owner() is None for owner in owners)  # nothing else holds the activations


@needs_gpu
def test_cupy_kernels_equal_the_composition():
    import cupy

    from tsgb_onnx.backends.cupy_ops import CupyOps

    rng = np.random.default_rng(RNG_SEED + 6)
    ops = CupyOps()
    for win, groups, x_shape, y_shape in _conv_cases(rng):
        x = rng.standard_normal(x_shape).astype(np.float32)
        y = np.maximum(rng.standard_normal(y_shape), 0).astype(np.float32)
        g = rng.standard_normal(y_shape).astype(np.float32)
        want = tsgb_conv_step(NumpyOps(), x, y, g, win, groups)
        got = tsgb_conv_step(ops, cupy.asarray(x), cupy.asarray(y), cupy.asarray(g), win, groups)
        _same(cupy.asnumpy(got), want, 1e-5)
        w = rng.standard_normal((y_shape[1], x_shape[1] // groups) + win.kernel).astype(np.float32)
        _same(
            cupy.asnumpy(
                ops.conv_input_grad(cupy.asarray(g), cupy.asarray(w), x_shape, win, groups)
            ),
            NumpyOps().conv_input_grad(g, w, x_shape, win, groups),
            1e-5,
        )


@needs_gpu
def test_explainer_device_cuda(onnx_zoo):
    from tsgb_onnx import Explainer

    if not _ort_has_cuda():
        pytest.skip("onnxruntime has no CUDA provider")
    _, proto = onnx_zoo.get("resnet50_style", False)
    x = onnx_zoo.example("resnet50_style", batch=3).numpy()
    target = [1, 0, 2]
    got = Explainer(proto, method="tsgb", device="cuda").explain(x, target=target)
    want = Explainer(proto, method="tsgb", backend="numpy").explain(x, target=target)
    _close_maps(got.saliency, want.saliency)


# -- Explainer(device=...) on a machine without a usable GPU ----------------------------------
@pytest.mark.skipif(_ort_has_cuda() and _gpu_count() > 0, reason="a GPU is usable here")
def test_explainer_device_cuda_fails_with_one_line_without_a_gpu(onnx_zoo):
    from tsgb_onnx import Explainer

    _, proto = onnx_zoo.get("vgg16_style", False)
    with pytest.raises(RuntimeUnavailableError) as info:
        Explainer(proto, method="tsgb", device="cuda")
    message = str(info.value)
    assert "\n" not in message and message.startswith("device='cuda' is unavailable: ")


@pytest.mark.skipif(_ort_has_cuda() and _gpu_count() > 0, reason="a GPU is usable here")
def test_explainer_device_auto_falls_back_to_the_cpu_map(onnx_zoo):
    from tsgb_onnx import Explainer

    _, proto = onnx_zoo.get("vgg16_style", False)
    x = onnx_zoo.example("vgg16_style", batch=2, seed=5).numpy()
    device._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = Explainer(proto, method="tsgb", device="auto")
        Explainer(proto, method="gradient", device="auto")
    notes = [w for w in caught if issubclass(w.category, device.GpuFallbackWarning)]
    assert len(notes) == 1 and auto.device.name == "cpu"
    got = auto.explain(x, target=[1, 0]).saliency
    want = Explainer(proto, method="tsgb", device="cpu").explain(x, target=[1, 0]).saliency
    np.testing.assert_array_equal(got, want)


def test_explainer_unknown_device_is_a_method_error(onnx_zoo):
    from tsgb_onnx import Explainer

    _, proto = onnx_zoo.get("vgg16_style", False)
    with pytest.raises(MethodError, match="device must be one of cpu, cuda, auto"):
        Explainer(proto, device="gpu0")


@pytest.mark.skipif(_ort_has_cuda() and _gpu_count() > 0, reason="a GPU is usable here")
def test_cli_device_cuda_without_a_gpu_exits_2_with_one_line(onnx_zoo, tmp_path, capsys):
    from tsgb_onnx.cli.main import main

    path, _ = onnx_zoo.get("vgg16_style", False)
    x = tmp_path / "x.npy"
    np.save(x, onnx_zoo.example("vgg16_style", batch=1).numpy())
    code = main(
        ["explain", str(path), str(x), "--device", "cuda", "--out", str(tmp_path / "m.npy")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("tsgb: error: device='cuda'")

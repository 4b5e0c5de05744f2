"""TSGB is exactly mirror-equivariant on a net built mirror-symmetric (issue 22).

A net whose every spatial step commutes with a mirror — symmetric padding, kernels equal to
their own mirror image, odd sizes so that stride-2 windows sit symmetrically (17 → 9 → 5),
BN, Relu / ReLU6, a residual Add, a MaxPool, global average pooling before the final Gemm —
computes f(mirror(x)) = f(x), with every intermediate tensor the mirror of the unmirrored
one. TSGB's rules read only those tensors and window geometry, so an exact implementation
must give map(mirror(x)) = mirror(map(x)). Any engine-side asymmetry (an off-by-one window,
a transposed box sum that leans one way, a pad applied on one side) breaks that equality;
the controls below check that the comparison does see an asymmetric kernel.

This pins the positional bias of TSGB on pretrained EfficientNet-Lite0 (docs/tsgb_bias.md)
on the network, not on the engine.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx_builders import evaluate, make_model, node

from tsgb_onnx import Explainer

SIZE = 17  # odd: 17 → 9 → 5 keeps every stride-2 window centred symmetrically
FLIPS = {"left_right": -1, "up_down": -2}


def _symmetric(w: np.ndarray) -> np.ndarray:
    """The kernel averaged with its mirror images along both spatial axes."""
    w = (w + w[..., ::-1]) / 2
    return ((w + w[..., ::-1, :]) / 2).astype(np.float32)


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def bn(c: int, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}_scale": (rng.random(c) + 0.5).astype(np.float32),
            f"{prefix}_bias": (rng.standard_normal(c) * 0.2).astype(np.float32),
            f"{prefix}_mean": (rng.standard_normal(c) * 0.1).astype(np.float32),
            f"{prefix}_var": (rng.random(c) + 0.5).astype(np.float32),
        }

    return {
        "w1": _symmetric(rng.standard_normal((8, 3, 3, 3)) * 0.5),
        "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
        **bn(8, "bn1"),
        "w2": _symmetric(rng.standard_normal((12, 8, 3, 3)) * 0.3),
        **bn(12, "bn2"),
        "w3": _symmetric(rng.standard_normal((12, 1, 5, 5)) * 0.4),
        "b3": (rng.standard_normal(12) * 0.1).astype(np.float32),
        "w4": (rng.standard_normal((12, 12, 1, 1)) * 0.3).astype(np.float32),
        "wf": rng.standard_normal((12, 5)).astype(np.float32),
        "bf": (rng.standard_normal(5) * 0.1).astype(np.float32),
        "clip_lo": np.array(0.0, dtype=np.float32),
        "clip_hi": np.array(6.0, dtype=np.float32),
    }


def symmetric_net(weights: dict[str, np.ndarray]):
    """X [B,3,17,17] → Conv s1 + BN + Relu → Conv s2 + BN + ReLU6 (17→9) → depthwise Conv
    5×5 s2 + Relu (9→5) → Conv 1×1 + residual Add → MaxPool 3×3 s1 → GAP → Gemm → logits."""
    nodes = [
        node("Conv", ["X", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node(
            "BatchNormalization",
            ["c1", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"],
            ["n1"],
            epsilon=1e-3,
        ),
        node("Relu", ["n1"], ["a1"]),
        node("Conv", ["a1", "w2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
        node(
            "BatchNormalization",
            ["c2", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"],
            ["n2"],
            epsilon=1e-3,
        ),
        node("Clip", ["n2", "clip_lo", "clip_hi"], ["a2"]),
        node(
            "Conv",
            ["a2", "w3", "b3"],
            ["c3"],
            kernel_shape=[5, 5],
            strides=[2, 2],
            pads=[2] * 4,
            group=12,
        ),
        node("Relu", ["c3"], ["a3"]),
        node("Conv", ["a3", "w4"], ["c4"], kernel_shape=[1, 1]),
        node("Add", ["c4", "a3"], ["r"]),
        node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], pads=[1] * 4),
        node("GlobalAveragePool", ["p"], ["g"]),
        node("Flatten", ["g"], ["f"]),
        node("Gemm", ["f", "wf", "bf"], ["Y"]),
    ]
    return make_model(nodes, ("N", 3, SIZE, SIZE), weights)


def _inputs(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


def equivariance_error(model, x, axis: int, backend: str, alpha: float) -> float:
    """max |map(mirror x) − mirror(map x)| / max |map x| for TSGB, targets fixed per row."""
    explainer = Explainer(model, method="tsgb", alpha=alpha, backend=backend)
    batch = np.concatenate([x, np.flip(x, axis)])
    targets = [1, 3, 1, 3]  # the same target for an image and its mirror
    saliency = explainer.explain(batch, target=targets).saliency
    plain, mirrored = saliency[: len(x)], saliency[len(x) :]
    scale = np.abs(plain).max()
    assert scale > 0 and np.isfinite(saliency).all()
    return float(np.abs(mirrored - np.flip(plain, axis)).max() / scale)


@pytest.mark.parametrize("backend", ["numpy", "compiled"])
@pytest.mark.parametrize("alpha", [1.0, 0.8])
@pytest.mark.parametrize("flip", sorted(FLIPS))
def test_tsgb_map_is_mirror_equivariant_on_a_symmetric_net(flip, alpha, backend):
    model = symmetric_net(_weights())
    x, axis = _inputs(), FLIPS[flip]
    # the net itself is mirror-invariant (the premise of the test)
    logits = evaluate(model, np.concatenate([x, np.flip(x, axis)]))
    assert np.abs(logits[:2] - logits[2:]).max() <= 1e-5 * np.abs(logits).max()
    assert equivariance_error(model, x, axis, backend, alpha) <= 1e-5


@pytest.mark.parametrize("backend", ["numpy", "compiled"])
def test_an_asymmetric_kernel_is_detected(backend):
    """Control: one kernel tap changed on one side only (the net is no longer mirror-
    symmetric) and the same comparison fails by orders of magnitude more than 1e-5."""
    weights = _weights()
    weights["w3"] = weights["w3"].copy()
    weights["w3"][:, 0, 2, 0] += 0.3  # depthwise kernels: left column only
    error = equivariance_error(symmetric_net(weights), _inputs(), FLIPS["left_right"], backend, 1.0)
    assert error > 1e-3

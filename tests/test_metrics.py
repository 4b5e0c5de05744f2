"""Metric implementations against hand-computed cases.

Deletion/insertion run on a tiny ONNX model whose score is known in closed form:
logits = [w·x, 0] for a 2x2 one-channel image, so softmax(target 0) = sigmoid(w·x).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tsgb_onnx.errors import InputError
from tsgb_onnx.evaluation import metrics as M
from tsgb_onnx.explainer import Explainer

DATA = Path(__file__).resolve().parents[1] / "tsgb_onnx" / "data"
W = np.array([4.0, 3.0, 2.0, 1.0], np.float32)  # pixel weights in raster order


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def linear_model(columns: np.ndarray) -> onnx.ModelProto:
    """x [B, 1, 2, 2] → Flatten → MatMul(W [4, K]) = logits [B, K]."""
    weight = numpy_helper.from_array(np.asarray(columns, np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["logits"], name="fc"),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", columns.shape[1]])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def linear():
    return Explainer(
        linear_model(np.stack([W, np.zeros(4, np.float32)], axis=1)),
        method="gradient",
        backend="numpy",
    )


# --------------------------------------------------------------------------- Spearman
def test_rankdata_averages_ties():
    assert M.rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert M.rankdata([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]


def test_spearman_hand_worked_with_ties():
    # ranks a = [1, 2.5, 2.5, 4], b = [1, 3, 2, 4]; centred dot 4.5, norms² 4.5 and 5
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert M.spearman([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert M.spearman(np.arange(9.0), np.exp(np.arange(9.0))) == pytest.approx(1.0)
    assert M.spearman([1, 1, 1], [1, 2, 3]) == 0.0  # no ranking in a constant map
    with pytest.raises(InputError):
        M.spearman([1, 2], [1, 2, 3])


# --------------------------------------------------------------------------- pointing game
def test_pointing_hit_box_mask_tolerance():
    sal = np.zeros((20, 20))
    sal[5, 7] = 1.0  # arg-max at x=7, y=5
    assert M.pointing_hit(sal, [(6, 4, 8, 6)])  # x 6..7, y 4..5
    assert not M.pointing_hit(sal, [(8, 5, 12, 9)])  # one pixel to the right
    assert M.pointing_hit(sal, [(8, 5, 12, 9)], tolerance=1)
    assert not M.pointing_hit(sal, [(10, 9, 12, 12)], tolerance=4.9)  # distance 5 (3, 4)
    assert M.pointing_hit(sal, [(10, 9, 12, 12)], tolerance=5)
    mask = np.zeros((20, 20), bool)
    mask[5, 7] = True
    assert M.pointing_hit(sal, mask=mask)
    mask[:] = False
    mask[5, 10] = True
    assert not M.pointing_hit(sal, mask=mask, tolerance=2.5)
    assert M.pointing_hit(sal, mask=mask, tolerance=3)
    assert not M.pointing_hit(np.ones((4, 4)), [(0, 0, 4, 4)])  # no maximum: a miss
    nan = sal.copy()
    nan[0, 0] = np.nan
    assert not M.pointing_hit(nan, [(0, 0, 20, 20)])


def test_pointing_game_is_mean_over_classes():
    score, per_class = M.pointing_game([True, False, False, True, True], list("aaabb"))
    assert per_class == {"a": pytest.approx(1 / 3), "b": 1.0}
    assert score == pytest.approx(2 / 3)  # not the overall hit rate 3/5


# --------------------------------------------------------------------------- localization
def test_box_iou_and_saliency_box():
    assert M.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert M.box_iou((0, 0, 2, 2), (5, 5, 6, 6)) == 0.0
    sal = np.zeros((10, 10))
    sal[1:3, 1:4] = 1.0  # 6 pixels, the largest region
    sal[7, 8] = 0.9  # 1 pixel
    sal[5, 5] = -3.0  # negative values count as zero
    assert M.saliency_box(sal, 0.5, "largest") == (1, 1, 4, 3)
    assert M.saliency_box(sal, 0.5, "all") == (1, 1, 9, 8)
    assert M.saliency_box(sal, 0.95, "all") == (1, 1, 4, 3)
    assert M.saliency_box(-np.ones((3, 3)), 0.5) is None
    assert M.localized(sal, [(1, 1, 4, 4)], 0.5)  # IoU 6/9
    assert not M.localized(sal, [(1, 1, 4, 6)], 0.5)  # IoU 6/15
    labels, count = M._label_numpy(sal > 0.5)
    assert count == 2 and (labels > 0).sum() == 7


def test_localization_threshold_is_searched():
    # maps: a bright core (the object) inside a dim halo; only thresholds above the halo
    # give the object's box
    maps, boxes = [], []
    for i in range(6):
        sal = np.full((12, 12), 0.3)
        sal[2 + i % 3 : 6 + i % 3, 3:8] = 1.0
        maps.append(sal)
        boxes.append([(3, 2 + i % 3, 8, 6 + i % 3)])
    res = M.localization_error(maps, boxes, groups=np.arange(6))
    assert res.error == 0.0 and res.held_out_error == 0.0
    assert 0.3 < res.threshold <= 1.0
    assert res.test.sum() == 3
    low = M.localization_error(maps, boxes, thresholds=(0.1, 0.2))
    assert low.error == 1.0


# --------------------------------------------------------------------------- deletion / insertion
def _auc(values, dx=0.25):
    return float(
        np.trapezoid(values, dx=dx) if hasattr(np, "trapezoid") else np.trapz(values, dx=dx)
    )


@pytest.mark.parametrize("batch_size", [3, 64])
def test_deletion_insertion_perfect_and_inverse_ranking(linear, batch_size):
    x = np.ones((2, 1, 2, 2), np.float32)
    perfect = W.reshape(1, 2, 2)
    inverse = -perfect
    sal = np.concatenate([perfect, inverse])
    kw = dict(step=0.25, substrate=0.0, batch_size=batch_size)
    dele = M.perturbation(linear.infer, x, sal, np.zeros(2, np.int64), "deletion", **kw)
    ins = M.perturbation(linear.infer, x, sal, np.zeros(2, np.int64), "insertion", **kw)
    assert dele.fractions.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    # deletion removes weights 4, 3, 2, 1 (perfect) or 1, 2, 3, 4 (inverse) from w·x = 10
    want_del = [[sig(v) for v in (10, 6, 3, 1, 0)], [sig(v) for v in (10, 9, 7, 4, 0)]]
    want_ins = [[sig(v) for v in (0, 4, 7, 9, 10)], [sig(v) for v in (0, 1, 3, 6, 10)]]
    np.testing.assert_allclose(dele.curves, want_del, rtol=1e-5)
    np.testing.assert_allclose(ins.curves, want_ins, rtol=1e-5)
    np.testing.assert_allclose(dele.auc, [_auc(c) for c in want_del], rtol=1e-5)
    np.testing.assert_allclose(ins.auc, [_auc(c) for c in want_ins], rtol=1e-5)
    assert dele.auc[0] < dele.auc[1] and ins.auc[0] > ins.auc[1]


def test_deletion_sigmoid_score_and_blur_substrate(linear):
    x = np.ones((1, 1, 2, 2), np.float32)
    sal = W.reshape(1, 2, 2)
    res = M.perturbation(
        linear.infer, x, sal, 0, "deletion", step=0.5, substrate=0.0, score="sigmoid"
    )
    np.testing.assert_allclose(res.curves[0], [sig(10), sig(3), sig(0)], rtol=1e-5)
    # the blur of a constant image is the image: deletion then changes nothing
    flat = M.perturbation(linear.infer, x, sal, 0, "deletion", step=0.25)
    np.testing.assert_allclose(flat.curves[0], sig(10), rtol=1e-5)
    img = np.zeros((1, 1, 21, 21), np.float32)
    img[..., 10, 10] = 1.0
    blurred = M.gaussian_blur(img)
    assert blurred.sum() == pytest.approx(1.0, rel=1e-5)
    assert blurred[0, 0, 10, 10] == pytest.approx(blurred.max())
    assert blurred[0, 0, 10, 15] == pytest.approx(blurred[0, 0, 10, 10] * math.exp(-0.5), rel=1e-4)
    with pytest.raises(InputError):
        M.perturbation(linear.infer, x, sal, 0, "erase")


# --------------------------------------------------------------------------- class sensitivity
def test_class_sensitivity_of_opposite_classes(linear):
    # logits [w·x, -w·x]: gradient × input maps are w*x and -w*x, Spearman -1
    ex = Explainer(linear_model(np.stack([W, -W], axis=1)), method="gradient", backend="numpy")
    x = np.random.default_rng(0).uniform(0.5, 1.5, size=(3, 1, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(M.class_sensitivity(ex, x), -1.0)


# --------------------------------------------------------------------------- randomization
def test_randomize_layers_touches_only_named_layers():
    model = onnx.load(str(DATA / "synthetic_vgg.onnx"))
    layers = M.randomizable_layers(model)
    assert layers[0].endswith("Gemm") and layers[-1].endswith("Conv") and len(layers) == 7
    out = M.randomize_layers(model, layers[:1], seed=1)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    top = next(n for n in model.graph.node if n.name == layers[0])
    assert changed == {v for v in top.input[1:] if v in before}
    assert after[top.input[1]].std() == pytest.approx(before[top.input[1]].std(), rel=0.2)


def test_randomization_decorrelates_maps():
    from tsgb_onnx.evaluation.datasets import synthetic

    model = onnx.load(str(DATA / "synthetic_vgg.onnx"))
    data = synthetic(3, seed=5)
    ex = Explainer(model, method="tsgb")
    res = ex.explain(data.x)
    layers, corr = M.sanity_check(model, "tsgb", data.x, res.target, res.saliency, "cascading")
    assert corr.shape == (7, 3)
    assert np.abs(corr[-1]).mean() < 0.3  # every layer random: nothing left
    # the same model re-explained is perfectly correlated (the oracle of the metric)
    again = Explainer(model, method="tsgb").explain(data.x, target=res.target).saliency
    np.testing.assert_allclose(M.spearman_rows(res.saliency, again), 1.0)

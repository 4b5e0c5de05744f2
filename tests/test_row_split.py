"""The compiled explainer splits a large CPU call into row slices run in parallel threads on
a one-thread session; the maps equal those of small calls, which run whole."""

import numpy as np
import pytest

from tsgb_onnx import Explainer
from tsgb_onnx.explainer import ROW_SPLIT_MIN


@pytest.mark.parametrize("method", ["gradient", "tsgb"])
def test_split_rows_equal_whole_calls(onnx_zoo, method):
    _, proto = onnx_zoo.get("resnet50_style", False)
    rows = 2 * ROW_SPLIT_MIN + 3  # uneven slices
    x = np.random.default_rng(0).standard_normal((rows, 3, 64, 64)).astype(np.float32)
    target = np.arange(rows) % 10
    explainer = Explainer(proto, method=method, backend="compiled", threads=2)
    assert explainer._row_workers(rows) == 2 and explainer._row_workers(ROW_SPLIT_MIN - 1) == 1
    whole = explainer.explain(x, target=target)
    assert explainer._compiled[(None, ())].row_session is not None  # the call was split
    step = ROW_SPLIT_MIN // 2  # below the threshold: one session run each
    for name in ("saliency", "signal", "logits"):
        parts = [
            getattr(explainer.explain(x[lo : lo + step], target=target[lo : lo + step]), name)
            for lo in range(0, rows, step)
        ]
        expected = np.concatenate(parts)
        got = getattr(whole, name)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max(), name


def test_one_thread_gives_one_run(onnx_zoo):
    _, proto = onnx_zoo.get("resnet50_style", False)
    explainer = Explainer(proto, method="gradient", backend="compiled", threads=1)
    assert explainer._row_workers(64) == 1


def test_clean_pass_before_rows_runs_one_thread_sessions(onnx_zoo):
    """SmoothGrad's and IG's clean pass: the logits of `infer`, from one-thread sessions
    (rows split over the threads); bad input is refused as by `infer`."""
    from tsgb_onnx.errors import InputError

    _, proto = onnx_zoo.get("resnet50_style", False)
    x = np.random.default_rng(1).standard_normal((5, 3, 64, 64)).astype(np.float32)
    explainer = Explainer(proto, method="smoothgrad", threads=2)
    got = explainer.infer_before_rows(x)
    want = explainer.infer(x)
    assert got.shape == want.shape == (5, 10)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    threads = {key[2] for key in explainer.recorder._sessions}
    assert threads == {1, None}  # the one-thread session, and infer's own
    x[3, 0, 2, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        explainer.infer_before_rows(x)

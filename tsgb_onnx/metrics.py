"""Documented import path `tsgb_onnx.metrics`: the metrics, which live in
`tsgb_onnx.evaluation.metrics`. This name is that very module."""

import sys

from tsgb_onnx.evaluation.metrics import __name__ as _target

sys.modules[__name__] = sys.modules[_target]

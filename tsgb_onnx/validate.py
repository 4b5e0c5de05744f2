"""Documented import path `tsgb_onnx.validate`: validate and its report, which live in
`tsgb_onnx.evaluation.validate`. This name is that very module."""

import sys

from tsgb_onnx.evaluation.validate import __name__ as _target

sys.modules[__name__] = sys.modules[_target]

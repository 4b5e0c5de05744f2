"""Documented import path `tsgb_onnx.export`: the exporters (from_torch, from_keras,
from_jax, from_paddle), which live in `tsgb_onnx.io.export`. This name is that very module."""

import sys

from tsgb_onnx.io.export import __name__ as _target

sys.modules[__name__] = sys.modules[_target]

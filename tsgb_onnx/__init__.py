"""tsgb-onnx: saliency maps (TSGB and baselines) for any CNN, computed on its ONNX graph."""

from tsgb_onnx.errors import (
    InputError,
    MethodError,
    ModelError,
    NonFiniteError,
    OutOfMemoryError,
    RuntimeUnavailableError,
    TargetError,
    TsgbError,
    UnsupportedOpError,
)
from tsgb_onnx.explainer import Explainer, Explanation
from tsgb_onnx.methods.result import DenseTarget
from tsgb_onnx.methods.table import available_methods

__version__ = "0.1.0"

__all__ = [
    "Explainer",
    "Explanation",
    "DenseTarget",
    "available_methods",
    "TsgbError",
    "ModelError",
    "NonFiniteError",
    "OutOfMemoryError",
    "UnsupportedOpError",
    "InputError",
    "TargetError",
    "MethodError",
    "RuntimeUnavailableError",
    "__version__",
]

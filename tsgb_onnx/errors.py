"""Typed errors: every failure the user can cause has one clear message."""

from __future__ import annotations


class TsgbError(Exception):
    """Base class of all tsgb-onnx errors; the CLI prints the message as one line."""


class ModelError(TsgbError):
    """The model file cannot be loaded, checked or understood."""


class UnsupportedOpError(ModelError):
    """A node on the backward path has no rule in the chosen method."""

    def __init__(self, method: str, nodes: list[tuple[str, str]]):
        self.method = method
        self.nodes = nodes
        listed = ", ".join(f"node '{name}' ({op})" for name, op in nodes[:8])
        more = f" and {len(nodes) - 8} more" if len(nodes) > 8 else ""
        super().__init__(
            f"method '{method}' has no backward rule for {listed}{more}; "
            "see `tsgb inspect MODEL` for the supported op types"
        )


class InputError(TsgbError, ValueError):
    """The input array does not fit the model (shape, dtype, NaN/Inf)."""


class TargetError(TsgbError, ValueError):
    """A target class index is out of range or the wrong length."""


class MethodError(TsgbError, ValueError):
    """Unknown method name or bad method option."""


class RuntimeUnavailableError(TsgbError):
    """ONNX Runtime (or a requested provider) is not installed."""

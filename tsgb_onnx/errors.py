"""Typed errors: every failure the user can cause has one clear message."""

from __future__ import annotations

import re


class TsgbError(Exception):
    """Base class of all tsgb-onnx errors; the CLI prints the message as one line."""


class ModelError(TsgbError):
    """The model file cannot be loaded, checked or understood."""


class NonFiniteError(ModelError):
    """The model computes NaN or Inf: a constant on the path holds one, or the forward pass
    (or a method's backward) overflows; the message names the first such tensor."""


class OutOfMemoryError(TsgbError, MemoryError):
    """The machine (or an ONNX Runtime arena) ran out of memory; the message says during what."""


class UnsupportedOpError(ModelError):
    """A node on the backward path has no rule in the chosen method."""

    def __init__(
        self, method: str, nodes: list[tuple[str, str]], dtypes: dict[str, str] | None = None
    ):
        self.method = method
        self.nodes = nodes
        dtypes = dtypes or {}

        def shown(name: str, op: str) -> str:
            return (
                f"node '{name}' ({op}, {dtypes[name]})"
                if name in dtypes
                else f"node '{name}' ({op})"
            )

        listed = ", ".join(shown(name, op) for name, op in nodes[:8])
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


# ONNX Runtime reports a failed allocation as a RuntimeException, not a MemoryError
_MEMORY_MESSAGE = re.compile(
    r"bad[_ ]alloc|bad allocation|failed to allocate|out of memory|cannot allocate memory",
    re.IGNORECASE,
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc`, or an exception that caused it, is a failed memory allocation."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or _MEMORY_MESSAGE.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def out_of_memory(exc: BaseException, doing: str, batch: bool = False) -> OutOfMemoryError:
    """The one-line error for a memory failure `exc` that happened while `doing` (`batch`:
    a smaller batch would need less)."""
    detail = str(exc).strip().splitlines()
    said = f" ({detail[-1][:200]})" if detail else ""
    smaller = " or explain a smaller batch" if batch else ""
    return OutOfMemoryError(
        f"out of memory while {doing}{said}: free memory (close other programs){smaller}"
    )

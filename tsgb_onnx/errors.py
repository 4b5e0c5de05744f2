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
    """A node on the backward path has no rule in the chosen method.

    `method` is the rule method whose backward lacks the rule; `reader`, when set, the map
    method that reads that backward, and `chosen` the method the user chose (`reader`
    itself, or a wrapper running `reader` as its base): the message then starts with it."""

    def __init__(
        self,
        method: str,
        nodes: list[tuple[str, str]],
        dtypes: dict[str, str] | None = None,
        reader: str | None = None,
        where: str = "",
        hint: str = "",
        chosen: str | None = None,
    ):
        self.method = method
        self.nodes = nodes
        self.dtypes = dtypes or {}
        self.reader = reader
        self.chosen = chosen or reader
        self.where = where
        self.hint = hint
        super().__init__(self._message())

    def _message(self) -> str:
        def shown(name: str, op: str) -> str:
            kind = f"{op}, {self.dtypes[name]}" if name in self.dtypes else op
            return f"node '{name}' ({kind})"

        nodes = self.nodes
        listed = ", ".join(shown(name, op) for name, op in nodes[:8])
        more = f" and {len(nodes) - 8} more" if len(nodes) > 8 else ""
        if self.reader is None:
            return (
                f"method '{self.method}' has no backward rule for {listed}{more}; "
                "see `tsgb inspect MODEL` for the supported op types"
            )
        verb, it = ("has", "it") if len(nodes) == 1 else ("have", "them")
        who = self.reader if self.chosen == self.reader else f"its base {self.reader}"
        where = f" {self.where}" if self.where else ""
        hint = self.hint or f"see `tsgb inspect MODEL --method {self.chosen}`"
        return (
            f"{self.chosen}: {listed}{more} {verb} no backward rule, and {who} reads the "
            f"'{self.method}' backward through {it}{where}; {hint}"
        )

    def read_by(self, reader: str, where: str = "", hint: str = "") -> UnsupportedOpError:
        """This error as the map method `reader` meets it: it reads this backward `where`
        (e.g. "from the logits down to layer 'x'"); `hint` replaces the default advice. An
        error some map method already read stays that method's, with `reader` as the one
        chosen (a wrapper running it as its base)."""
        if self.reader is not None:
            return UnsupportedOpError(
                self.method, self.nodes, self.dtypes, self.reader, self.where, self.hint, reader
            )
        return UnsupportedOpError(self.method, self.nodes, self.dtypes, reader, where, hint)


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

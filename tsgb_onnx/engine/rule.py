"""What the planner needs of a method: a `Rule` per node (`RuleSource`).

A `Rule` is a backward function (`engine.ops.RuleFn`) plus the forward tensors it reads.
``reads`` names them: ``"x0"`` input 0, ``"y0"`` output 0, ``"x0.shape"`` only the shape of
input 0, ``"x*"`` / ``"x*.shape"`` every input, ``"@name"`` another tensor of the graph (read
with ``fwd.tensor(name)``), ``"rx0"`` / ``"ry0"`` the reference pass's values (methods with a
reference input). Constant inputs never need recording: rules get them from ``node.const(i)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tsgb_onnx.engine.ops import RuleFn
from tsgb_onnx.ir.graph import Graph, Node


@dataclass(frozen=True)
class Rule:
    """A backward rule and the forward tensors it reads."""

    fn: RuleFn
    reads: tuple[str, ...] | Callable[[Any], tuple[str, ...]]
    op_type: str
    rule_set: str

    @property
    def label(self) -> str:
        return f"{self.rule_set}.{self.fn.__name__}"


class RuleSource(Protocol):
    """A one-pass method as the planner sees it (`methods.base.Method` implements it)."""

    name: str

    def rule_for(self, node: Node, graph: Graph, options: dict) -> Rule | None:
        """The rule for `node` (None: the method has no rule for its op)."""
        ...

    def before_plan(self, graph: Graph, options: dict) -> None:
        """Run once per plan (e.g. to warn about the graph)."""
        ...

    @property
    def needs_reference(self) -> bool:
        """Whether rules read a reference forward pass ("rx0"/"ry0")."""
        ...

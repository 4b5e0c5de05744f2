"""Rule sets: one place to look up the backward rule for (rule set, op type).

A rule is a function ``fn(ops, node, fwd, grads, opts)`` written only against the backend
contract `engine.ops.ArrayOps` (its signature: `engine.ops.RuleFn`); it returns signals for
the inputs it differentiates. ``reads`` names the forward tensors it needs (see
`engine.rule`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tsgb_onnx.engine.ops import RuleFn
from tsgb_onnx.engine.rule import Rule


class RuleSet:
    """A named mapping op type -> Rule, falling back to a parent set."""

    def __init__(self, name: str, parent: RuleSet | None = None):
        self.name = name
        self.parent = parent
        self._rules: dict[str, Rule] = {}

    def register(
        self,
        op_types: str | Iterable[str],
        reads: Iterable[str] | Callable[[Any], tuple[str, ...]] = (),
    ):
        """Decorator: register `fn` as the rule for one or several op types.

        `reads` is a tuple of tokens, or a function of the node returning one.
        """
        names = [op_types] if isinstance(op_types, str) else list(op_types)
        reads = reads if callable(reads) else tuple(reads)

        def wrap(fn: RuleFn) -> RuleFn:
            for op in names:
                self._rules[op] = Rule(fn, reads, op, self.name)
            return fn

        return wrap

    def lookup(self, op_type: str) -> Rule | None:
        rule = self._rules.get(op_type)
        if rule is None and self.parent is not None:
            return self.parent.lookup(op_type)
        return rule

    def op_types(self) -> set[str]:
        own = set(self._rules)
        return own | (self.parent.op_types() if self.parent else set())

    def __repr__(self) -> str:
        return f"RuleSet({self.name!r}, {len(self.op_types())} op types)"


def opt(opts: dict[str, Any] | None, key: str, default: Any) -> Any:
    return default if opts is None else opts.get(key, default)

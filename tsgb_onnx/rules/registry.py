"""Rule registry: one place to look up the backward rule for (rule set, op type).

A rule is a function ``fn(ops, node, fwd, grads, opts) -> list`` written only against
the array namespace `ops` (see `tsgb_onnx.backends`):

* ``node``  the `Node` (attributes, constant inputs, static shapes);
* ``fwd``   the recorded forward tensors it declared in ``reads``;
* ``grads`` one incoming signal per node output (None where no signal arrives);
* ``opts``  the method's options (e.g. ``alpha``);

and returns one signal per node input (None for inputs that get none).
``reads`` names the forward tensors the rule needs: ``"x0"`` input 0, ``"y0"`` output 0,
``"x0.shape"`` only the shape of input 0, ``"x*"`` / ``"x*.shape"`` every input,
``"@name"`` another tensor of the graph (read with ``fwd.tensor(name)``).
Constant inputs never need recording: rules get them from ``node.const(i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

RuleFn = Callable[..., list]


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


class RuleSet:
    """A named mapping op type -> Rule, falling back to a parent set."""

    def __init__(self, name: str, parent: "RuleSet | None" = None):
        self.name = name
        self.parent = parent
        self._rules: dict[str, Rule] = {}

    def register(self, op_types: str | Iterable[str],
                 reads: Iterable[str] | Callable[[Any], tuple[str, ...]] = ()):
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

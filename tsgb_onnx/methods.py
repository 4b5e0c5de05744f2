"""Method registry: a method is a rule set plus options and, optionally, per-node choices.

Adding a method = build a `RuleSet` whose parent is `GRADIENT`, override the op types it
changes, and `register_method(Method(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import MethodError
from .graph import Graph, Node
from .rules.gradient import GRADIENT
from .rules.registry import Rule, RuleSet

# chooser(method, node, graph, options) -> Rule | None, for rules that depend on a node's role
NodeChooser = Callable[["Method", Node, Graph, dict], "Rule | None"]


@dataclass
class Method:
    """A named explanation method: rules per op type, option defaults, node chooser."""

    name: str
    rules: RuleSet
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    chooser: NodeChooser | None = None
    check_options: Callable[[dict], None] | None = None
    prepare: Callable[[Graph, dict], None] | None = None  # once per plan (e.g. warnings)

    def rule_for(self, node: Node, graph: Graph, options: dict) -> Rule | None:
        if self.chooser is not None:
            rule = self.chooser(self, node, graph, options)
            if rule is not None:
                return rule
        return self.rules.lookup(node.op_type)

    def resolve_options(self, options: dict) -> dict:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise MethodError(
                f"method '{self.name}' has no option {', '.join(map(repr, unknown))} "
                f"(its options: {allowed})"
            )
        resolved = {**self.defaults, **options}
        if self.check_options is not None:
            self.check_options(resolved)
        return resolved


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    _load_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise MethodError(
            f"unknown method '{name}'; available: {', '.join(available_methods())}"
        ) from None


def available_methods() -> list[str]:
    _load_builtin_methods()
    return sorted(_METHODS)


def _load_builtin_methods() -> None:
    # importing these modules registers the built-in methods
    from . import map_methods  # noqa: F401
    from .rules import baselines, tsgb  # noqa: F401


register_method(Method("gradient", GRADIENT, description="exact gradient (GradBP)"))

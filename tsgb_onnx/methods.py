"""Method registry: a method is a rule set plus options and, optionally, per-node choices.

Adding a method = build a `RuleSet` whose parent is `GRADIENT`, override the op types it
changes, and `register_method(Method(...))`. A method that combines forward passes and
backward signals in other ways (Grad-CAM, FullGrad, wrappers) is a `MapMethod`: a function
`compute(explainer, x, target, layer, options) -> Explanation`, registered the same way.
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
# reference(x, options) -> the input of the reference forward pass (e.g. DeepLIFT's baseline)
ReferenceInput = Callable[[Any, dict], Any]


def _resolve(name: str, defaults: dict, check, options: dict) -> dict:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise MethodError(
            f"method '{name}' has no option {', '.join(map(repr, unknown))} "
            f"(its options: {allowed})"
        )
    resolved = {**defaults, **options}
    if check is not None:
        check(resolved)
    return resolved


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
    # set for methods whose rules read a reference forward pass ("rx0"/"ry0" tokens)
    reference: ReferenceInput | None = None
    single_pass = True  # one backward pass: a reverse program (convert, inspect --program)

    def rule_for(self, node: Node, graph: Graph, options: dict) -> Rule | None:
        if self.chooser is not None:
            rule = self.chooser(self, node, graph, options)
            if rule is not None:
                return rule
        return self.rules.lookup(node.op_type)

    def resolve_options(self, options: dict) -> dict:
        return _resolve(self.name, self.defaults, self.check_options, options)


# compute(explainer, x, target, layer, options) -> Explanation
MapCompute = Callable[[Any, Any, Any, "str | None", dict], Any]


@dataclass
class MapMethod:
    """A method computed from forward passes and backward signals of a rule method
    (`backward`, default the exact gradient), not a single reverse program.

    `compute(explainer, x, target, layer, options)` returns an `Explanation`; it reads
    signals with `explainer.signals(...)` or runs other methods through
    `explainer.sub_explainer(name, **options)`. With `pass_options`, options this method
    does not define go to the method named by its option `base`.
    """

    name: str
    compute: MapCompute
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    check_options: Callable[[dict], None] | None = None
    backward: str = "gradient"
    pass_options: bool = False
    reference = None
    single_pass = False

    @property
    def rules(self) -> RuleSet:
        """The rule set of the backward it reads (what `tsgb inspect` lists)."""
        return get_method(self.backward).rules

    def resolve_options(self, options: dict) -> dict:
        if not self.pass_options:
            return _resolve(self.name, self.defaults, self.check_options, options)
        own = {k: v for k, v in options.items() if k in self.defaults}
        resolved = _resolve(self.name, self.defaults, self.check_options, own)
        rest = {k: v for k, v in options.items() if k not in self.defaults}
        base = get_method(str(resolved.get("base")))
        try:
            base.resolve_options(rest)
        except MethodError as exc:
            raise MethodError(f"{self.name}: {exc}") from None
        return {**resolved, **rest}


_METHODS: dict[str, "Method | MapMethod"] = {}


def register_method(method):
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> "Method | MapMethod":
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
    from . import groupcam, map_methods, meta, normgrad  # noqa: F401
    from .rules import baselines, tsgb  # noqa: F401


register_method(Method("gradient", GRADIENT, description="exact gradient (GradBP)"))

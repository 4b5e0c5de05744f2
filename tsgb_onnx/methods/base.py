"""Method types: a one-pass `Method` (a rule set plus options) and a `MapMethod` (a function
of forward passes and backward signals), the registry that names them, and the small engine
protocol map methods are written against.

The built-in methods are listed in one place, `methods.table`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tsgb_onnx.engine.rule import Rule
from tsgb_onnx.errors import MethodError
from tsgb_onnx.ir.graph import Graph, Node
from tsgb_onnx.methods.result import Explanation, TargetLike
from tsgb_onnx.rules.registry import RuleSet

# chooser(method, node, graph, options) -> Rule | None, for rules that depend on a node's role
NodeChooser = Callable[["Method", Node, Graph, dict], "Rule | None"]
# reference(x, options) -> the input of the reference forward pass (e.g. DeepLIFT's baseline)
ReferenceInput = Callable[[Any, dict], Any]


# alias -> the method's own option name, or a function of the value giving own options
AliasFn = Callable[[Any], dict]
Aliases = dict[str, "str | AliasFn"]


def apply_aliases(name: str, aliases: Aliases, options: dict) -> dict:
    """`options` with other libraries' names (e.g. Captum's ``n_steps``) replaced by the
    method's own; an alias and its own name given together is a MethodError."""
    if not aliases or not set(options) & set(aliases):
        return options
    own = {k: v for k, v in options.items() if k not in aliases}
    for alias in [k for k in options if k in aliases]:
        target = aliases[alias]
        given = {target: options[alias]} if isinstance(target, str) else target(options[alias])
        clash = sorted(set(given) & set(own))
        if clash:
            raise MethodError(
                f"method '{name}': give either {alias!r} or {clash[0]!r}, not both "
                f"({alias!r} is another library's name for it)"
            )
        own.update(given)
    return own


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
    """A one-pass method: rules per op type, option defaults, node chooser
    (implements the planner's `engine.rule.RuleSource`)."""

    name: str
    rules: RuleSet
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    chooser: NodeChooser | None = None
    check_options: Callable[[dict], None] | None = None
    prepare: Callable[[Graph, dict], None] | None = None  # once per plan (e.g. warnings)
    # set for methods whose rules read a reference forward pass ("rx0"/"ry0" tokens)
    reference: ReferenceInput | None = None
    aliases: Aliases = field(default_factory=dict)  # other libraries' option names
    single_pass = True  # one backward pass: a reverse program (convert, inspect --program)

    def rule_for(self, node: Node, graph: Graph, options: dict) -> Rule | None:
        if self.chooser is not None:
            rule = self.chooser(self, node, graph, options)
            if rule is not None:
                return rule
        return self.rules.lookup(node.op_type)

    def before_plan(self, graph: Graph, options: dict) -> None:
        if self.prepare is not None:
            self.prepare(graph, options)

    @property
    def needs_reference(self) -> bool:
        return self.reference is not None

    def resolve_options(self, options: dict) -> dict:
        options = apply_aliases(self.name, self.aliases, options)
        return _resolve(self.name, self.defaults, self.check_options, options)


class ExplainerLike(Protocol):
    """What a map method may use of the explainer that runs it (`tsgb_onnx.Explainer`)."""

    graph: Graph
    threads: int

    def infer(self, x: np.ndarray) -> np.ndarray: ...

    def targets(self, target: TargetLike, logits: np.ndarray) -> np.ndarray: ...

    def explain(
        self, x: np.ndarray, target: TargetLike = None, layer: str | None = None
    ) -> Explanation: ...

    def signals(
        self, x: np.ndarray, target: TargetLike = None, layers: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]: ...

    def sub_explainer(self, method: str, **options: Any) -> ExplainerLike: ...

    def on_model(self, model: Any, method: str, **options: Any) -> ExplainerLike:
        """An explainer with the same settings on another model (e.g. updated weights)."""
        ...

    def method_named(self, name: str) -> Method | MapMethod: ...


# compute(explainer, x, target, layer, options) -> Explanation
MapCompute = Callable[[ExplainerLike, np.ndarray, TargetLike, "str | None", dict], Explanation]
# needs(graph, options) -> the tensors at which the method reads its backward's signals
LayerNeeds = Callable[[Graph, dict], Sequence[str]]


@dataclass
class MapMethod:
    """A method computed from forward passes and backward signals of a rule method
    (`backward`, default the exact gradient), not a single reverse program.

    `compute(explainer, x, target, layer, options)` returns an `Explanation`; it reads
    signals with `explainer.signals(...)` or runs other methods through
    `explainer.sub_explainer(name, **options)`. With `pass_options`, options this method
    does not define go to the method named by its option `base`.

    `needs(graph, options)` names the tensors whose `backward` signals the method reads
    (None: the model input): the explainer plans the backward from the logits down to them
    when it is built, so an op without a rule below them does not matter
    (`needed_layers`). A `pass_options` method also has its `base` planned then
    (`base_method`).
    """

    name: str
    compute: MapCompute
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    check_options: Callable[[dict], None] | None = None
    backward: str = "gradient"
    pass_options: bool = False
    several_layers: bool = False  # `layer` may be a list (combined into one map)
    # the registry's lookup, set when registered (a map method names other methods)
    lookup: Callable[[str], Method | MapMethod] | None = field(default=None, repr=False)
    aliases: Aliases = field(default_factory=dict)  # other libraries' option names
    needs: LayerNeeds | None = None  # the tensors it reads signals at (None: the input)
    reference = None
    single_pass = False

    def needed_layers(self, graph: Graph, options: dict) -> list[str]:
        """The tensors at which this method reads `backward` signals with `options` (in the
        order it asks for them; empty: none of its own, e.g. a wrapper of `base`)."""
        if self.needs is None:
            return [graph.input_name]
        return list(dict.fromkeys(self.needs(graph, options)))

    def base_method(self, options: dict) -> tuple[str, dict] | None:
        """The method a `pass_options` method runs (its option `base`) and the options it
        passes on; None for other methods."""
        if not self.pass_options:
            return None
        rest = {k: v for k, v in options.items() if k not in self.defaults}
        return str(options.get("base")), rest

    def _named(self, name: str) -> Method | MapMethod:
        if self.lookup is None:
            raise MethodError(f"method '{self.name}' is not registered, so it cannot name '{name}'")
        return self.lookup(name)

    @property
    def rules(self) -> RuleSet:
        """The rule set of the backward it reads (what `tsgb inspect` lists)."""
        return self._named(self.backward).rules

    def resolve_options(self, options: dict) -> dict:
        options = apply_aliases(self.name, self.aliases, options)
        if not self.pass_options:
            return _resolve(self.name, self.defaults, self.check_options, options)
        own = {k: v for k, v in options.items() if k in self.defaults}
        resolved = _resolve(self.name, self.defaults, self.check_options, own)
        rest = {k: v for k, v in options.items() if k not in self.defaults}
        base = self._named(str(resolved.get("base")))
        try:
            base.resolve_options(rest)
        except MethodError as exc:
            raise MethodError(f"{self.name}: {exc}") from None
        return {**resolved, **rest}


class MethodRegistry:
    """Methods by name."""

    def __init__(self) -> None:
        self._methods: dict[str, Method | MapMethod] = {}

    def register(self, method: Method | MapMethod) -> Method | MapMethod:
        if isinstance(method, MapMethod):
            method.lookup = self.get
        self._methods[method.name] = method
        return method

    def get(self, name: str) -> Method | MapMethod:
        try:
            return self._methods[name]
        except KeyError:
            raise MethodError(
                f"unknown method '{name}'; available: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._methods)

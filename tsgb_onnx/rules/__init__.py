"""Backward rules, grouped in rule sets (one module per method family)."""

from tsgb_onnx.rules.gradient import GRADIENT
from tsgb_onnx.rules.registry import Rule, RuleSet

__all__ = ["GRADIENT", "Rule", "RuleSet"]

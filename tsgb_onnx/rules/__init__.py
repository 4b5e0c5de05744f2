"""Backward rules, grouped in rule sets (one module per method family)."""

from .gradient import GRADIENT
from .registry import Rule, RuleSet

__all__ = ["GRADIENT", "Rule", "RuleSet"]

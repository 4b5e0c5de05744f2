"""Metrics, data sets, `evaluate` and `validate`."""

"""Explanation methods: method types and registry (`base`), the one table of built-in methods
(`table`), the result type (`result`), and each map method's computation."""

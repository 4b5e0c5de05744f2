"""Edges to files and frameworks: preprocessing, labels, rendering, exporters, photos."""

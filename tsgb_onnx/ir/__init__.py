"""The model as a graph: load, check, canonicalise; window geometry."""

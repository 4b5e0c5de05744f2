"""The `tsgb` command line, one module per command (`main` assembles them)."""

"""Rule sets of the single-backward-pass baselines."""

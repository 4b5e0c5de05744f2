"""Data-set scale on Ray Data: `tsgb explain|evaluate --engine ray` (docs/scale.md).

`runtime` connects to Ray (a local one, or an existing cluster); `store` is the output
folder (Parquet parts written atomically, one per batch, named by the batch's inputs, so a
rerun skips what is written and a retried batch replaces its own part); `explain` and
`evaluate` are the two pipelines: a Ray dataset of small per-input records,
`map_batches` with an actor class that builds its explainers once, the results written
by the actors, and the whole-set reductions on the driver.
"""

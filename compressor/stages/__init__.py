"""Compression stages, one folder per concern: `prune/`, `quantize/`, `rewrite/`, `train/`, and
`select` (which layers a stage may touch, by name pattern). A stage is a class with `params` (its
dataclass) and `apply(model, ctx) -> model`; it may read the Context and write `ctx.notes`, never
files. Stages import `training`, `models`, `measure`, `modules` and `core`; never `targets`, `run`,
`recipe` or `report`."""

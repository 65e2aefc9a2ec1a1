"""Pruning stages: unstructured magnitude, N:M, structured channels and heads (the dependency graph
of coupled channels in `graph`, the prunable `units`), whole layers, and the sensitivity scan that
sets per-layer ratios. Imports `stages.select`, `training`, `measure`, `models`, `modules`, `core`."""

"""Stages that rewrite single layers as factorized pairs (low-rank SVD, depthwise-separable), keep a
rewrite only where it cuts MACs, and recover by distillation (`common`). Imports `stages.train`,
`stages.select`, `modules`, `measure`, `core`."""

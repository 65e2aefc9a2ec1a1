"""Quantization stages: static INT8 (post-training, bias correction, residual outputs), QAT, dynamic
INT8, weight-only INT4/INT8, FP16/BF16 casts and experimental formats. The fake-quant modules they
create live in `compressor.modules.quant`. Imports `stages.select`, `modules`, `training`, `core`."""

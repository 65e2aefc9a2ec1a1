"""Half-precision weights and compute: FP16 (IEEE half) and BF16 (bfloat16). Halves the
size; speed depends on the runtime and hardware (GPUs, recent CPUs with AVX512-FP16/AMX)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compressor.core.interfaces import Context


@dataclass
class QuantizeFloatParams:
    pass


class _CastTo:
    params: QuantizeFloatParams
    dtype: torch.dtype
    precision: str

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        ctx.notes["dtype"] = str(self.dtype).replace("torch.", "")
        return model.to(self.dtype).eval()


class QuantizeFP16(_CastTo):
    """FP16 weights and compute."""

    dtype, precision = torch.float16, "fp16"


class QuantizeBF16(_CastTo):
    """BF16 weights and compute (wider range than FP16, fewer mantissa bits)."""

    dtype, precision = torch.bfloat16, "bf16"

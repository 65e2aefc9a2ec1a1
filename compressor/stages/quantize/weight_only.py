"""Weight-only quantization for Linear-heavy models (transformers, MLPs): INT8 or group-wise
INT4 weights, activations left in float, no calibration data. Memory and file size shrink 4-8x;
ONNX Runtime runs the layers as MatMulNBits (see targets/onnx_weight_only.py), which
dequantizes the weights on the fly, so the gain is bandwidth, not arithmetic."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.modules.quant import WeightOnly
from compressor.stages.select import without

GROUP_SIZES = (16, 32, 64, 128, 256)  # the block sizes ONNX Runtime's MatMulNBits kernels take


@dataclass
class QuantizeWeightOnlyParams:
    bits: int = 4  # 4 or 8
    group_size: int = 128  # input features sharing one scale: 16, 32, 64, 128 or 256
    symmetric: bool = False  # asymmetric (a zero point per group) is the more accurate at 4 bits
    exclude: list[str] = field(default_factory=list)  # module-name patterns kept in float

    def check(self):
        if self.bits not in (4, 8):
            yield "bits", f"must be 4 or 8, got {self.bits}"
        if self.group_size not in GROUP_SIZES:
            yield "group_size", f"must be one of {', '.join(map(str, GROUP_SIZES))}, got {self.group_size}"


class QuantizeWeightOnly:
    """INT8 / group-wise INT4 Linear weights, float activations."""

    params: QuantizeWeightOnlyParams

    @staticmethod
    def precision(p: QuantizeWeightOnlyParams) -> str:  # what the stage leaves depends on its bits
        return f"int{p.bits}_weight_only"

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        names = [n for n, m in model.named_modules() if type(m) is nn.Linear]
        if not names:
            raise UserError("the model has no Linear layer for weight-only quantization", key="")
        chosen = without(names, p.exclude)
        for name in chosen:
            w = WeightOnly(model.get_submodule(name), p.bits, p.group_size, p.symmetric)
            w.quantize()
            model.set_submodule(name, w)
        ctx.notes.update(quantized_layers=len(chosen), float_layers=[n for n in names if n not in chosen],
                         bits=p.bits, group_size=p.group_size, symmetric=p.symmetric)
        return model.eval()

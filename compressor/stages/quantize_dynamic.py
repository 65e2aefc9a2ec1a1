"""Dynamic INT8 for Linear layers (transformers, MLPs, attention projections): int8
per-channel weights, activations quantized with a range measured on each input at run time,
so no calibration data is needed. ONNX Runtime runs it as DynamicQuantizeLinear + integer
MatMul; the PyTorch model simulates exactly that, so the report's metric is the quantized one."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from compressor.errors import UserError
from compressor.interfaces import Context
from compressor.params import one_of
from compressor.quant import QuantWrapper, needs_reduce_range
from compressor.select import without


@dataclass
class QuantizeDynamicParams:
    reduce_range: str = "auto"  # auto: 7-bit weights on x86 without VNNI; "true" | "false"
    exclude: list[str] = field(default_factory=list)  # module-name patterns kept in float

    def check(self):
        yield from one_of(self.reduce_range, ("auto", "true", "false"), "reduce_range")


class QuantizeDynamic:
    """Dynamic INT8 for Linear layers: int8 weights, activations quantized at run time."""

    params: QuantizeDynamicParams
    precision = "int8_dynamic"

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        reduce = needs_reduce_range() if p.reduce_range == "auto" else p.reduce_range == "true"
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not names:
            raise UserError("the model has no Linear layer to quantize dynamically", key="")
        chosen = without(names, p.exclude)
        for name in chosen:
            w = QuantWrapper(model.get_submodule(name), weight_bits=7 if reduce else 8, dynamic=True)
            w.set_weight_scale()
            model.set_submodule(name, w)
        ctx.notes.update(quantized_layers=len(chosen), float_layers=[n for n in names if n not in chosen],
                         reduce_range=reduce)
        return model.eval()

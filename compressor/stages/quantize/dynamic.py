"""Dynamic INT8 for Linear layers (transformers, MLPs, attention projections): int8
per-channel weights, activations quantized with a range measured on each input at run time,
so no calibration data is needed. The PyTorch model computes what the engine computes, so the
report's metric is the quantized one.

`activations`:
- `per_tensor`: one uint8 range per input tensor; exported through ONNX Runtime's own
  `quantize_dynamic` (DynamicQuantizeLinear + integer MatMul, fused by ORT into
  DynamicQuantizeMatMul).
- `per_token`: one symmetric scale per token (row of the last axis), uint8 with zero point 128.
  Outlier tokens and padding no longer set the range of every other token: all-MiniLM-L6-v2
  keeps a mean cosine of 0.997 to FP32 where per-tensor gives 0.962 (0.992 with per-channel
  weights). Exported as standard ONNX ops around MatMulInteger (compressor/targets/onnx/dynamic.py).
  Weights are stored as uint8 (zero point 128), so ONNX Runtime runs its u8u8 kernel, which does
  not saturate on AVX2 CPUs without VNNI (the u8s8 one does, hence 7-bit weights elsewhere) and
  is routed to the u8s8 VNNI/AMX kernel where those exist: 8-bit weights on every x86 CPU.
- `auto` (default): per_token for models with attention layers, per_tensor otherwise.

`embeddings: true` (default) also stores every nn.Embedding table as int8, one scale per row
(the word-embedding table is half of a small encoder); a table shared by several layers (tied
weights) is quantized once."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.core.params import one_of
from compressor.modules.quant import QuantEmbedding, QuantWrapper, needs_reduce_range
from compressor.stages.select import without

ACTIVATIONS = ("auto", "per_tensor", "per_token")


@dataclass
class QuantizeDynamicParams:
    activations: str = "auto"  # per_token | per_tensor | auto: per_token for models with attention layers
    embeddings: bool = True  # nn.Embedding tables as int8, one scale per row
    reduce_range: str = "auto"  # auto: 7-bit weights for per_tensor on x86 without VNNI (never needed per_token); "true" | "false"
    exclude: list[str] = field(default_factory=list)  # module-name patterns kept in float

    def check(self):
        yield from one_of(self.activations, ACTIVATIONS, "activations")
        yield from one_of(self.reduce_range, ("auto", "true", "false"), "reduce_range")


def has_attention(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()
               for m in model.modules())


class QuantizeDynamic:
    """Dynamic INT8 for Linear layers: int8 weights, activations quantized at run time."""

    params: QuantizeDynamicParams
    precision = "int8_dynamic"

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        activations = p.activations if p.activations != "auto" else \
            "per_token" if has_attention(model) else "per_tensor"
        if p.reduce_range == "auto":  # per_token exports uint8 weights: ORT's u8u8 kernel does not saturate
            reduce = activations == "per_tensor" and needs_reduce_range()
        else:
            reduce = p.reduce_range == "true"
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not names:
            raise UserError("the model has no Linear layer to quantize dynamically", key="")
        tables = [n for n, m in model.named_modules() if type(m) is nn.Embedding] if p.embeddings else []
        kept = without(names + tables, p.exclude)  # one pattern list for both kinds of layer
        chosen, tables = [n for n in names if n in kept], [n for n in tables if n in kept]
        self._embeddings(model, tables)
        for name in chosen:
            w = QuantWrapper(model.get_submodule(name), weight_bits=7 if reduce else 8, dynamic=True,
                             activations=activations)
            w.set_weight_scale()
            model.set_submodule(name, w)
        ctx.notes.update(quantized_layers=len(chosen), float_layers=[n for n in names if n not in chosen],
                         activations=activations, reduce_range=reduce, int8_embeddings=tables)
        return model.eval()

    @staticmethod
    def _embeddings(model: nn.Module, names: list[str]) -> None:
        done: dict[int, QuantEmbedding] = {}  # one quantization per weight tensor (tied tables)
        for name in names:
            inner = model.get_submodule(name)
            q = QuantEmbedding(inner)
            first = done.get(id(inner.weight))
            if first is None:
                q.quantize()
                done[id(inner.weight)] = q
            else:
                q.scale.copy_(first.scale)
            model.set_submodule(name, q)

"""Experimental extreme weight quantization, per output channel: binary (sign x mean |w|, as in
XNOR-Net), ternary (TWN: threshold 0.7 x mean |w|) and power-of-two (log2: sign x 2^k, the
exponents of the `bits`-bit code below each channel's largest). Optional straight-through
fine-tuning on the shared training loop, since without it binary weights lose most accuracy.

No runtime here has kernels for these codes: the weights stay float32 values on the grid, so the
engine is FP32 in size and speed. The report measures the accuracy; `bits_per_weight` in its
notes says what a runtime with such kernels could store."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.core.params import one_of
from compressor.modules.quant import QUANTIZABLE
from compressor.stages.select import without
from compressor.training.loop import fit

SCHEMES = ("binary", "ternary", "log2")


@dataclass
class QuantizeExperimentalParams:
    scheme: str = "ternary"  # binary | ternary | log2
    bits: int = 4  # log2 only: 1 sign bit, the rest code zero and the exponents
    keep_first_last: bool = True  # first and last layer stay float, as the papers do
    exclude: list[str] = field(default_factory=list)  # module-name patterns kept in float
    epochs: int = 0  # straight-through fine-tuning with the weights on the grid
    lr: float = 1e-4

    def check(self):
        yield from one_of(self.scheme, SCHEMES, "scheme")
        if not 2 <= self.bits <= 8:
            yield "bits", f"must be in [2, 8], got {self.bits}"
        if self.epochs < 0:
            yield "epochs", f"must be >= 0, got {self.epochs}"


def quantize_weight(w: torch.Tensor, scheme: str, bits: int = 4) -> torch.Tensor:
    flat = w.flatten(1)
    mean_abs = flat.abs().mean(1, keepdim=True)
    if scheme == "binary":
        q = torch.where(flat >= 0, 1.0, -1.0) * mean_abs
    elif scheme == "ternary":
        mask = flat.abs() > 0.7 * mean_abs
        alpha = (flat.abs() * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
        q = flat.sign() * mask * alpha
    else:  # log2
        levels = 2 ** (bits - 1) - 1  # non-zero magnitudes
        top = torch.log2(flat.abs().amax(1, keepdim=True).clamp_min(1e-30)).round()
        k = torch.log2(flat.abs().clamp_min(1e-30)).round().clamp(max=top)
        q = torch.where(k > top - levels, flat.sign() * torch.exp2(k), torch.zeros_like(flat))
    return q.reshape_as(w)


class _StraightThrough(nn.Module):
    """Weight parametrization: forward uses the grid, gradients pass to the float weight."""

    def __init__(self, scheme: str, bits: int):
        super().__init__()
        self.scheme, self.bits = scheme, bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (quantize_weight(w, self.scheme, self.bits) - w).detach()


class QuantizeExperimental:
    """Binary, ternary or power-of-two weights (experimental; FP32 engine)."""

    params: QuantizeExperimentalParams
    deterministic = ("cpu",)  # trains: CUDA's backward kernels accumulate with atomics, so bit-exact on CPU only

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        names = [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
        if p.keep_first_last:
            names = names[1:-1]
        chosen = without(names, p.exclude)
        if not chosen:
            raise UserError("no layer left to quantize (keep_first_last and exclude took them all)", key="exclude")
        for name in chosen:
            parametrize.register_parametrization(model.get_submodule(name), "weight", _StraightThrough(p.scheme, p.bits))
        if p.epochs:
            # amp off: the quantization grid is simulated in float32, half precision would blur it
            fit(model, ctx.data.train, p.epochs, lr=p.lr, amp="off", **ctx.training(f"{p.scheme} weights: straight-through fine-tuning"))
        for name in chosen:  # bake the grid values in (exactly: w + (q - w) is not q in floats)
            m = model.get_submodule(name)
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            with torch.no_grad():
                m.weight.copy_(quantize_weight(m.weight, p.scheme, p.bits))
        bits = {"binary": 1.0, "ternary": math.log2(3), "log2": float(p.bits)}[p.scheme]
        ctx.notes.update(quantized_layers=len(chosen), scheme=p.scheme, bits_per_weight=round(bits, 2),
                         float_layers=[n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE) and n not in chosen],
                         engine_note="no runtime kernels for this code: the engine stores float32")
        return model.eval()

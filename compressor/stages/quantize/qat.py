"""Quantization-aware training: calibrate as static INT8 does, then fine-tune through the
fake-quant ops (straight-through gradients), optionally learning the scales too (LSQ). The
result is the same kind of quantized model as `quantize_int8`, exported the same way."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compressor.core.interfaces import Context
from compressor.modules.quant import QuantWrapper
from compressor.stages.quantize.int8 import QuantizeInt8, QuantizeInt8Params
from compressor.training.loop import fit


@dataclass
class QuantizeQATParams(QuantizeInt8Params):
    epochs: int = 3
    lr: float = 2e-4
    learn_scales: bool = True  # LSQ: learn activation and weight scales with the weights

    def check(self):
        yield from super().check()
        if self.epochs < 1:
            yield "epochs", f"must be >= 1, got {self.epochs}"
        if not self.lr > 0:
            yield "lr", f"must be positive, got {self.lr}"


class QuantizeQAT:
    """INT8 quantization-aware training (straight-through, or learned scales as in LSQ)."""

    params: QuantizeQATParams
    deterministic = ("cpu",)  # trains: CUDA's backward kernels accumulate with atomics, so bit-exact on CPU only
    precision = "int8"
    calibrates = True

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        ctx.require_labels("quantize_qat")
        ptq = QuantizeInt8()
        ptq.params = p
        model = ptq.apply(model, ctx)
        ctx.notes["ptq_metric"] = ctx.evaluate(model)
        wrappers = [m for m in model.modules() if isinstance(m, QuantWrapper)]
        if p.learn_scales:
            for w in wrappers:
                w.enable_lsq()
        # amp off: the quantization grid is simulated in float32, half precision would blur it
        result = fit(model, ctx.data.train, p.epochs, lr=p.lr, amp="off", **ctx.training("quantization-aware training"))
        for w in wrappers:
            w.freeze()
        ctx.notes.update(result.notes())
        return model.eval()

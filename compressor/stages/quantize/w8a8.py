"""W8A8 for causal LMs: SmoothQuant-style smoothing, then INT8 weights (one symmetric scale per
output channel) and INT8 activations, computed on integers by ONNX Runtime's MatMulNBits at
accuracy level 4 (compressor/targets/onnx/llm.py).

Smoothing (Xiao et al. 2023): activations of LLMs have a few channels with large values that set
every token's int8 range; s_j = max|x_j|^a / max|w_j|^(1-a) moves that range into the weights
(x / s, w * s, folded into the RMSNorm or Linear that feeds them, so the float model is unchanged),
measured on the calibration windows block by block (stages/blockwise.py).
Activations are rounded per token and per block of input features (the block MatMulNBits
quantizes them in, see compressor.modules.quant.quantize_activation_blocks): the PyTorch model
computes what the engine computes, and a block finer than a whole row keeps outliers local."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from compressor.core.interfaces import Context
from compressor.modules.quant import WeightOnly
from compressor.stages import blockwise as bw
from compressor.stages.quantize.awq import fold_scale
from compressor.stages.quantize.groups import export_block, fitted_group


@dataclass
class QuantizeW8A8Params:
    alpha: float = 0.5  # migration strength: 0 leaves activations as they are, 1 moves all their range to weights
    smooth: bool = True
    head_bits: Optional[int] = 8  # lm_head (and its tied embedding): weight-only 4 or 8 bits, activations float; null: float
    calibration_windows: Optional[int] = None

    def check(self):
        if not 0 <= self.alpha <= 1:
            yield "alpha", f"must be in [0, 1], got {self.alpha}"
        if self.head_bits not in (None, 4, 8):
            yield "head_bits", f"must be 4, 8 or null, got {self.head_bits}"


class QuantizeW8A8:
    """SmoothQuant smoothing + INT8 weights and per-block dynamic INT8 activations."""

    params: QuantizeW8A8Params
    precision = "int8_w8a8"

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        lm = bw.require_lm(model, "quantize_w8a8")
        scales = {}
        if p.smooth:
            ids = bw.calibration_ids(ctx, p.calibration_windows)
            for i, block, inputs, kwargs in bw.each_block(lm, ids, ctx.progress, "smoothing"):
                stats = bw.statistics(block, inputs, kwargs)
                for prev_name, layer_names in bw.SCALABLE:
                    prev = block.get_submodule(prev_name)
                    layers = [bw.linear_of(block, n) for n in layer_names]
                    if getattr(prev, "out_features", layers[0].in_features) != layers[0].in_features:
                        continue  # v_proj -> o_proj under GQA
                    x_max = stats[layer_names[0]].abs_max.float().clamp_min(1e-5)
                    w_max = torch.stack([lin.weight.abs().amax(0) for lin in layers]).amax(0).float().clamp_min(1e-5)
                    s = (x_max ** p.alpha / w_max ** (1 - p.alpha)).clamp_min(1e-5)
                    fold_scale(prev, layers, s.to(layers[0].weight.dtype))
                    scales[f"{i}.{prev_name}"] = round(float(s.max() / s.min()), 2)
        count = 0
        for name, m in list(lm.named_modules()):
            if type(m) is not nn.Linear:
                continue
            head = name.endswith("lm_head")
            if head and not p.head_bits:
                continue
            w = WeightOnly(m, p.head_bits if head else 8, fitted_group(m.in_features, 0), symmetric=True)
            w.quantize()
            w.act_block = 0 if head else export_block(m.in_features, w.group_size)
            lm.set_submodule(name, w)
            count += 1
        ctx.notes.update(quantized_layers=count, alpha=p.alpha, smoothed_groups=len(scales),
                         largest_scale_spread=max(scales.values(), default=None), head_bits=p.head_bits)
        return model.eval()

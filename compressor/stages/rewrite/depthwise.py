"""Depthwise-separable rewrite: a standard Conv2d (groups 1, kernel > 1) becomes a depthwise
Conv2d (one k x k kernel per input channel) then a 1x1 pointwise Conv2d, as in MobileNet; per
output position in*k*k + in*out MACs instead of in*k*k*out.

The pair starts from the original weights, not at random: for input channel c, the slice
W[:, c] (out x k*k) is split by its best rank-1 approximation s * u v^T (SVD), giving the
depthwise kernel sqrt(s) v and the pointwise column sqrt(s) u. The pair is then exactly the
conv whose every input channel's slice has rank 1, the closest such conv to the original;
distillation recovers the rest."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from compressor.errors import UserError
from compressor.modules.factorized import Factorized
from compressor.core.interfaces import Context
from compressor.stages.train.distill import DistillSettings
from compressor.training.settings import TrainSettings
from compressor.core.params import flat
from compressor.stages.rewrite.common import LayerChoice, choose, macs_notes, recover, swap_if_cheaper, teacher_copy, with_inputs


@dataclass
class DepthwiseParams:
    # training is the distillation that recovers after the rewrite: epochs 0 means the rewrite alone
    train: TrainSettings = flat(TrainSettings, epochs=3)
    distill: DistillSettings = flat(DistillSettings)
    choice: LayerChoice = flat(LayerChoice)
    # The first conv stays standard: it sees few input channels (1 for digits, 3 for RGB), so its
    # rank-1 slices would tie all its filters together for a small saving (MobileNet keeps it too).
    keep_first: bool = True


def eligible(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.groups == 1 and math.prod(m.kernel_size) > 1


def depthwise_pair(conv: nn.Conv2d) -> tuple[Factorized, float]:
    """The pair, and the relative error ||W - W_pair|| / ||W|| of the weight it stands for."""
    w = conv.weight.detach().float()  # float32: no half SVD on CPU
    out, cin, kh, kw = w.shape
    slices = w.transpose(0, 1).reshape(cin, out, kh * kw)  # one out x k*k matrix per input channel
    u, s, vh = torch.linalg.svd(slices, full_matrices=False)
    root = s[:, :1].sqrt()  # (cin, 1)
    kernels = root * vh[:, 0]  # (cin, k*k)
    columns = root * u[:, :, 0]  # (cin, out)
    approx = (columns[:, :, None] * kernels[:, None, :]).reshape(cin, out, kh, kw).transpose(0, 1)
    error = float((w - approx).norm() / w.norm().clamp_min(1e-30))
    dw = nn.Conv2d(cin, cin, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=cin, bias=False,
                   padding_mode=conv.padding_mode)
    pw = nn.Conv2d(cin, out, 1, bias=conv.bias is not None)
    with torch.no_grad():
        dw.weight.copy_(kernels.reshape(cin, 1, kh, kw))
        pw.weight.copy_(columns.T.reshape(out, cin, 1, 1))
        if conv.bias is not None:
            pw.bias.copy_(conv.bias)
    return Factorized(dw, pw).to(conv.weight.device, conv.weight.dtype), error


class Depthwise:
    """Standard convs rewritten as depthwise + pointwise pairs (initialised by SVD), then distillation."""

    params: DepthwiseParams
    deterministic = ("cpu",)  # trains: CUDA's backward kernels accumulate with atomics, so bit-exact on CPU only

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        original = teacher_copy(model, p.distill, p.train)
        first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
        layers = [(n, m) for n, m in choose(model, eligible, p.choice) if not (p.keep_first and n == first)]
        errors, macs, skipped = {}, {}, {}
        for name, layer, x in with_inputs(model, layers, ctx.example_input):
            pair, error = depthwise_pair(layer)
            if swap_if_cheaper(model, name, layer, pair, x, macs):
                errors[name] = round(error, 4)
            else:
                skipped[name] = "saves no MACs"
        if not errors:
            raise UserError("no standard conv with kernel > 1 gets cheaper as a depthwise pair"
                            + (" (the first conv is kept: keep_first)" if p.keep_first else ""), key="layers")
        ctx.notes.update(replaced=list(errors), weight_error=errors, skipped=skipped, **macs_notes(macs))
        recover(model, original, p.distill, p.train, ctx, description="depthwise: distill")
        return model.eval()

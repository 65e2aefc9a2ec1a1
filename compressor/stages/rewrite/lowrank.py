"""Low-rank factorisation by truncated SVD: a Linear or Conv2d weight W (out x in*k*k) becomes
U_r sqrt(S_r) . sqrt(S_r) V_r^T, run as two layers: Linear(in, r) then Linear(r, out), or
Conv2d(in, r, k) then a 1x1 Conv2d(r, out). The rank is fixed (`rank`) or the smallest that keeps
`energy` of the squared spectrum. A layer is rewritten only where the pair takes fewer MACs
(r * (in*k*k + out) < in*k*k * out); distillation then recovers what the truncation lost.

Why by hand: torch.linalg.svd does the factorising, and the pair is two standard layers. Libraries
that factorise layers (TensorLy-Torch, last release 2024) bring their own layer types, which
checkpoints here could not rebuild from the fixed table and ONNX would not see as plain Conv/Gemm."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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
class LowRankParams:
    # training is the distillation that recovers after the rewrite: epochs 0 means the rewrite alone
    train: TrainSettings = flat(TrainSettings, epochs=3)
    distill: DistillSettings = flat(DistillSettings)
    choice: LayerChoice = flat(LayerChoice)
    rank: Optional[int] = None  # the same rank for every layer (capped at its full rank); wins over energy
    energy: float = 0.9  # else: the smallest rank keeping this fraction of the sum of squared singular values

    def check(self):
        if self.rank is not None and self.rank < 1:
            yield "rank", f"must be >= 1, got {self.rank}"
        if not 0 < self.energy <= 1:
            yield "energy", f"must be in (0, 1], got {self.energy}"


def eligible(m: nn.Module) -> bool:
    # exact types: subclasses such as MultiheadAttention's out_proj are read directly by their owner
    return type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1)


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """Smallest r whose top r singular values keep `energy` of sum(s^2)."""
    kept = (s ** 2).cumsum(0) / (s ** 2).sum().clamp_min(1e-30)
    return min(int((kept < energy - 1e-6).sum()) + 1, len(s))  # 1e-6: energy 1.0 despite rounding


def lowrank_pair(layer: nn.Linear | nn.Conv2d, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> Factorized:
    """The two layers of W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T): the square root splits the scale
    evenly, so neither layer's weights grow large (friendlier to later training and INT8)."""
    root = s[:rank].sqrt()
    first_w, second_w = root[:, None] * vh[:rank], u[:, :rank] * root
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias=bias)
    else:
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                          bias=False, padding_mode=layer.padding_mode)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=bias)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
        if bias:
            second.bias.copy_(layer.bias)
    return Factorized(first, second).to(layer.weight.device, layer.weight.dtype)


def svd(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linalg.svd(layer.weight.detach().float().flatten(1), full_matrices=False)  # float32: no half SVD on CPU


class LowRank:
    """Truncated-SVD factorisation of Linear/Conv2d layers into two thinner ones, then distillation."""

    params: LowRankParams
    deterministic = ("cpu",)  # trains: CUDA's backward kernels accumulate with atomics, so bit-exact on CPU only

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        original = teacher_copy(model, p.distill, p.train)
        layers = choose(model, eligible, p.choice)
        ranks, energy, macs, skipped = {}, {}, {}, {}
        for name, layer, x in with_inputs(model, layers, ctx.example_input):
            u, s, vh = svd(layer)
            r = min(p.rank, len(s)) if p.rank else energy_rank(s, p.energy)
            if swap_if_cheaper(model, name, layer, lowrank_pair(layer, u, s, vh, r), x, macs):
                ranks[name] = r
                energy[name] = round(float((s[:r] ** 2).sum() / (s ** 2).sum().clamp_min(1e-30)), 4)
            else:
                skipped[name] = f"rank {r} of {len(s)} saves no MACs"
        if not ranks:
            what = f"rank {p.rank}" if p.rank else f"energy {p.energy}"
            raise UserError(f"at {what} no layer gets cheaper as a low-rank pair; lower it", key="rank" if p.rank else "energy")
        ctx.notes.update(ranks=ranks, energy_kept=energy, skipped=skipped, **macs_notes(macs))
        recover(model, original, p.distill, p.train, ctx, description="lowrank: distill")
        return model.eval()

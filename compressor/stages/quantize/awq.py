"""AWQ-style activation-aware scaling (Lin et al. 2023) and clipping search.

Input channels that carry large activations matter most; scaling them up by s before rounding
(and the input down by s, folded into the RMSNorm or Linear that feeds them, so the float model is
unchanged) gives them finer steps. Per group of Linears that share an input, s = mean|x|^a for the
a in [0, 1) that best keeps the layers' outputs on calibration tokens. Then, per output row and
group, the range is clipped to the ratio in [0.5, 1] that best keeps the output (the auto-clip of
the reference implementation), skipped for q/k as there. Losses are on the Linears' outputs."""
from __future__ import annotations

import torch
from torch import nn

from compressor.modules.quant import fake_quantize, group_grid

GRID = 20
CLIPS = torch.linspace(1.0, 0.5, 11).tolist()


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    return w.reshape(w.shape[0], -1, group_size)


def rtn(w: torch.Tensor, bits: int, group_size: int, symmetric: bool, clip=1.0) -> torch.Tensor:
    g = _grouped(w, group_size)
    scale, zp = group_grid(g, bits, symmetric, clip)
    return fake_quantize(g, scale, zp, bits).reshape(w.shape)


def search_scale(x: torch.Tensor, x_mean: torch.Tensor, weights: list[torch.Tensor], bits: int, groups: list[int],
                 symmetric: bool) -> tuple[torch.Tensor, float]:
    """The per-input-channel scale (and its exponent) whose rounding keeps the outputs x @ w^T best."""
    refs = [x @ w.T for w in weights]
    best, best_s, best_a = float("inf"), torch.ones_like(x_mean), 0.0
    for a in [i / GRID for i in range(GRID)]:
        s = x_mean.clamp_min(1e-4) ** a
        s = s / (s.max() * s.min()).sqrt()
        loss = sum(float(((x @ (rtn(w * s, bits, g, symmetric) / s).T - r) ** 2).mean())
                   for w, r, g in zip(weights, refs, groups))
        if loss < best:
            best, best_s, best_a = loss, s, a
    return best_s, best_a


def search_clip(x: torch.Tensor, w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """Per (output row, group) clip ratio minimising the group's share of the output error."""
    xg = x.reshape(len(x), -1, group_size)  # (tokens, groups, group_size)
    wg = _grouped(w, group_size)
    best_err = torch.full(wg.shape[:2], float("inf"))
    best = torch.ones(wg.shape[:2])
    for c in CLIPS:
        scale, zp = group_grid(wg, bits, symmetric, c)
        d = wg - fake_quantize(wg, scale, zp, bits)
        err = (torch.einsum("ngj,ogj->nog", xg, d) ** 2).mean(0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, c), best)
    return best


@torch.no_grad()
def fold_scale(prev: nn.Module, layers: list[nn.Linear], s: torch.Tensor) -> None:
    """x -> x / s in what feeds the layers (an RMSNorm's weight or a Linear's output rows), w -> w * s
    in the layers: the float model computes the same function."""
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s.unsqueeze(1))
        if prev.bias is not None:
            prev.bias.div_(s)
    else:
        prev.weight.div_(s)
    for lin in layers:
        lin.weight.mul_(s.unsqueeze(0))

"""Groups of input features sharing one grid, fitted to a layer's width, and the Linear ->
WeightOnly swap every weight-only method ends with (shared by weight_only, calibrated, autoround,
w8a8)."""
from __future__ import annotations

import torch
from torch import nn

from compressor.modules.quant import WeightOnly, group_grid

GROUP_SIZES = (0, 16, 32, 64, 128, 256)  # 0: per channel; the rest are MatMulNBits block sizes


def fitted_group(width: int, group_size: int) -> int:
    """The group a layer of this input width gets: group_size, halved until it divides the width
    (down to 16); the whole width per channel (0) or where nothing divides it."""
    g = group_size
    while g >= 16 and width % g:
        g //= 2
    return g if g >= 16 and group_size else width


def export_block(width: int, group_size: int) -> int:
    """The MatMulNBits block a layer's groups are written in: the group itself where it is a valid
    block size, else (one grid per channel, or a width no block divides evenly) the largest valid
    block that divides the width, its scale repeated per block: the same numbers."""
    if group_size in GROUP_SIZES[1:]:
        return group_size
    return next((b for b in (256, 128, 64, 32, 16) if width % b == 0 and b <= group_size), 16)


def to_weight_only(parent: nn.Module, name: str, ints: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor,
                   bits: int, symmetric: bool) -> None:
    """Replace a Linear by a WeightOnly holding integers an algorithm chose."""
    lin = parent.get_submodule(name)
    w = WeightOnly(lin, bits, ints.shape[-1], symmetric)
    w.assign(ints, scale, zp)
    parent.set_submodule(name, w)


def rtn_integers(w: torch.Tensor, bits: int, group_size: int, symmetric: bool, clip=1.0):
    g = w.float().reshape(w.shape[0], -1, group_size)
    scale, zp = group_grid(g, bits, symmetric, clip)
    ints = (g / scale.unsqueeze(-1) + zp.unsqueeze(-1)).round().clamp(0, 2 ** bits - 1)
    return ints, scale, zp

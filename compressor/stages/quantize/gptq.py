"""GPTQ (Frantar et al. 2022): quantize a Linear's weight column by column, each column's rounding
error spread over the columns not yet quantized through the inverse Hessian of the layer's
inputs (H = X^T X), so the layer's output on the calibration data moves as little as possible.

Ours follows the reference implementation (blocks of 128 columns, lazy batch updates, Cholesky of
the damped inverse) with two choices that keep the result an ordinary group-wise grid that
MatMulNBits runs: groups are contiguous input features (as without act-order), and with
act-order (columns taken by decreasing H diagonal, which matters most at 4 bits) each group's
grid is fixed from the original weights before any update ("static groups", as AutoGPTQ), so no
permutation index has to travel to the engine."""
from __future__ import annotations

import torch

from compressor.modules.quant import group_grid


def gptq(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, symmetric: bool, damp: float = 0.01,
         act_order: bool = True, block: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integers (out, groups, group_size), scales and zero points (out, groups) for weight w (out, in)
    given H (in, in)."""
    w = w.clone().float()
    h = h.clone().float()
    out_f, k = w.shape
    groups = k // group_size
    dead = torch.diag(h) == 0  # inputs that were always zero: their weights do not matter
    h[dead, dead] = 1
    w[:, dead] = 0
    if not act_order:  # dynamic groups: a group's grid is fitted when its first column comes up
        scale = torch.zeros(out_f, groups)
        zp = torch.zeros(out_f, groups)
    else:
        scale, zp = group_grid(w.reshape(out_f, groups, group_size), bits, symmetric)
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    top = 2 ** bits - 1
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros(out_f, i2 - i1), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            g = col // group_size
            if not act_order and col % group_size == 0:
                span = torch.cat([w1[:, i:], w[:, i2:]], 1)[:, :group_size]
                scale[:, g], zp[:, g] = group_grid(span, bits, symmetric)
            s, z = scale[:, g], zp[:, g]
            qi = ((w1[:, i] / s + z).round().clamp(0, top) - z) * s
            q[:, i1 + i] = qi
            e = (w1[:, i] - qi) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    q = q[:, torch.argsort(perm)].reshape(out_f, groups, group_size)
    ints = (q / scale.unsqueeze(2) + zp.unsqueeze(2)).round().clamp(0, top)
    return ints, scale, zp

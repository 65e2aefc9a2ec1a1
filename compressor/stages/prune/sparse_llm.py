"""Unstructured or N:M sparsity for causal LMs, chosen with calibration data, block by block
(stages/blockwise.py), in every Linear of the decoder blocks (embeddings and lm_head stay dense).

- `sparsegpt` (Frantar & Alistarh 2023): prunes column by column, the weights with the smallest
  w^2 / [H^-1]_jj, and updates the columns not yet visited to make up for each removed weight
  through the inverse Hessian of the layer's inputs (as GPTQ does for rounding errors).
- `wanda` (Sun et al. 2023): removes, in each output row, the weights with the smallest
  |w_ij| * ||x_j||_2; no update.
- `magnitude`: the smallest |w| of each layer (the baseline both improve on).
`pattern: "2:4"` keeps 2 of every 4 consecutive input weights (sparse tensor cores); otherwise
`sparsity` of each layer's weights. CPU runtimes run the zeros dense: this buys size after
compression and GPU speed, not CPU speed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from compressor.core.interfaces import Context
from compressor.core.params import one_of
from compressor.stages import blockwise as bw

METHODS = ("sparsegpt", "wanda", "magnitude")


@dataclass
class PruneSparseParams:
    method: str = "sparsegpt"  # sparsegpt | wanda | magnitude
    sparsity: float = 0.5  # share of each layer's weights set to zero (ignored with a pattern)
    pattern: Optional[str] = None  # "N:M", e.g. "2:4": N of every M consecutive input weights kept
    damp: float = 0.01  # sparsegpt: added to the Hessian's diagonal, as a share of its mean
    calibration_windows: Optional[int] = None

    def check(self):
        yield from one_of(self.method, METHODS, "method")
        if not 0 < self.sparsity < 1:
            yield "sparsity", f"must be in (0, 1), got {self.sparsity}"
        if self.pattern is not None:
            n, _, m = str(self.pattern).partition(":")
            if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
                yield "pattern", f"must be 'N:M' with 0 < N < M, e.g. '2:4', got {self.pattern}"

    @property
    def nm(self) -> tuple[int, int] | None:
        if self.pattern is None:
            return None
        n, _, m = self.pattern.partition(":")
        return int(n), int(m)


def sparsegpt(w: torch.Tensor, h: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, damp: float,
              block: int = 128) -> torch.Tensor:
    w = w.clone().float()
    h = h.clone().float()
    rows, k = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros(rows, i2 - i1), hinv[i1:i2, i1:i2]
        score = w1 ** 2 / torch.diag(hinv1).reshape(1, -1) ** 2
        if nm is None:  # the block's weakest share, over all rows together (adaptive mask selection)
            mask = score <= torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
        else:
            mask = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                s = score[:, i: i + nm[1]]
                mask.scatter_(1, i + torch.topk(s, nm[1] - nm[0], dim=1, largest=False)[1], True)
            q = w1[:, i].clone()
            q[mask[:, i]] = 0
            e = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def lowest(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, per_row: bool) -> torch.Tensor:
    """Mask of the weights to remove: the lowest scores per row, per layer, or per N:M group."""
    if nm is not None:
        g = score.reshape(score.shape[0], -1, nm[1])
        idx = torch.topk(g, nm[1] - nm[0], dim=2, largest=False)[1]
        return torch.zeros_like(g, dtype=torch.bool).scatter_(2, idx, True).reshape(score.shape)
    if per_row:
        idx = torch.topk(score, int(score.shape[1] * sparsity), dim=1, largest=False)[1]
        return torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
    return score <= torch.kthvalue(score.flatten(), max(1, int(score.numel() * sparsity)))[0]


class PruneSparse:
    """50% unstructured or 2:4 sparsity of a causal LM by SparseGPT, Wanda or magnitude."""

    params: PruneSparseParams

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        lm = bw.require_lm(model, "prune_sparse")
        if p.method == "magnitude":
            for block in bw.decoder_layers(lm):
                for n in bw.LINEARS:
                    lin = bw.linear_of(block, n)
                    lin.weight[lowest(lin.weight.abs().float(), p.sparsity, p.nm, per_row=False)] = 0
        else:
            ids = bw.calibration_ids(ctx, p.calibration_windows)
            for _, block, inputs, kwargs in bw.each_block(lm, ids, ctx.progress, p.method):
                stats = bw.statistics(block, inputs, kwargs)
                for n in bw.LINEARS:
                    lin = bw.linear_of(block, n)
                    if p.method == "wanda":
                        score = lin.weight.abs().float() * stats[n].sq_sum.float().sqrt().unsqueeze(0)
                        lin.weight[lowest(score, p.sparsity, p.nm, per_row=True)] = 0
                    else:
                        lin.weight.copy_(sparsegpt(lin.weight, stats[n].matrix, p.sparsity, p.nm, p.damp))
        zeros = total = 0
        for block in bw.decoder_layers(lm):
            for n in bw.LINEARS:
                w = bw.linear_of(block, n).weight
                zeros, total = zeros + int((w == 0).sum()), total + w.numel()
        ctx.notes.update(method=p.method, pattern=p.pattern, block_sparsity=round(zeros / total, 4))
        return model.eval()

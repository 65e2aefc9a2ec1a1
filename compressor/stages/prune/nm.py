"""N:M semi-structured sparsity (2:4 by default): in every group of M consecutive weights along
a layer's input dimension, only the N largest by magnitude stay; masks are made permanent.

Why the mask is computed here: torch.sparse.to_sparse_semi_structured only packs a weight that
already is 2:4 (and only on CUDA), and torch.ao.pruning's WeightNormSparsifier groups along a
2-D weight's last dim, so it cannot group a conv's input channels. The mask is one top-k on a
reshaped weight; torch.nn.utils.prune applies it and makes it permanent, as in prune_magnitude.
For convolutions the groups run along input channels at each kernel position, the layout
sparse tensor cores (cuSPARSELt, TensorRT) read."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune

from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.stages.select import without
from compressor.stages.prune.magnitude import PRUNABLE

RUNTIME_NOTE = ("N:M zeros make no CPU runtime faster (ONNX Runtime and OpenVINO CPU run the weights dense); "
                "only GPUs with sparse tensor cores (NVIDIA Ampere and later, via TensorRT or "
                "torch.sparse.to_sparse_semi_structured) gain speed, and only for 2:4.")


@dataclass
class PruneNMParams:
    n: int = 2  # weights kept in each group
    m: int = 4  # group size: consecutive weights along the input dimension
    exclude: list[str] = field(default_factory=list)  # module-name patterns (fnmatch) left dense

    def check(self):
        if self.m < 2:
            yield "m", f"must be >= 2, got {self.m}"
        if not 1 <= self.n < max(self.m, 2):
            yield "n", f"must be in [1, m) (m = {self.m}), got {self.n}"


def input_dim(layer: nn.Module) -> int:
    """Weights per output unit along the input: in_features, or input channels per group."""
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels // layer.groups


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True for the n largest |w| in each group of m consecutive input-dimension weights."""
    w = weight.detach().abs().movedim(1, -1)  # (out, in, *kernel) -> (out, *kernel, in)
    groups = w.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.reshape(w.shape).movedim(-1, 1)


def follows_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of m input-dimension weights holds at most n non-zeros."""
    groups = (weight.detach() != 0).movedim(1, -1).reshape(-1, m)
    return bool((groups.sum(1) <= n).all())


class PruneNM:
    """N:M semi-structured sparsity (2:4 by default) for GPU sparse tensor cores, masks permanent."""

    params: PruneNMParams

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        modules = dict(model.named_modules())
        kept = without([n for n, m in modules.items() if isinstance(m, PRUNABLE)], p.exclude)
        layers = [(name, modules[name]) for name in kept]
        skipped = {name: f"input dim {input_dim(mod)} is not a multiple of {p.m}"
                   for name, mod in layers if input_dim(mod) % p.m}
        layers = [(name, mod) for name, mod in layers if name not in skipped]
        if not layers:
            raise UserError(f"no layer can take {p.n}:{p.m} sparsity (excluded, or input dims not multiples of {p.m})")
        for _, mod in layers:
            prune.custom_from_mask(mod, "weight", nm_mask(mod.weight, p.n, p.m))
            prune.remove(mod, "weight")
        ctx.notes.update(
            pattern=f"{p.n}:{p.m}",
            layer_sparsity={name: round(float((mod.weight == 0).float().mean()), 4) for name, mod in layers},
            skipped=skipped,
            runtime=RUNTIME_NOTE,
        )
        return model

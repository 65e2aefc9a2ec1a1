"""Unstructured magnitude pruning with torch.nn.utils.prune; masks are made permanent.

Zeros alone do not shrink a dense engine or make it faster: this stage is for
sparse-aware runtimes, compressed storage, or as a step before structured pruning."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils import prune

from compressor.stages.select import without
from compressor.core.interfaces import Context
from compressor.core.params import one_of

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class PruneMagnitudeParams:
    ratio: float = 0.5  # fraction of weights set to zero
    scope: str = "global"  # global: one threshold across layers; layer: the same ratio in each
    norm: str = "l1"  # l1 (|w|) or l2: ranks single weights, identical for unstructured pruning
    exclude: list[str] = field(default_factory=list)  # module-name patterns (fnmatch) left dense

    def check(self):
        if not 0 <= self.ratio < 1:
            yield "ratio", f"must be in [0, 1), got {self.ratio}"
        yield from one_of(self.scope, ("global", "layer"), "scope")
        yield from one_of(self.norm, ("l1", "l2"), "norm")


class PruneMagnitude:
    """Unstructured magnitude pruning (global or per layer), masks made permanent."""

    params: PruneMagnitudeParams

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        modules = dict(model.named_modules())
        kept = without([n for n, m in modules.items() if isinstance(m, PRUNABLE)], p.exclude)
        layers = [(n, modules[n]) for n in kept]
        if p.scope == "global":
            prune.global_unstructured([(m, "weight") for _, m in layers], prune.L1Unstructured, amount=p.ratio)
        else:
            for _, m in layers:
                prune.l1_unstructured(m, "weight", amount=p.ratio)
        for _, m in layers:
            prune.remove(m, "weight")
        ctx.notes["layer_sparsity"] = {n: round(float((m.weight == 0).float().mean()), 4) for n, m in layers}
        return model

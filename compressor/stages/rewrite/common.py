"""Shared by the stages that rewrite single layers as Factorized pairs (lowrank, depthwise):
their settings, which layers they may touch, the swap (kept only where it cuts MACs), and the
recovery by distillation."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from compressor.errors import UserError
from compressor.modules.factorized import Factorized
from compressor.core.interfaces import Context
from compressor.measure.stats import count_macs
from compressor.modules.quant import QuantWrapper, WeightOnly, as_input
from compressor.stages.select import only, without
from compressor.stages.train.distill import DistillSettings, distill, teacher_for
from compressor.training.settings import TrainSettings


@dataclass
class LayerChoice:
    """Which layers a rewrite touches, by module-name pattern (fnmatch)."""

    layers: list[str] = field(default_factory=list)  # patterns of the layers to rewrite; empty: every eligible one
    ignore: list[str] = field(default_factory=list)  # patterns of layers left as they are


def choose(model: nn.Module, eligible: Callable[[nn.Module], bool], p: LayerChoice) -> list[tuple[str, nn.Module]]:
    """The eligible layers that `layers` picks (all when empty), minus `ignore`."""
    if any(isinstance(m, (QuantWrapper, WeightOnly)) for m in model.modules()):
        raise UserError("rewrites float layers: put this stage before the quantize stages")
    names, inside = [], ()
    for name, m in model.named_modules():
        if inside and name.startswith(inside):  # already rewritten: leave the pair alone
            continue
        if isinstance(m, Factorized):
            inside += (name + ".",)
        elif eligible(m):
            names.append(name)
    if p.layers:
        names = only(names, p.layers, key="layers")
    names = without(names, p.ignore, key="ignore")
    modules = dict(model.named_modules())
    return [(n, modules[n]) for n in names]


def with_inputs(model: nn.Module, layers: list[tuple[str, nn.Module]],
                example: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """Each layer with its batch-1 input from one forward pass (a layer's MACs depend on it);
    layers the forward never runs are left out: there is nothing to save in them."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args):  # a pre-hook returning None leaves the forward as it is
            seen.setdefault(name, args[0].detach())
        return hook

    hooks = [layer.register_forward_pre_hook(keep(name)) for name, layer in layers]
    try:
        with torch.no_grad():
            model.eval()(as_input(model, example[:1]))
    finally:
        for h in hooks:
            h.remove()
    return [(name, layer, seen[name]) for name, layer in layers if name in seen]


def swap_if_cheaper(model: nn.Module, name: str, layer: nn.Module, pair: Factorized, x: torch.Tensor,
                    macs: dict[str, list[int]]) -> bool:
    """Put `pair` in place of `layer` only if it takes fewer MACs on the layer's real input."""
    before, after = count_macs(layer, x), count_macs(pair, x)
    if after >= before:
        return False
    model.set_submodule(name, pair)
    macs[name] = [before, after]
    return True


def macs_notes(macs: dict[str, list[int]]) -> dict:
    before, after = sum(b for b, _ in macs.values()), sum(a for _, a in macs.values())
    return {"layer_macs": macs, "factorized_macs_before": before, "factorized_macs_after": after,
            "factorized_macs_ratio": round(after / max(before, 1), 4)}


def recover(model: nn.Module, original: nn.Module | None, p: DistillSettings, train: TrainSettings, ctx: Context,
            description: str) -> None:
    """Distil the rewritten model towards the teacher: by default the model as it was before
    the rewrite (what the new pairs must reproduce, also after earlier stages changed it)."""
    if train.epochs == 0:
        return
    ctx.notes["metric_before_recovery"] = ctx.evaluate(model)
    teacher = original if p.teacher is None else teacher_for(p, ctx)
    torch.manual_seed(ctx.seed)
    ctx.notes.update(distill(model, teacher, p, train, ctx, description=description).notes())


def teacher_copy(model: nn.Module, p: DistillSettings, train: TrainSettings) -> nn.Module | None:
    """The model before the rewrite, kept only when it will teach."""
    return copy.deepcopy(model).eval() if train.epochs and p.teacher is None else None

"""Per-layer pruning sensitivity: each prunable layer alone loses a fraction of its output
channels (the lowest-L2 ones, with everything Torch-Pruning's dependency graph couples to them),
on a copy, and the validation metric is measured. The model passes through unchanged.

With `target_macs_reduction` the stage also picks per-layer ratios reaching that MACs cut with
the least metric damage, and leaves them in ctx.handoff.layer_ratios for a later
`prune_structured` with `ratios_from_sensitivity=true`."""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from compressor.measure import stats as measure
from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.stages.prune.structured import classifier_heads

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class SensitivityParams:
    ratios: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7])  # channel fractions tried per layer
    exclude: list[str] = field(default_factory=list)  # module-name patterns (fnmatch) not scanned, left unpruned
    target_macs_reduction: Optional[float] = None  # e.g. 0.5: pick per-layer ratios that remove half the MACs

    def check(self):
        if not self.ratios:
            yield "ratios", "must name at least one ratio"
        for r in self.ratios:
            if not 0 < r < 1:
                yield "ratios", f"each must be in (0, 1), got {r}"
        if self.target_macs_reduction is not None and not 0 < self.target_macs_reduction < 1:
            yield "target_macs_reduction", f"must be in (0, 1), got {self.target_macs_reduction}"


def pruned_copy(model: nn.Module, example: torch.Tensor, ratios: dict[str, float]) -> nn.Module:
    """A copy of `model` where each named layer lost `ratio` of its output channels, the lowest-L2
    ones, together with the layers coupled to them. Counts round as Torch-Pruning's pruner does."""
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    for name, ratio in ratios.items():
        layer = model.get_submodule(name)
        channels = layer.weight.shape[0]
        n = min(channels - int(channels * (1 - ratio)), channels - 1)
        if n <= 0:
            continue
        idxs = layer.weight.detach().flatten(1).norm(dim=1).argsort()[:n].tolist()
        fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
        group = dg.get_pruning_group(layer, fn, idxs=idxs)
        if dg.check_pruning_group(group):  # False where a coupled layer would lose every channel
            group.prune()
    return model


def ratios_for_target(scan: dict[str, dict[float, float]], baseline: float, target: float,
                      macs_saved: dict[str, dict[float, float]]) -> dict[str, float]:
    """Per-layer ratios whose MACs savings add up to `target` (a fraction of the model's MACs)
    with the least metric damage. Greedy: each step raises the one layer whose larger ratio costs
    the least metric drop per MAC saved. Savings are measured per layer alone, so their sum is an
    estimate (two pruned neighbours share the MACs between them)."""
    chosen = {layer: 0.0 for layer in scan}
    drop = lambda layer, r: max(0.0, baseline - scan[layer][r]) if r else 0.0  # noqa: E731
    saved = lambda layer, r: macs_saved[layer][r] if r else 0.0  # noqa: E731
    total = 0.0
    while total < target:
        moves = [((drop(layer, r) - drop(layer, now)) / (saved(layer, r) - saved(layer, now)), layer, r)
                 for layer, now in chosen.items() for r in scan[layer]
                 if r > now and saved(layer, r) > saved(layer, now)]
        if not moves:
            raise UserError(f"a MACs reduction of {target:.3f} is out of reach: pruning every scanned layer at "
                            f"its largest ratio saves about {total:.3f}", key="target_macs_reduction")
        _, layer, r = min(moves)
        total += saved(layer, r) - saved(layer, chosen[layer])
        chosen[layer] = r
    for layer, now in chosen.items():  # the last move may overshoot: lower ratios the target can spare
        for r in sorted([0.0, *scan[layer]]):
            if r < now and total - saved(layer, now) + saved(layer, r) >= target and drop(layer, r) <= drop(layer, now):
                total += saved(layer, r) - saved(layer, now)
                chosen[layer] = r
                break
    return chosen


class Sensitivity:
    """Per-layer sensitivity scan (metric vs. channel-pruning ratio); picks ratios for a MACs target."""

    params: SensitivityParams

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        if not ctx.data.labelled:
            raise UserError("the data has no labels to measure a metric with")
        model.eval()
        layers = [n for n, m in model.named_modules() if isinstance(m, LAYERS)]
        for pattern in p.exclude:
            if not any(fnmatch.fnmatch(n, pattern) for n in layers):
                raise UserError(f"pattern '{pattern}' matches no prunable layer", key="exclude")
        heads = classifier_heads(model, ctx.data.num_classes)
        excluded = [n for n in layers if any(fnmatch.fnmatch(n, pat) for pat in p.exclude)]
        scanned = [n for n in layers if n not in excluded and model.get_submodule(n) not in heads]
        if not scanned:
            raise UserError("no layer left to scan (all excluded, or only the classifier head)", key="exclude")
        example = ctx.example_input
        macs = measure.count_macs(model, example)
        baseline = next(iter(ctx.evaluate(model).values()))
        scan: dict[str, dict[float, float]] = {}
        saved: dict[str, dict[float, float]] = {}
        for name in scanned:
            scan[name], saved[name] = {}, {}
            for r in sorted(p.ratios):
                try:
                    pruned = pruned_copy(model, example, {name: r})
                except Exception as e:  # Torch-Pruning raises many types for graphs it cannot handle
                    raise UserError(f"layer {name} cannot be pruned structurally: {type(e).__name__}: "
                                    f"{(str(e).splitlines() or [''])[0][:200]}") from e
                scan[name][r] = next(iter(ctx.evaluate(pruned).values()))
                saved[name][r] = 1 - measure.count_macs(pruned, example) / macs
        ctx.notes.update(baseline=baseline, sensitivity=scan,
                         macs_saved={n: {r: round(s, 4) for r, s in v.items()} for n, v in saved.items()})
        if p.target_macs_reduction is not None:
            ratios, reached = self._for_target(model, example, macs, scan, baseline, saved)
            ratios.update({n: 0.0 for n in excluded})
            ctx.handoff.layer_ratios = ratios
            ctx.notes.update(layer_ratios=ratios, macs_reduction=round(reached, 4))
        return model

    def _for_target(self, model, example, macs, scan, baseline, saved) -> tuple[dict[str, float], float]:
        """The summed per-layer savings overestimate the real cut a little: measure the real one
        and ask again for the shortfall, a few times."""
        target = goal = self.params.target_macs_reduction
        for _ in range(4):
            ratios = ratios_for_target(scan, baseline, goal, saved)
            reached = 1 - measure.count_macs(pruned_copy(model, example, ratios), example) / macs
            if reached >= target - 1e-3:
                break
            goal += target - reached
        return ratios, reached

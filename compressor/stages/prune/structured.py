"""Structured (channel/filter) pruning with Torch-Pruning's dependency graph: coupled layers
(residual adds, concatenations, depthwise convs, BN, attention heads) shrink together, so the
model physically gets smaller and faster and still exports. Optionally gradual: N steps on a
cubic (AGP) schedule with fine-tuning between them on the shared training loop."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Optional

import torch.nn.functional as F
from torch import nn

from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.models import huggingface
from compressor.models.causal_lm import is_causal_lm
from compressor.core.params import one_of
from compressor.stages.prune.llm_structured import prune_llm
from compressor.stages.prune.graph import dead_ends, mapping_barriers, output_writers, untraced, with_outputs_of
from compressor.stages.prune.units import attention_heads, opaque_tracing, opaque_units, sync_attention
from compressor.training.loop import fit

IMPORTANCES = ("magnitude", "bn_scale", "taylor", "lamp", "fpgm", "wanda")  # wanda: causal LMs only


@dataclass
class PruneStructuredParams:
    ratio: float = 0.5  # fraction of channels (and heads' dims) removed per prunable group
    importance: str = "magnitude"  # magnitude | bn_scale | taylor | lamp | fpgm | wanda (causal LMs)
    norm: int = 2  # p of the magnitude norm
    global_pruning: bool = False  # one ranking across layers instead of the same ratio in each
    layer_ratios: dict = field(default_factory=dict)  # {module-name pattern: ratio}, overrides `ratio`
    ignore: list = field(default_factory=list)  # module-name patterns left untouched
    round_to: Optional[int] = None  # keep channel counts multiples of this (e.g. 8 for tensor cores)
    max_layer_ratio: float = 0.9  # no layer loses more than this (guards global pruning)
    steps: int = 1  # gradual pruning: reach `ratio` in this many steps (cubic AGP schedule)
    finetune_epochs: int = 0  # epochs of fine-tuning after each step
    lr: float = 1e-3
    taylor_batches: int = 4  # batches of training data for Taylor importance gradients
    ratios_from_sensitivity: bool = False  # per-layer ratios chosen by an earlier `sensitivity` stage
    calibration_batches: int = 8  # causal LMs, wanda: calibration batches for the activation norms

    def check(self):
        if not 0 <= self.ratio < 1:
            yield "ratio", f"must be in [0, 1), got {self.ratio}"
        yield from one_of(self.importance, IMPORTANCES, "importance")
        for pattern, r in self.layer_ratios.items():
            if not isinstance(r, (int, float)) or not 0 <= r < 1:
                yield f"layer_ratios.{pattern}", f"must be in [0, 1), got {r!r}"
        if self.round_to is not None and self.round_to < 1:
            yield "round_to", f"must be >= 1, got {self.round_to}"
        if not 0 < self.max_layer_ratio <= 1:
            yield "max_layer_ratio", f"must be in (0, 1], got {self.max_layer_ratio}"
        if self.steps < 1:
            yield "steps", f"must be >= 1, got {self.steps}"
        if self.finetune_epochs < 0:
            yield "finetune_epochs", f"must be >= 0, got {self.finetune_epochs}"
        if self.norm < 1:
            yield "norm", f"must be >= 1 (the p of an L-p norm), got {self.norm}"
        if not 0 < self.lr < math.inf:
            yield "lr", f"must be positive and finite, got {self.lr}"
        if self.taylor_batches < 1:
            yield "taylor_batches", f"must be >= 1, got {self.taylor_batches}"
        if self.calibration_batches < 1:
            yield "calibration_batches", f"must be >= 1, got {self.calibration_batches}"


def cubic_schedule(ratio: float, steps: int) -> list[float]:
    """Zhu & Gupta's AGP schedule: prune fast first, slowly at the end."""
    return [ratio * (1 - (1 - k / steps) ** 3) for k in range(steps + 1)]


def _importance(p: PruneStructuredParams):
    import torch_pruning as tp

    return {
        "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=p.norm),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "lamp": lambda: tp.importance.LAMPImportance(p=p.norm),
        "fpgm": lambda: tp.importance.FPGMImportance(p=p.norm),
    }[p.importance]()


def _match(names: list[str], pattern: str, key: str) -> list[str]:
    hits = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if not hits:
        raise UserError(f"pattern '{pattern}' matches no layer", key=key)
    return hits


def classifier_heads(model: nn.Module, num_classes: int | None) -> list[nn.Module]:
    """The last Linear/Conv producing the class scores: pruning its outputs would drop classes."""
    if not num_classes:
        return []
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    heads = [m for m in layers if (m.out_features if isinstance(m, nn.Linear) else m.out_channels) == num_classes]
    return heads[-1:] if heads else layers[-1:]


class PruneStructured:
    """Channel/filter pruning on a dependency graph (Torch-Pruning); the model shrinks for real."""

    params: PruneStructuredParams
    deterministic = ("cpu",)  # Taylor importance and gradual steps train: bit-exact on CPU only

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        import torch_pruning as tp

        p = self.params
        model.eval()
        if is_causal_lm(model):
            return self._causal_lm(model, ctx)
        if p.importance == "wanda":
            raise UserError("importance wanda is for causal LMs; this model takes magnitude, bn_scale, taylor, "
                            "lamp or fpgm", key="importance")
        names = dict((m, n) for n, m in model.named_modules())
        by_name = dict(model.named_modules())
        ignored = []
        # BERT-like transformers: remove whole heads and MLP neurons, keep the residual width
        hf_heads, residual_writers = huggingface.pruning_setup(model)
        ignored += residual_writers
        for pattern in p.ignore:
            ignored += [by_name[n] for n in _match(list(by_name), pattern, "ignore")]
        ratio_dict = {}
        for pattern, r in p.layer_ratios.items():
            for n in _match(list(by_name), pattern, f"layer_ratios.{pattern}"):
                ratio_dict[by_name[n]] = float(r)
        if p.ratios_from_sensitivity:  # exact layer names, left in ctx.handoff by the sensitivity stage
            if ctx.handoff.layer_ratios is None:
                raise UserError("no sensitivity stage with target_macs_reduction ran before this one",
                                key="ratios_from_sensitivity")
            ratio_dict.update({by_name[n]: float(r) for n, r in ctx.handoff.layer_ratios.items() if n in by_name})
        example = ctx.example_input
        before = {n: _width(m) for n, m in model.named_modules() if _width(m)}
        macs_before, params_before = tp.utils.count_ops_and_params(model, example)
        units = opaque_units(model)
        dead = dead_ends(model, example)
        barriers: set = set()
        try:
            with opaque_tracing(model, units), mapping_barriers(barriers):
                pruner = tp.pruner.BasePruner(
                    model, example, importance=_importance(p), pruning_ratio=p.ratio,
                    pruning_ratio_dict=ratio_dict or None, global_pruning=p.global_pruning,
                    max_pruning_ratio=p.max_layer_ratio, iterative_steps=p.steps,
                    iterative_pruning_ratio_scheduler=cubic_schedule, ignored_layers=ignored,
                    round_to=p.round_to, num_heads={**attention_heads(model, units), **hf_heads},
                    prune_num_heads=bool(hf_heads), prune_head_dims=not hf_heads,
                    head_pruning_ratio=p.ratio if hf_heads else 0.0,
                    customized_pruners=units, forward_fn=with_outputs_of(dead),
                    in_channel_groups={}, out_channel_groups={},  # TP's defaults are shared dicts it mutates
                )
            writers = output_writers(pruner.DG, tuple(units))
            pruner.ignored_layers += writers
            ignored += writers
            for step in range(p.steps):
                if p.importance == "taylor":
                    self._gradients(model, ctx)
                with mapping_barriers(barriers):
                    for group in pruner.step(interactive=True):
                        if not any(dep.target in barriers for dep, _ in group):
                            group.prune()
                sync_attention(model)
                model.zero_grad(set_to_none=True)
                if p.finetune_epochs:
                    fit(model, ctx.data.train, p.finetune_epochs, lr=p.lr,
                        **ctx.training(f"prune step {step + 1}/{p.steps}: finetune"))
                    model.eval()
        except UserError:
            raise
        except Exception as e:  # Torch-Pruning raises many types for graphs it cannot handle
            raise UserError(f"the model cannot be pruned structurally: {type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:200]}", key="") from e
        missed = untraced(model, pruner.DG, units)
        if missed:  # e.g. auxiliary heads that run only in training mode
            ctx.log.warning("prune_structured: %d layer(s) did not run in the traced forward and were not "
                            "resized with their inputs: %s", len(missed), ", ".join(missed[:5]))
            ctx.notes["untraced_layers"] = missed
        if barriers:
            ctx.log.info("prune_structured: channels through %d op(s) Torch-Pruning cannot map "
                         "(e.g. channel shuffles) are kept", len(barriers))
        if hf_heads:
            ctx.notes["attention_heads"] = huggingface.after_pruning(model, pruner.num_heads)
        macs_after, params_after = tp.utils.count_ops_and_params(model, example)
        changed = {n: f"{before[n]}->{_width(m)}" for n, m in model.named_modules()
                   if n in before and _width(m) != before[n]}
        ctx.notes.update(macs_ratio=round(macs_after / max(macs_before, 1), 4),
                         params_ratio=round(params_after / max(params_before, 1), 4),
                         ignored_layers=[names[m] for m in ignored], widths=changed)
        return model

    def _causal_lm(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        uniform = {"layer_ratios": p.layer_ratios, "global_pruning": p.global_pruning, "steps": p.steps > 1,
                   "ratios_from_sensitivity": p.ratios_from_sensitivity, "finetune_epochs": p.finetune_epochs}
        for key, value in uniform.items():
            if value:
                raise UserError("a causal LM is pruned with one ratio in every block (its config, and the engine "
                                "built from it, holds one MLP width and one head count); follow with a distill "
                                "stage to recover", key=key)
        params_before = sum(t.numel() for t in model.parameters())
        ctx.notes.update(prune_llm(model, ctx, p.ratio, p.importance, p.ignore, p.round_to, p.calibration_batches))
        ctx.notes["params_ratio"] = round(sum(t.numel() for t in model.parameters()) / params_before, 4)
        return model

    def _gradients(self, model: nn.Module, ctx: Context) -> None:
        model.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(ctx.data.train):
            if i >= self.params.taylor_batches:
                break
            F.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device)).backward()


def _width(m: nn.Module) -> int | None:
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return m.out_channels
    if isinstance(m, nn.Linear):
        return m.out_features
    return None

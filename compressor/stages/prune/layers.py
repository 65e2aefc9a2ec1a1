"""Depth pruning: whole residual blocks replaced by nn.Identity, the least important first.

A block can go only where its output is x + f(x) (optionally through an activation such as
ResNet's final ReLU) and keeps x's shape: without the block the model still gets x, so it stays
valid. Residual blocks are found by tracing each module with torch.fx and checking that its
output is an add of its own input; blocks with a downsample path (not x itself) do not qualify.
Importance is either the validation-metric drop when the block alone is removed (`metric`) or
the cheap proxy ||block(x) - x|| / ||x|| on calibration data (`norm`): how much the block
changes what passes through it.

A causal LM (compressor/models/causal_lm.py) has its decoder blocks as the candidates (each is
h + attention(h) + mlp(...), same shape); a removed block is deleted from the layer list and the
config's layer count, so the engines' KV cache has one layer fewer (ShortGPT-style depth pruning)."""
from __future__ import annotations

import fnmatch
import operator
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.core.params import one_of
from compressor.models.causal_lm import decoder_layers, is_causal_lm
from compressor.registry import lower_is_better

ADDS = (operator.add, operator.iadd, torch.add)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Identity, nn.Dropout)
ACTIVATION_FNS = (F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.leaky_relu)


@dataclass
class PruneLayersParams:
    count: int = 1  # residual blocks to remove
    ratio: Optional[float] = None  # fraction of the removable blocks instead of `count`
    importance: str = "metric"  # metric: validation-metric drop; norm: ||block(x) - x|| / ||x||
    exclude: list[str] = field(default_factory=list)  # module-name patterns (fnmatch) kept
    calibration_batches: int = 4  # batches of calibration data for the norm importance

    def check(self):
        if self.count < 1:
            yield "count", f"must be >= 1, got {self.count}"
        if self.ratio is not None and not 0 < self.ratio <= 1:
            yield "ratio", f"must be in (0, 1], got {self.ratio}"
        yield from one_of(self.importance, ("metric", "norm"), "importance")
        if self.calibration_batches < 1:
            yield "calibration_batches", f"must be >= 1, got {self.calibration_batches}"


def _is_activation(node: fx.Node, traced: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(traced.get_submodule(node.target), ACTIVATIONS)
    return node.op == "call_function" and node.target in ACTIVATION_FNS


def is_residual(module: nn.Module) -> bool:
    """Whether module(x) is x + f(x), possibly followed by elementwise activations."""
    try:
        traced = fx.symbolic_trace(module)
    except Exception:  # data-dependent control flow and the like: not provably residual
        return False
    nodes = list(traced.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    out = nodes[-1].args[0] if nodes and nodes[-1].op == "output" else None
    if len(inputs) != 1 or not isinstance(out, fx.Node):
        return False
    while _is_activation(out, traced) and isinstance(out.args[0], fx.Node):
        out = out.args[0]
    is_add = (out.op == "call_function" and out.target in ADDS) or (out.op == "call_method" and out.target in ("add", "add_"))
    return is_add and inputs[0] in out.args[:2]


def removable_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of residual blocks that the forward pass calls with output shape == input shape."""
    custom = [(n, m) for n, m in model.named_modules() if n and not type(m).__module__.startswith("torch.nn")]
    shapes: dict[str, bool] = {}

    def record(name: str):
        def hook(mod, args, out) -> None:  # a hook returning a value would replace the output
            shapes.setdefault(name, len(args) == 1 and torch.is_tensor(out) and args[0].shape == out.shape)
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in custom]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return [n for n, m in custom if shapes.get(n) and is_residual(m)]


def norm_importance(model: nn.Module, names: list[str], ctx: Context, batches: int) -> dict[str, float]:
    """Mean over calibration batches of ||block(x) - x|| / ||x|| for each block."""
    scores: dict[str, list[float]] = {n: [] for n in names}

    def record(name: str):
        def hook(mod, args, out) -> None:
            scores[name].append(float((out - args[0]).norm() / args[0].norm().clamp_min(1e-12)))
        return hook

    calibrate(model, ctx, batches, [model.get_submodule(n).register_forward_hook(record(n)) for n in names])
    return {n: sum(v) / max(len(v), 1) for n, v in scores.items()}


def calibrate(model: nn.Module, ctx: Context, batches: int, hooks: list) -> None:
    """Run the first `batches` calibration batches through the model, then remove the hooks that watched them."""
    try:
        with torch.no_grad():
            for i, (x, _) in enumerate(ctx.data.calib):
                if i >= batches:
                    break
                model(x.to(ctx.device))
    finally:
        for h in hooks:
            h.remove()


class _Skip(nn.Module):
    """A block's stand-in while its importance is measured: its first input passes through (an LM's
    decoder block is called with keyword arguments nn.Identity does not take)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def metric_importance(model: nn.Module, names: list[str], ctx: Context) -> dict[str, float]:
    """Loss of the validation metric (the gate's, listed first) when each block alone is removed:
    its drop, or its rise for a metric where lower is better (perplexity)."""
    first = ctx.evaluate(model)
    metric = next(iter(first))
    sign = -1.0 if lower_is_better(metric) else 1.0
    scores = {}
    for name in names:
        block = model.get_submodule(name)
        model.set_submodule(name, _Skip())
        scores[name] = sign * (first[metric] - ctx.evaluate(model)[metric])
        model.set_submodule(name, block)
    return scores


def drop_decoder_blocks(model: nn.Module, names: list[str]) -> None:
    """Delete decoder blocks of a causal LM; the others are renumbered for the KV cache."""
    layers = decoder_layers(model)
    gone = {id(model.get_submodule(n)) for n in names}
    keep = [i for i, block in enumerate(layers) if id(block) not in gone]
    config = model.config
    if getattr(config, "layer_types", None):  # per-layer attention kinds (sliding window...), where the family has them
        config.layer_types = [config.layer_types[i] for i in keep]
    layers = nn.ModuleList(layers[i] for i in keep)
    model.set_submodule(names[0].rsplit(".", 1)[0], layers)
    for i, block in enumerate(layers):
        block.self_attn.layer_idx = i
    config.num_hidden_layers = len(layers)


def _nested(a: str, b: str) -> bool:
    return a.startswith(b + ".") or b.startswith(a + ".")


class PruneLayers:
    """Removes whole residual blocks (replaced by Identity; a causal LM's decoder blocks deleted),
    the least important first."""

    params: PruneLayersParams

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        model.eval()
        for pattern in p.exclude:
            if not any(fnmatch.fnmatch(n, pattern) for n, _ in model.named_modules()):
                raise UserError(f"pattern '{pattern}' matches no module", key="exclude")
        lm = is_causal_lm(model)
        found = ([n for n, m in model.named_modules() if any(m is b for b in decoder_layers(model))] if lm
                 else removable_blocks(model, ctx.example_input))
        names = [n for n in found if not any(fnmatch.fnmatch(n, pat) for pat in p.exclude)]
        if not names:
            raise UserError("the model has no removable residual block (output = input + f(input), same shape)"
                            + (f" outside `exclude` ({len(found)} excluded)" if found else ""))
        count = max(1, round(p.ratio * len(names))) if p.ratio is not None else p.count
        if count > len(names):
            raise UserError(f"asks for {count} blocks but only {len(names)} can be removed: {', '.join(names)}",
                            key="count")
        if p.importance == "metric" and not ctx.data.labelled:
            raise UserError("the data has no labels to measure a metric with; use importance=norm", key="importance")
        if p.importance == "metric":
            scores = metric_importance(model, names, ctx)
        else:
            scores = norm_importance(model, names, ctx, p.calibration_batches)
        removed: list[str] = []
        for name in sorted(names, key=scores.get):
            if len(removed) < count and not any(_nested(name, r) for r in removed):
                removed.append(name)
        if lm:
            drop_decoder_blocks(model, removed)
        else:
            for name in removed:
                model.set_submodule(name, nn.Identity())
        ctx.notes.update(removed_blocks=removed, importance={n: round(s, 5) for n, s in scores.items()},
                         importance_kind=p.importance)
        return model

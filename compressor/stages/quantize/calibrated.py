"""The calibrated weight-only methods on a causal LM, block by block (stages/blockwise.py): AWQ's
scales folded first, then each Linear's integers by GPTQ, by AWQ's clipped round-to-nearest, or
by auto-round for the whole model at once."""
from __future__ import annotations

import torch
from torch import nn

from compressor.core.interfaces import Context
from compressor.stages import blockwise as bw
from compressor.stages.quantize import awq
from compressor.stages.quantize.gptq import gptq
from compressor.stages.quantize.groups import fitted_group, rtn_integers, to_weight_only

SAMPLE_TOKENS = 4096  # calibration tokens kept per Linear for AWQ's searches


@torch.no_grad()
def quantize(model: nn.Module, chosen: set[str], p, ctx: Context) -> dict[str, int]:
    """Quantize the chosen Linears of the decoder blocks; returns the group size each got."""
    lm = bw.require_lm(model, f"method {p.method}")
    ids = bw.calibration_ids(ctx, p.calibration_windows)
    if p.method == "autoround":
        return _autoround(lm, chosen, ids, p, ctx)
    names = dict(lm.named_modules())
    groups = {}
    for i, block, inputs, kwargs in bw.each_block(lm, ids, ctx.progress, f"{p.method} blocks"):
        prefix = next(n for n, m in names.items() if m is block) + "."
        mine = tuple(n for n in bw.LINEARS if prefix + n in chosen)
        if p.method in ("awq", "awq_gptq"):
            _awq_scales(block, inputs, kwargs, mine, p)
        stats = bw.statistics(block, inputs, kwargs, mine) if "gptq" in p.method else {}
        samples = _samples(block, inputs, kwargs, mine) if p.method == "awq" else {}
        for n in mine:
            lin = bw.linear_of(block, n)
            g = fitted_group(lin.in_features, p.group_size)
            if p.method == "awq":
                clip = 1.0 if n in ("self_attn.q_proj", "self_attn.k_proj") else \
                    awq.search_clip(samples[n], lin.weight.float(), p.bits, g, p.symmetric)
                ints, scale, zp = rtn_integers(lin.weight, p.bits, g, p.symmetric, clip)
            else:
                ints, scale, zp = gptq(lin.weight, stats[n].matrix, p.bits, g, p.symmetric, p.damp, p.act_order)
            to_weight_only(block, n, ints, scale, zp, p.bits, p.symmetric)
            groups[prefix + n] = g
    return groups


def _samples(block: nn.Module, inputs, kwargs, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Up to SAMPLE_TOKENS input rows of each named Linear, spread over the calibration batches."""
    per_batch = max(1, SAMPLE_TOKENS // max(len(inputs), 1))
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def keep(n, x):
        got[n].append(x[torch.linspace(0, len(x) - 1, min(per_batch, len(x))).long()])

    with bw.observe(block, names, keep):
        bw.run_block(block, inputs, kwargs)
    return {n: torch.cat(v) for n, v in got.items()}


def _awq_scales(block: nn.Module, inputs, kwargs, names: tuple[str, ...], p) -> None:
    """Search and fold each group's input-channel scale (groups whose feeder and layers line up)."""
    samples = _samples(block, inputs, kwargs, names)
    for prev_name, layer_names in bw.SCALABLE:
        if not all(n in names for n in layer_names):
            continue
        prev = block.get_submodule(prev_name)
        layers = [bw.linear_of(block, n) for n in layer_names]
        width = layers[0].in_features
        if getattr(prev, "out_features", width) != width:  # v_proj -> o_proj under GQA: widths differ
            continue
        x = samples[layer_names[0]]
        gs = [fitted_group(width, p.group_size)] * len(layers)
        s, _ = awq.search_scale(x, x.abs().mean(0), [lin.weight.float() for lin in layers], p.bits, gs, p.symmetric)
        awq.fold_scale(getattr(prev, "inner", prev), layers, s.to(layers[0].weight.dtype))


def _autoround(lm, chosen: set[str], ids: torch.Tensor, p, ctx: Context) -> dict[str, int]:
    from compressor.stages.quantize.autoround import autoround_layers, to_weight_only

    results = autoround_layers(lm, ids, bits=p.bits, group_size=p.group_size or None, symmetric=p.symmetric,
                               iters=p.iters, lr=p.lr, seed=ctx.seed, layers=sorted(chosen))
    to_weight_only(lm, results)
    return {name: r["group_size"] for name, r in results.items()}

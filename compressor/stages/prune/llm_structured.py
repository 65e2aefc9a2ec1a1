"""Structured pruning of a causal LM (Llama family): MLP channels and whole GQA groups of attention
heads leave every decoder block, so the matrices really shrink and the engines get the smaller
config (LLM-Pruner / Wanda-sp style, one ratio for all blocks).

An MLP channel j is gate_proj's and up_proj's row j with down_proj's column j. A GQA group g is
key/value head g with the query heads that read it (n_rep = heads / kv_heads of them) and
o_proj's columns for those query heads: removing a whole group keeps the query-to-KV mapping the
attention kernels assume. Importance per unit, `magnitude`: the L2 norm of all its weights;
`wanda`: the norm of its output-side weights (down_proj / o_proj columns) times the RMS of the
activations feeding them on the calibration windows, so a unit that is large but never active
goes first. One ratio for every block: the config (and the engine built from it) holds one MLP
width and one head count."""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

from compressor.core.interfaces import Context
from compressor.errors import UserError
from compressor.models.causal_lm import decoder_layers
from compressor.stages.prune.layers import calibrate

LM_IMPORTANCES = ("magnitude", "wanda")


def _input_rms(model: nn.Module, ctx: Context, batches: int) -> dict[nn.Module, torch.Tensor]:
    """Root mean square of each down_proj / o_proj input channel over the calibration windows."""
    sums: dict[nn.Module, list] = {}

    def hook(mod, args):
        x = args[0].detach().float().flatten(0, -2)
        s = sums.setdefault(mod, [0.0, 0])
        s[0] = s[0] + x.square().sum(0)
        s[1] += len(x)

    mods = [m for b in decoder_layers(model) for m in (b.mlp.down_proj, b.self_attn.o_proj)]
    calibrate(model, ctx, batches, [m.register_forward_pre_hook(hook) for m in mods])
    return {m: (s / n).sqrt() for m, (s, n) in sums.items()}


def _keep(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest scores, in their original order."""
    return scores.topk(count).indices.sort().values


def _rows(linear: nn.Linear, idx: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[idx].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[idx].clone())
    linear.out_features = len(idx)


def _cols(linear: nn.Linear, idx: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data[:, idx].clone())
    linear.in_features = len(idx)


def prune_llm(model: nn.Module, ctx: Context, ratio: float, importance: str, ignore: list[str],
              round_to: int | None, batches: int) -> dict:
    """Remove `ratio` of each block's MLP channels and of its GQA groups (at least one group stays);
    `ignore`: name patterns of blocks' `mlp` or `self_attn` (or whole blocks) left as they are."""
    if importance not in LM_IMPORTANCES:
        raise UserError(f"a causal LM is pruned by {' or '.join(LM_IMPORTANCES)} importance, not {importance!r}",
                        key="importance")
    cfg = model.config
    names = {m: n for n, m in model.named_modules()}
    blocks = list(decoder_layers(model))
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rep = heads // kv

    def ignored(m: nn.Module) -> bool:
        return any(fnmatch.fnmatch(names[m], pat) for pat in ignore)

    do_mlp = not any(ignored(b) or ignored(b.mlp) for b in blocks)
    do_attn = not any(ignored(b) or ignored(b.self_attn) for b in blocks)
    channels = cfg.intermediate_size
    keep_ch = channels - int(ratio * channels)
    if round_to:
        keep_ch = max(round_to, keep_ch // round_to * round_to)
    keep_groups = max(1, kv - int(ratio * kv + 1e-9))
    rms = _input_rms(model, ctx, batches) if importance == "wanda" else {}
    for b in blocks:
        mlp, attn = b.mlp, b.self_attn
        if do_mlp and keep_ch < channels:
            down = mlp.down_proj.weight.detach()
            if importance == "wanda":
                score = down.norm(dim=0) * rms[mlp.down_proj]
            else:
                score = (mlp.gate_proj.weight.detach().square().sum(1) + mlp.up_proj.weight.detach().square().sum(1)
                         + down.square().sum(0)).sqrt()
            idx = _keep(score, keep_ch)
            _rows(mlp.gate_proj, idx)
            _rows(mlp.up_proj, idx)
            _cols(mlp.down_proj, idx)
        if do_attn and keep_groups < kv:
            o = attn.o_proj.weight.detach().view(-1, kv, rep * head_dim)  # o_proj's columns, grouped by KV head
            if importance == "wanda":
                score = (o.square().sum(0) * rms[attn.o_proj].view(kv, -1).square()).sum(1).sqrt()
            else:
                q = attn.q_proj.weight.detach().view(kv, -1)
                k, v = attn.k_proj.weight.detach().view(kv, -1), attn.v_proj.weight.detach().view(kv, -1)
                score = (q.square().sum(1) + k.square().sum(1) + v.square().sum(1) + o.square().sum((0, 2))).sqrt()
            groups = _keep(score, keep_groups)
            kv_idx = (groups[:, None] * head_dim + torch.arange(head_dim)).flatten()
            q_idx = (groups[:, None] * rep * head_dim + torch.arange(rep * head_dim)).flatten()
            _rows(attn.q_proj, q_idx)
            _rows(attn.k_proj, kv_idx)
            _rows(attn.v_proj, kv_idx)
            _cols(attn.o_proj, q_idx)
    if do_mlp:
        cfg.intermediate_size = keep_ch
    if do_attn:
        cfg.num_attention_heads, cfg.num_key_value_heads = keep_groups * rep, keep_groups
    cfg.head_dim = head_dim  # no longer hidden_size / heads
    return {"mlp_channels": f"{channels}->{cfg.intermediate_size}", "kv_groups": f"{kv}->{cfg.num_key_value_heads}",
            "attention_heads": f"{heads}->{cfg.num_attention_heads}", "importance": importance}

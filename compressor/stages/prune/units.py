"""Attention layers Torch-Pruning cannot trace through (their forward reshapes by widths), pruned
as one unit each by a pruner of their own: torch's MultiheadAttention, torchvision's Swin and
MaxViT attention and Swin's patch merging. Used by the `prune_structured` stage."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def attention_heads(model: nn.Module, units=()) -> dict[nn.Module, int]:
    """Head counts Torch-Pruning needs to keep heads whole (torch MultiheadAttention not pruned
    as an opaque unit)."""
    return {m: m.num_heads for m in model.modules()
            if isinstance(m, nn.MultiheadAttention) and type(m) not in units}


def sync_attention(model: nn.Module) -> None:
    """Torch-Pruning resizes MultiheadAttention's projections (and a ViT's patch embedding); keep
    the widths their forward reads in step."""
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            m.embed_dim = m.in_proj_weight.shape[1] if m.in_proj_weight is not None else m.embed_dim
            m.kdim = m.vdim = m.embed_dim
            m.head_dim = m.embed_dim // m.num_heads
        if isinstance(getattr(m, "conv_proj", None), nn.Conv2d) and hasattr(m, "hidden_dim"):
            m.hidden_dim = m.conv_proj.out_channels  # torchvision's VisionTransformer


@contextlib.contextmanager
def opaque_tracing(model: nn.Module, units: dict):
    """Trace each opaque unit as one node: its output depends on its input only through a scalar,
    so Torch-Pruning sees none of the reshapes inside (which it would mis-map) and links the
    unit's input channels one to one with its producer's."""
    patched = [m for m in model.modules() if type(m) in units]
    for m in patched:
        def surrogate(*args, _forward=m.forward, **kwargs):
            with torch.no_grad():
                out = _forward(*args, **kwargs)
            link = 0 * sum(a.sum() for a in args if isinstance(a, torch.Tensor))  # query, key, value
            return (out[0] + link, *out[1:]) if isinstance(out, tuple) else out + link
        m.forward = surrogate
    try:
        yield
    finally:
        for m in patched:
            del m.forward


class AttentionUnit:
    """Torch-Pruning pruner for torchvision's Swin and MaxViT attention, pruned as one unit: their
    forward reshapes q/k/v by the input's width, so input, q/k/v and output widths shrink
    together. q/k/v lose the same offsets as the input in every head (the channel groups make
    those offsets the same in each head), so every head keeps the same size."""

    def __init__(self, qkv: str, proj: str, heads: str, head_dim: str | None = None):
        self.qkv, self.proj, self.heads, self.head_dim = qkv, proj, heads, head_dim
        self.pruning_dim = 1

    def get_in_channels(self, m):
        return getattr(m, self.qkv).in_features

    def get_out_channels(self, m):
        return getattr(m, self.proj).out_features

    def get_in_channel_groups(self, m):
        return getattr(m, self.heads)

    get_out_channel_groups = get_in_channel_groups

    def prune_in_channels(self, m, idxs):
        import torch_pruning as tp

        qkv, proj, width = getattr(m, self.qkv), getattr(m, self.proj), getattr(m, self.qkv).in_features
        tp.prune_linear_in_channels(qkv, idxs)
        tp.prune_linear_out_channels(qkv, [i + k * width for k in range(3) for i in idxs])
        tp.prune_linear_in_channels(proj, idxs)
        if self.head_dim:
            setattr(m, self.head_dim, qkv.in_features // getattr(m, self.heads))
        return m

    def prune_out_channels(self, m, idxs):
        import torch_pruning as tp

        tp.prune_linear_out_channels(getattr(m, self.proj), idxs)
        return m


class PatchMergingUnit:
    """Torch-Pruning pruner for Swin's patch merging: 2x2 neighbours concatenated on the channel
    dim (4 x width), a LayerNorm and a Linear down to 2 x width (v2: the LayerNorm after it)."""

    pruning_dim = 1

    def get_in_channels(self, m):
        return m.reduction.in_features // 4

    def get_out_channels(self, m):
        return m.reduction.out_features

    def get_in_channel_groups(self, m):
        return 1

    get_out_channel_groups = get_in_channel_groups

    def prune_in_channels(self, m, idxs):
        import torch_pruning as tp

        width = self.get_in_channels(m)
        four = [i + k * width for k in range(4) for i in idxs]
        if m.norm.normalized_shape[0] == m.reduction.in_features:
            tp.prune_layernorm_out_channels(m.norm, four)
        tp.prune_linear_in_channels(m.reduction, four)
        m.dim = width - len(idxs)
        return m

    def prune_out_channels(self, m, idxs):
        import torch_pruning as tp

        if m.norm.normalized_shape[0] == m.reduction.out_features:
            tp.prune_layernorm_out_channels(m.norm, idxs)
        tp.prune_linear_out_channels(m.reduction, idxs)
        return m


class MultiheadAttentionUnit:
    """Torch-Pruning pruner for nn.MultiheadAttention (one projection for q, k and v), pruned as one
    unit like `AttentionUnit`: embedding width and every head's size shrink together."""

    pruning_dim = 1

    def get_in_channels(self, m):
        return m.in_proj_weight.shape[1]

    def get_out_channels(self, m):
        return m.out_proj.out_features

    def get_in_channel_groups(self, m):
        return m.num_heads

    get_out_channel_groups = get_in_channel_groups

    def prune_in_channels(self, m, idxs):
        import torch_pruning as tp

        width, drop = m.in_proj_weight.shape[1], set(int(i) for i in idxs)
        keep = [i for i in range(width) if i not in drop]
        rows = [i + k * width for k in range(3) for i in keep]
        m.in_proj_weight = nn.Parameter(m.in_proj_weight.data[rows][:, keep])
        if m.in_proj_bias is not None:
            m.in_proj_bias = nn.Parameter(m.in_proj_bias.data[rows])
        for name in ("bias_k", "bias_v"):
            if getattr(m, name, None) is not None:
                setattr(m, name, nn.Parameter(getattr(m, name).data[..., keep]))
        tp.prune_linear_in_channels(m.out_proj, idxs)
        m.embed_dim = m.kdim = m.vdim = len(keep)
        m.head_dim = len(keep) // m.num_heads
        return m

    def prune_out_channels(self, m, idxs):
        import torch_pruning as tp

        tp.prune_linear_out_channels(m.out_proj, idxs)
        return m


def opaque_units(model: nn.Module) -> dict[type, object]:
    """Layer types in `model` pruned as one unit by their own pruner: their forward reshapes by
    widths that Torch-Pruning's tracing cannot follow."""
    present = {type(m) for m in model.modules()}
    units = {}
    if nn.MultiheadAttention in present and all(
            m._qkv_same_embed_dim for m in model.modules() if isinstance(m, nn.MultiheadAttention)):
        units[nn.MultiheadAttention] = MultiheadAttentionUnit()
    try:
        from torchvision.models import maxvit, swin_transformer as swin
    except ImportError:
        return units
    attention = AttentionUnit("qkv", "proj", "num_heads")
    units.update({
        swin.ShiftedWindowAttention: attention,
        swin.ShiftedWindowAttentionV2: attention,
        swin.PatchMerging: PatchMergingUnit(),
        swin.PatchMergingV2: PatchMergingUnit(),
        maxvit.RelativePositionalMultiHeadAttention: AttentionUnit("to_qkv", "merge", "n_heads", "head_dim"),
    })
    return {t: u for t, u in units.items() if t in present}

"""Structured (channel/filter) pruning with Torch-Pruning's dependency graph: coupled layers
(residual adds, concatenations, depthwise convs, BN, attention heads) shrink together, so the
model physically gets smaller and faster and still exports. Optionally gradual: N steps on a
cubic (AGP) schedule with fine-tuning between them on the shared training loop."""
from __future__ import annotations

import contextlib
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import UserError
from compressor.interfaces import Context
from compressor.models import huggingface
from compressor.params import one_of
from compressor.training import fit

IMPORTANCES = ("magnitude", "bn_scale", "taylor", "lamp", "fpgm")


@dataclass
class PruneStructuredParams:
    ratio: float = 0.5  # fraction of channels (and heads' dims) removed per prunable group
    importance: str = "magnitude"  # magnitude | bn_scale | taylor | lamp | fpgm
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


def attention_heads(model: nn.Module, units=()) -> dict[nn.Module, int]:
    """Head counts Torch-Pruning needs to keep heads whole (torch MultiheadAttention not pruned
    as an opaque unit)."""
    return {m: m.num_heads for m in model.modules()
            if isinstance(m, nn.MultiheadAttention) and type(m) not in units}


class PruneStructured:
    """Channel/filter pruning on a dependency graph (Torch-Pruning); the model shrinks for real."""

    params: PruneStructuredParams

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        import torch_pruning as tp

        p = self.params
        model.eval()
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
        if p.ratios_from_sensitivity:  # exact layer names, left in ctx.shared by the sensitivity stage
            if "layer_ratios" not in ctx.shared:
                raise UserError("no sensitivity stage with target_macs_reduction ran before this one",
                                key="ratios_from_sensitivity")
            ratio_dict.update({by_name[n]: float(r) for n, r in ctx.shared["layer_ratios"].items() if n in by_name})
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
                    customized_pruners=units, forward_fn=_with_outputs_of(dead),
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
                model.zero_grad(set_to_none=True)
                if p.finetune_epochs:
                    fit(model, ctx.data.train, p.finetune_epochs, lr=p.lr, device=ctx.device,
                        progress=ctx.progress, description=f"prune step {step + 1}/{p.steps}: finetune")
                    model.eval()
        except UserError:
            raise
        except Exception as e:  # Torch-Pruning raises many types for graphs it cannot handle
            raise UserError(f"the model cannot be pruned structurally: {type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:200]}", key="") from e
        _sync_attention(model)
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


def _sync_attention(model: nn.Module) -> None:
    """Torch-Pruning resizes MultiheadAttention's projections (and a ViT's patch embedding); keep
    the widths their forward reads in step."""
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            m.embed_dim = m.in_proj_weight.shape[1] if m.in_proj_weight is not None else m.embed_dim
            m.kdim = m.vdim = m.embed_dim
            m.head_dim = m.embed_dim // m.num_heads
        if isinstance(getattr(m, "conv_proj", None), nn.Conv2d) and hasattr(m, "hidden_dim"):
            m.hidden_dim = m.conv_proj.out_channels  # torchvision's VisionTransformer


def output_writers(graph, units: tuple = ()) -> list[nn.Module]:
    """Layers whose output channels are model outputs (class scores, boxes, masks): pruning them
    would change what the model returns. Found by walking back from every output of the traced
    graph through the ops that keep channels, up to the first Conv/Linear (or opaque unit)."""
    roots = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LSTM, *units)
    found, seen = [], set()
    stack = [n for n in graph.module2node.values() if not n.outputs]  # the traced outputs
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node.module, roots):
            found.append(node.module)
        else:
            stack.extend(node.inputs)
    return found


def dead_ends(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Conv/Linear layers that run but reach no model output through autograd (detection heads
    behind a .detach()). Torch-Pruning traces back from the outputs, so it would not see them and
    would shrink their inputs under them; they are traced as extra outputs instead."""
    outs: dict = {}

    def record(mod, inputs, out):  # returns None: the output stays as it is
        outs.setdefault(mod, []).append(out)

    hooks = [m.register_forward_hook(record)
             for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    try:
        with torch.enable_grad():
            result = model(example)
    finally:
        for h in hooks:
            h.remove()
    seen, stack = set(), [t.grad_fn for t in _tensors(result) if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn not in seen:
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions if f is not None)
    return [m for m, calls in outs.items()
            if any(isinstance(o, torch.Tensor) and o.grad_fn is not None and o.grad_fn not in seen for o in calls)]


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _with_outputs_of(layers: list[nn.Module]):
    """A forward for Torch-Pruning's trace that also returns these layers' outputs."""
    if not layers:
        return None

    def forward(model, example):
        extra = []
        hooks = [m.register_forward_hook(lambda mod, i, o: extra.append(o)) for m in layers]
        try:
            out = model(example)
        finally:
            for h in hooks:
                h.remove()
        return [out, *extra]

    return forward


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


@contextlib.contextmanager
def mapping_barriers(barriers: set):
    """Torch-Pruning maps channel indices across reshapes, splits and concatenations by guessing
    from channel counts. Where that guess cannot hold (a reshape that splits the channels of a
    conv feature map, as a channel shuffle does) or fails (divides by zero, finds no offsets),
    the node becomes a barrier: it is recorded in `barriers`, propagation stops there, and the
    caller prunes no group that reaches one. Patched for the duration of the pruning only."""
    from torch_pruning import ops
    from torch_pruning.dependency import index_mapping as im

    original = im.update_index_mapping
    updates = {ops.OPTYPE.CONCAT: im.update_concat_index_mapping, ops.OPTYPE.SPLIT: im.update_split_index_mapping,
               ops.OPTYPE.RESHAPE: im.update_reshape_index_mapping, ops.OPTYPE.UNBIND: im.update_unbind_index_mapping,
               ops.OPTYPE.EXPAND: im.update_expand_index_mapping, ops.OPTYPE.SLICE: im.update_slice_index_mapping}

    def update(graph):
        for node in list(graph.module2node.values()):
            if node.type not in updates or node in barriers:
                continue
            try:
                bad = node.type == ops.OPTYPE.RESHAPE and _splits_channels(node)
                if not bad:
                    updates[node.type](graph, node)
                    offsets = getattr(node.module, "offsets", None)
                    bad = node.type == ops.OPTYPE.SPLIT and (offsets is None or len(offsets) != len(node.outputs) + 1)
                    bad = bad or (node.type == ops.OPTYPE.RESHAPE and not _flatten_ok(node, im._FlattenIndexMapping))
            except (ArithmeticError, IndexError, TypeError):
                bad = True
            if bad:
                barriers.add(node)
                node.dependencies.clear()  # propagation stops here
                for n in node.inputs + node.outputs:
                    for dep in n.dependencies:
                        if dep.target is node:
                            dep.index_mapping = [None, None]

    im.update_index_mapping = update
    try:
        yield
    finally:
        im.update_index_mapping = original


def _flatten_ok(node, flatten_mapping: type) -> bool:
    """A flatten mapping Torch-Pruning put on a reshape must be the real one: (B, C, *S) <-> (B, C x prod(S))
    with stride prod(S). Anything else multiplies index lists along the graph until memory runs out."""
    strides = {f._stride for n in [node, *node.inputs, *node.outputs] for dep in n.dependencies
               if dep.target is node or dep.source is node for f in dep.index_mapping if isinstance(f, flatten_mapping)}
    if not strides:
        return True
    fn = node.grad_fn
    src, meta = getattr(fn, "_saved_self_sym_sizes", None), getattr(fn, "_input_metadata", None)
    if src is None or not meta:
        return False
    src, dst = [int(d) for d in src], [int(d) for d in meta[0].shape]
    big, small = (src, dst) if len(src) > len(dst) else (dst, src)
    return (len(small) == 2 and len(big) > 2 and small == [big[0], math.prod(big[1:])]
            and strides == {math.prod(big[2:])})


def _splits_channels(node) -> bool:
    """A reshape of a conv feature map (channels at dim 1) other than flattening all but the batch
    dim, or regrouping the dims after the channels."""
    fn = node.grad_fn
    src, meta = getattr(fn, "_saved_self_sym_sizes", None), getattr(fn, "_input_metadata", None)
    if src is None or not meta or len(src) < 2 or not _behind_conv(node):
        return False
    src, dst = [int(d) for d in src], [int(d) for d in meta[0].shape]
    return dst[:2] != src[:2] and dst != [src[0], math.prod(src[1:])]


def _behind_conv(node) -> bool:
    """Whether the nearest layer behind a node is a conv or batch norm (so channels are at dim 1)
    and no permute or transpose comes between."""
    stack, seen = list(node.inputs), set()
    while stack and len(seen) < 1000:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if isinstance(n.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            return True
        if isinstance(n.module, nn.Module) and not type(n.module).__name__.startswith("_"):
            return False  # another layer type (Linear, LayerNorm, ...): layout unknown
        if n.grad_fn is not None and n.grad_fn.name().startswith(("Permute", "Transpose")):
            return False
        stack.extend(n.inputs)
    return False


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

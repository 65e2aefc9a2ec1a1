"""Where Torch-Pruning's dependency graph needs help on real model zoos, and the fixes: outputs
it must not prune, layers it cannot see, and reshapes whose channel mapping it would guess wrong.
Used by the `prune_structured` stage; each function says what it repairs."""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn


def untraced(model: nn.Module, graph, units: dict) -> list[str]:
    """Conv/Linear layers the trace never reached (not inside a unit pruned whole)."""
    inside = {s for m in model.modules() if type(m) in units or isinstance(m, nn.MultiheadAttention)
              for s in m.modules() if s is not m}
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            and m not in graph.module2node and m not in inside]


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


def with_outputs_of(layers: list[nn.Module]):
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

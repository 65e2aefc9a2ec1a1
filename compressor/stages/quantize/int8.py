"""Static post-training INT8: BN folded, per-channel symmetric weights, per-tensor uint8
activations calibrated on the recipe's data. Leaves a fake-quantized PyTorch model (see
compressor.modules.quant) that the report measures and every target exports as Q/DQ."""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from compressor.errors import UserError
from compressor.core.interfaces import Context
from compressor.core.progress import tracked
from compressor.core.params import one_of
from compressor.modules.quant import OBSERVERS, QUANTIZABLE, MinMaxObserver, QuantWrapper, needs_reduce_range
from compressor.stages.select import without


@dataclass
class QuantizeInt8Params:
    calibration_batches: int = 8
    calibrator: str = "percentile"  # minmax | percentile | mse | entropy (KL, as TensorRT)
    percentile: float = 99.99
    weight_bits: int = 8  # 2..8; fewer bits store as int8 values in a narrower range
    # 7-bit weights in the layers an x86 CPU without VNNI multiplies with u8 x s8 pairwise sums
    # (VPMADDUBSW saturates int16): convs with groups=1 and Linear. Depthwise convs keep weight_bits
    # (ONNX Runtime's and oneDNN's depthwise kernels do not saturate). auto: only on such CPUs;
    # "true" | "false". With "false" there, the ONNX Runtime target stores the 8-bit weights of
    # those layers as uint8 (u8 x u8 kernels, exact but slower) instead of saturating.
    reduce_range: str = "auto"
    # Bias correction (as NNCF's fast bias correction): after calibration, each layer's bias absorbs
    # the mean shift (per output channel, over the calibration batches) that quantizing its weights
    # and input adds to its output, measured on the inputs the quantized model gives it.
    bias_correction: bool = True
    fold_bn: bool = True
    exclude: list[str] = field(default_factory=list)  # module-name patterns kept in float
    # Accuracy-aware mixed precision: if the metric drops more than this (absolute, vs the
    # model before the pipeline), the most sensitive layers go back to float until it holds.
    max_drop: Optional[float] = None

    def check(self):
        if self.calibration_batches < 1:
            yield "calibration_batches", f"must be >= 1, got {self.calibration_batches}"
        yield from one_of(self.calibrator, tuple(OBSERVERS), "calibrator")
        yield from one_of(self.reduce_range, ("auto", "true", "false"), "reduce_range")
        if not 50 < self.percentile <= 100:
            yield "percentile", f"must be in (50, 100], got {self.percentile}"
        if not 2 <= self.weight_bits <= 8:
            yield "weight_bits", f"must be in [2, 8], got {self.weight_bits}"
        if self.max_drop is not None and not 0 <= self.max_drop <= 1:
            yield "max_drop", f"must be in [0, 1], got {self.max_drop}"


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a conv into it (traced with torch.fx).
    Returns how many were folded; models fx cannot trace are left as they are."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return 0
    modules = dict(model.named_modules())
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        conv = modules.get(src.target)
        if isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            model.set_submodule(src.target, fuse_conv_bn_eval(conv.eval(), modules[node.target].eval()))
            model.set_submodule(node.target, nn.Identity())
            folded += 1
    return folded


ADDS = {operator.add, operator.iadd, torch.add}
PASS_THROUGH = (nn.Identity, nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def residual_convs(model: nn.Module) -> set[str]:
    """Names of the convs whose output is an input of an Add of two tensors (a residual
    connection), directly or through folded-away BatchNorms, ReLUs and max-pooling (a stem
    conv before a max-pool that feeds the first block). Empty where torch.fx cannot trace."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return set()
    modules = dict(model.named_modules())

    def source(node):
        while (node.op == "call_module" and isinstance(modules.get(node.target), PASS_THROUGH)) or \
                (node.op == "call_function" and node.target in (torch.relu, F.relu)):
            node = node.args[0]
        return node

    found = set()
    for node in graph.nodes:
        is_add = (node.op == "call_function" and node.target in ADDS) or (node.op == "call_method" and node.target in ("add", "add_"))
        if not is_add or len(node.args) < 2 or not all(isinstance(a, torch.fx.Node) for a in node.args[:2]):
            continue
        for arg in node.args[:2]:
            src = source(arg)
            if src.op == "call_module" and isinstance(modules.get(src.target), (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                found.add(src.target)
    return found


class QuantizeInt8:
    """Static post-training INT8 (per-channel weights, calibrated activations)."""

    params: QuantizeInt8Params
    precision = "int8"  # what this stage leaves; targets check they can run it
    calibrates = True  # needs calibration data: checked before any work

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        model.eval()
        folded = fold_batchnorm(model) if p.fold_bn else 0
        reduce = needs_reduce_range() if p.reduce_range == "auto" else p.reduce_range == "true"
        names = [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]
        residual = residual_convs(model)
        observer = (lambda: OBSERVERS[p.calibrator]()) if p.calibrator == "minmax" else \
            (lambda: OBSERVERS[p.calibrator](p.percentile))
        wrappers = []
        for name in without(names, p.exclude):
            layer = model.get_submodule(name)
            bits = min(p.weight_bits, 7 if reduce and not is_depthwise(layer) else 8)
            w = QuantWrapper(layer, weight_bits=bits, quantize_output=name in residual)
            w.observer = observer()
            # min/max for the outputs feeding residual Adds, as for the Adds in ONNX Runtime's quantizer:
            # clipping a signed pre-activation sum loses more than a coarser step does
            w.out_observer = MinMaxObserver() if w.quantize_output else None
            model.set_submodule(name, w)
            wrappers.append(w)
        seen = 0
        with torch.no_grad():
            for (x, _), _ in tracked(ctx.progress, zip(ctx.data.calib, range(p.calibration_batches)), "calibrating",
                                     p.calibration_batches):
                model(x.to(ctx.device))
                seen += len(x)
        if seen == 0:
            raise UserError("the calibration split is empty", key="calibration_batches")
        for name, w in zip(without(names, p.exclude), wrappers):
            lo, hi = w.observer.range()
            if not math.isfinite(lo) or not math.isfinite(hi):
                raise UserError(f"calibration saw NaN or Inf at the input of layer {name}: the model before this "
                                "stage computes non-finite values", key="")
            w.set_act_range(lo, hi)
            if w.quantize_output:
                w.set_out_range(*w.out_observer.range())
            w.set_weight_scale()
            w.observer = w.out_observer = None
        batches = (x for (x, _), _ in tracked(ctx.progress, zip(ctx.data.calib, range(p.calibration_batches)),
                                              "bias correction", p.calibration_batches))  # the calibration batches again
        shifts = correct_bias(model, batches, ctx.device) if p.bias_correction else {}
        if shifts:
            ctx.notes["bias_correction_mean_abs_shift"] = round(
                sum(float(v.abs().mean()) for v in shifts.values()) / len(shifts), 6)
        if p.max_drop is not None:
            ctx.notes["sensitivity_by_layer"] = mixed_precision(model, ctx, p.max_drop, shifts)
        ctx.notes.update(quantized_layers=sum(isinstance(m, QuantWrapper) for m in model.modules()), float_layers=[n for n in names if not
                         isinstance(model.get_submodule(n), QuantWrapper)], folded_batchnorms=folded,
                         calibration_samples=seen, reduce_range=reduce, quantized_residual_outputs=sum(w.quantize_output for w in wrappers),
                         reduce_range_reason="x86 without VNNI: u8s8 saturates int16" if reduce else "not needed")
        return model


def is_depthwise(layer: nn.Module) -> bool:
    """A conv with one input channel per group (MobileNet/EfficientNet's depthwise convs)."""
    return isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and layer.groups > 1 \
        and layer.in_channels == layer.groups


@torch.no_grad()
def correct_bias(model: nn.Module, batches, device: torch.device) -> dict[str, torch.Tensor]:
    """Bias correction in one pass over `batches`: for each QuantWrapper, the mean (over the batch
    and spatial positions, per output channel) of what it outputs minus what its float layer outputs
    on the same input, subtracted from its bias. Each layer corrects only the error it adds itself,
    on the inputs the quantized layers before it give it (a second pass would count it twice).
    Why: per-channel weight rounding of BN-folded convs (depthwise above all) shifts output means,
    and the shifts add up through a deep network (efficientnet-lite0: top-1 agreement with FP32
    0.84 -> 0.93 on the `photos` data with 8-bit weights). Returns each layer's shift (what a layer
    put back in float must add to its bias again)."""
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, QuantWrapper) and not m.dynamic}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def record(m, inputs, out):
            diff = (out - m.inner(inputs[0])).double()
            channel = -1 if isinstance(m.inner, nn.Linear) else 1  # (..., C) or (N, C, ...)
            diff = diff.movedim(channel, -1).reshape(-1, diff.shape[channel])
            sums[name] = sums.get(name, 0) + diff.sum(0)
            counts[name] = counts.get(name, 0) + diff.shape[0]
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in wrappers.items()]
    try:
        for x in batches:
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    shifts = {}
    for name, m in wrappers.items():
        if name not in sums:
            continue
        shift = (sums[name] / counts[name]).to(m.inner.weight.dtype)
        if m.inner.bias is None:
            m.inner.bias = nn.Parameter(torch.zeros(m.inner.weight.shape[0], dtype=m.inner.weight.dtype,
                                                    device=m.inner.weight.device))
        m.inner.bias.sub_(shift.to(m.inner.bias.device))
        shifts[name] = shift
    return shifts


def mixed_precision(model: nn.Module, ctx: Context, max_drop: float,
                    shifts: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Put layers back in float, most sensitive first, until the metric drop is within budget.
    Sensitivity of a layer: how much of the metric comes back when only it is left in float.
    `shifts`: bias corrections (see correct_bias), undone while a layer is in float."""
    shifts = shifts or {}

    def score(m: nn.Module) -> float:
        return next(iter(ctx.evaluate(m).values()))

    @torch.no_grad()
    def swap(name: str, wrapper: QuantWrapper, to_float: bool) -> None:
        if name in shifts:  # the float layer gets its own bias back; the quantized one its corrected bias
            wrapper.inner.bias.add_(shifts[name] if to_float else -shifts[name])
        model.set_submodule(name, wrapper.inner if to_float else wrapper)

    reference = score(ctx.teacher)
    current = score(model)
    if reference - current <= max_drop:
        return {}
    gains = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantWrapper):
            swap(name, m, to_float=True)
            gains[name] = round(score(model) - current, 6)
            swap(name, m, to_float=False)
    for name in sorted(gains, key=gains.get, reverse=True):
        if reference - current <= max_drop:
            break
        swap(name, model.get_submodule(name), to_float=True)
        current = score(model)
    return gains

"""Static post-training INT8: BN folded, per-channel symmetric weights, per-tensor uint8
activations calibrated on the recipe's data. Leaves a fake-quantized PyTorch model (see
compressor.quant) that the report measures and every target exports as Q/DQ."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from compressor.errors import UserError
from compressor.interfaces import Context
from compressor.params import one_of
from compressor.quant import OBSERVERS, QUANTIZABLE, QuantWrapper, needs_reduce_range
from compressor.select import without


@dataclass
class QuantizeInt8Params:
    calibration_batches: int = 8
    calibrator: str = "percentile"  # minmax | percentile | mse | entropy (KL, as TensorRT)
    percentile: float = 99.99
    weight_bits: int = 8  # 2..8; fewer bits store as int8 values in a narrower range
    reduce_range: str = "auto"  # auto: 7-bit weights on x86 without VNNI; "true" | "false"
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
        wrappers = []
        for name in without(names, p.exclude):
            w = QuantWrapper(model.get_submodule(name), weight_bits=min(p.weight_bits, 7 if reduce else 8))
            w.observer = OBSERVERS[p.calibrator]() if p.calibrator == "minmax" else OBSERVERS[p.calibrator](p.percentile)
            model.set_submodule(name, w)
            wrappers.append(w)
        seen = 0
        with torch.no_grad():
            for i, (x, _) in enumerate(ctx.data.calib):
                if i >= p.calibration_batches:
                    break
                model(x.to(ctx.device))
                seen += len(x)
        if seen == 0:
            raise UserError("the calibration split is empty", key="calibration_batches")
        ctx.shared["calibration_batches"] = p.calibration_batches  # targets calibrate residual Adds alike
        for name, w in zip(without(names, p.exclude), wrappers):
            lo, hi = w.observer.range()
            if not math.isfinite(lo) or not math.isfinite(hi):
                raise UserError(f"calibration saw NaN or Inf at the input of layer {name}: the model before this "
                                "stage computes non-finite values", key="")
            w.set_act_range(lo, hi)
            w.set_weight_scale()
            w.observer = None
        if p.max_drop is not None:
            ctx.notes["sensitivity_by_layer"] = mixed_precision(model, ctx, p.max_drop)
        ctx.notes.update(quantized_layers=sum(isinstance(m, QuantWrapper) for m in model.modules()), float_layers=[n for n in names if not
                         isinstance(model.get_submodule(n), QuantWrapper)], folded_batchnorms=folded,
                         calibration_samples=seen, reduce_range=reduce,
                         reduce_range_reason="x86 without VNNI: u8s8 saturates int16" if reduce else "not needed")
        return model


def mixed_precision(model: nn.Module, ctx: Context, max_drop: float) -> dict[str, float]:
    """Put layers back in float, most sensitive first, until the metric drop is within budget.
    Sensitivity of a layer: how much of the metric comes back when only it is left in float."""
    def score(m: nn.Module) -> float:
        return next(iter(ctx.evaluate(m).values()))

    reference = score(ctx.teacher)
    current = score(model)
    if reference - current <= max_drop:
        return {}
    gains = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantWrapper):
            model.set_submodule(name, m.inner)
            gains[name] = round(score(model) - current, 6)
            model.set_submodule(name, m)
    for name in sorted(gains, key=gains.get, reverse=True):
        if reference - current <= max_drop:
            break
        model.set_submodule(name, model.get_submodule(name).inner)
        current = score(model)
    return gains

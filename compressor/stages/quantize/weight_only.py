"""Weight-only quantization for Linear-heavy models (transformers, MLPs, causal LMs): INT8 or INT4
weights per output channel or in groups of input features, activations left in float. Memory and
file size shrink 4-8x; ONNX Runtime runs the layers as MatMulNBits (targets/onnx/weight_only.py,
targets/onnx/llm.py), which dequantizes the weights on the fly, so the gain is bandwidth.

Methods: `rtn` rounds each weight to the nearest step of its group's grid (no data); on a causal
LM, `gptq` (stages/quantize/gptq.py) and `awq` (stages/quantize/awq.py) calibrate layer by layer
(stages/blockwise.py), `awq_gptq` does both (AWQ's scales, then GPTQ on the scaled weights), and
`autoround` calls Intel's auto-round library (signed gradient descent on the rounding, the best
4-bit quality here; the `llm` extra) and keeps its integers.

Groups must divide a layer's input width: where `group_size` does not (SmolLM2's 576-wide
layers and 128), the layer takes the largest power-of-two group below it that does (64), and the
report lists the group each width got. `group_size: 0` is one grid per output channel.
On a causal LM `lm_head` (and the input embedding tied to it: one table, quantized once) takes
`head_bits` by round-to-nearest: a Hessian update for the output projection would move the rows
that the embedding looks up."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from compressor.core.interfaces import Context
from compressor.core.params import one_of
from compressor.errors import UserError
from compressor.models.causal_lm import is_causal_lm
from compressor.modules.quant import WeightOnly
from compressor.stages.quantize.groups import GROUP_SIZES, export_block, fitted_group
from compressor.stages.select import without

METHODS = ("rtn", "gptq", "awq", "awq_gptq", "autoround")
CALIBRATED = METHODS[1:]


@dataclass
class QuantizeWeightOnlyParams:
    bits: int = 4  # 4 or 8
    group_size: int = 128  # input features sharing one scale: 16, 32, 64, 128 or 256; 0: per output channel
    symmetric: bool = False  # asymmetric (a zero point per group) is the more accurate at 4 bits
    method: str = "rtn"  # rtn, gptq, awq, awq_gptq (causal LMs) or autoround (causal LMs, the `llm` extra)
    exclude: list[str] = field(default_factory=list)  # module-name patterns kept in float
    head_bits: Optional[int] = 8  # causal LMs: lm_head and its tied embedding (4 or 8); null keeps them float
    damp: float = 0.01  # gptq: added to the Hessian's diagonal, as a share of its mean
    act_order: bool = True  # gptq: columns by decreasing activation energy (better at 4 bits)
    iters: int = 200  # autoround: optimisation steps per block
    lr: Optional[float] = None  # autoround: its learning rate; None = its 1/iters (its "light" recipe: iters 50, lr 0.005)
    calibration_windows: Optional[int] = None  # how many calibration windows to use; default all
    # float, or int8: activations rounded per token and block of input features, what MatMulNBits at
    # accuracy level 4 computes (its integer path: ~3x faster INT4 decoding on AVX2 than float activations)
    activations: str = "float"

    def check(self):
        if self.bits not in (4, 8):
            yield "bits", f"must be 4 or 8, got {self.bits}"
        if self.head_bits not in (None, 4, 8):
            yield "head_bits", f"must be 4, 8 or null, got {self.head_bits}"
        if self.group_size not in GROUP_SIZES:
            yield "group_size", f"must be one of {', '.join(map(str, GROUP_SIZES))}, got {self.group_size}"
        yield from one_of(self.method, METHODS, "method")
        yield from one_of(self.activations, ("float", "int8"), "activations")
        if not 0 <= self.damp < 1:
            yield "damp", f"must be in [0, 1), got {self.damp}"
        if self.iters < 0:
            yield "iters", f"must be >= 0, got {self.iters}"
        if self.lr is not None and not self.lr > 0:
            yield "lr", f"must be > 0 or null, got {self.lr}"
        if self.method == "autoround":
            import importlib.util

            if importlib.util.find_spec("auto_round") is None:
                yield "method", "autoround needs the auto-round package: pip install 'compressor[llm]'"


class QuantizeWeightOnly:
    """INT8 / INT4 Linear weights, float activations; calibrated methods for causal LMs."""

    params: QuantizeWeightOnlyParams

    @staticmethod
    def precision(p: QuantizeWeightOnlyParams) -> str:  # what the stage leaves depends on its bits
        return f"int{p.bits}_weight_only"

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        p = self.params
        names = [n for n, m in model.named_modules() if type(m) is nn.Linear]
        if not names:
            raise UserError("the model has no Linear layer for weight-only quantization", key="")
        lm = is_causal_lm(model)
        if p.method in CALIBRATED and not lm:
            raise UserError(f"method {p.method} calibrates a causal language model layer by layer; "
                            "this model is not one (use method: rtn)", key="method")
        head = [n for n in names if n.endswith("lm_head")] if lm else []
        chosen = [n for n in without(names, p.exclude) if n not in head]
        groups = {}
        if p.method == "rtn":
            for name in chosen:
                groups[name] = _quantize(model, name, p.bits, p.group_size, p.symmetric)
        else:
            from compressor.stages.quantize import calibrated

            groups = calibrated.quantize(model, set(chosen), p, ctx)
        if head and p.head_bits:
            groups.update({n: _quantize(model, n, p.head_bits, p.group_size, p.symmetric) for n in head})
        if p.activations == "int8":  # lm_head too: at 49k x 576 it is most of a decode step's matmul time
            for name in groups:
                m = model.get_submodule(name)
                m.act_block = export_block(m.inner.in_features, m.group_size)
        ctx.notes.update(method=p.method, quantized_layers=len(groups),
                         float_layers=[n for n in names if n not in groups], bits=p.bits, symmetric=p.symmetric,
                         group_size=p.group_size, groups_by_width=_by_width(model, groups),
                         head_bits=p.head_bits if head else None, activations=p.activations)
        return model.eval()


def _quantize(model: nn.Module, name: str, bits: int, group_size: int, symmetric: bool) -> int:
    """Round-to-nearest: replace one Linear by its WeightOnly; returns the group it got."""
    lin = model.get_submodule(name)
    g = fitted_group(lin.in_features, group_size)
    w = WeightOnly(lin, bits, g, symmetric)
    w.quantize()
    model.set_submodule(name, w)
    return g


def _by_width(model: nn.Module, groups: dict[str, int]) -> dict[str, int]:
    out = {}
    for name, g in groups.items():
        out[str(model.get_submodule(name).inner.in_features)] = g
    return out

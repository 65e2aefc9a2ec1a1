"""Intel's auto-round (signed gradient descent on each weight's rounding and on each group's
clipping range, block by block against the float block's output) on a causal LM, its result taken
as integers and grids that `compressor.modules.quant.WeightOnly` holds exactly.

auto-round is an optional dependency (`pip install auto-round`): it is imported inside the
functions. It runs on the CPU here, on the token windows it is given (never its default download
of NeelNanda/pile-10k), on a copy of the model: the caller's model is left as it was.

What auto-round leaves on each quantized Linear after `quantize()` (no export format): the weight
replaced by its fake-quantized values `scale * (q - zp)` computed in float32 with a float16 scale,
`scale` (out, groups) and `zp` ((out, groups) asymmetric; the int 2^(bits-1) symmetric, where its
integers q + zp lie in [0, 2^bits - 1] and the scale may be negative: auto-round gives the wider
half of the signed range, -2^(bits-1), to the side of the group's larger magnitude). WeightOnly's
dequantization `(q - zero_point) * scale` in float32 is the same product, so the dequantized
weights are bit-equal and the integers recovered by rounding are auto-round's own."""
from __future__ import annotations

import copy
import os
import tempfile

import torch
from torch import nn

from compressor.errors import UserError
from compressor.modules.quant import WeightOnly
from compressor.stages.quantize.groups import fitted_group


class _TokenIds:
    """The tokenizer auto-round asks for although it is fed token ids: no pad token, so no
    position of the windows is masked or dropped from its loss as padding."""

    pad_token = None
    pad_token_id = None

    def save_pretrained(self, *args, **kwargs) -> None:  # auto-round saves its tokenizer on export
        pass


def _inner(model: nn.Module) -> tuple[nn.Module, str]:
    """The transformers model inside our CausalLM wrapper, and the prefix its names take in ours."""
    from compressor.models.causal_lm import CausalLM

    return (model.model, "model.") if isinstance(model, CausalLM) else (model, "")


def _block_linears(inner: nn.Module) -> list[str]:
    """The Linears of the decoder blocks (what auto-round quantizes; lm_head stays float)."""
    return [n for n, m in inner.named_modules() if type(m) is nn.Linear and ".layers." in f".{n}"]


def autoround_layers(model, calib: torch.Tensor, *, bits: int, group_size: int | None, symmetric: bool, iters: int,
                     seed: int, lr: float | None = None, layers: list[str] | None = None, export_dir: str | None = None) -> dict[str, dict]:
    """Run auto-round on `model.model` (the LlamaForCausalLM inside our CausalLM; a bare
    transformers model works too) with `calib` token windows (N, T) int64 as its calibration
    data (nsamples N, seqlen T, its other settings its defaults: batch 8, lr `lr` or its 1/iters, min/max
    tuning, quantized block inputs). `layers`: our names (as in model.named_modules()) of the
    Linears to quantize, default every Linear of the decoder blocks; the others stay float.

    Group fitting: auto-round pads a width its group does not divide, which WeightOnly does not
    hold the same way, so each layer gets `fitted_group(in_features, group_size)`: group_size
    halved until it divides the width (SmolLM2: 128 for down_proj's 1536 inputs, 64 for the
    576-wide ones, 576 = 9 * 64); None: one group per output channel.

    Returns, per quantized Linear (our name): "integers" (out, groups, group_size) uint8 in
    [0, 2^bits - 1], "scale" (out, groups) float32 (auto-round's float16 values), "zero_point"
    (out, groups) uint8, "group_size", "bits", "symmetric", and "weight" (out, in) float32:
    auto-round's fake-quantized weight, equal to (integers - zero_point) * scale.

    `export_dir`: also save auto-round's own artifact there (its `auto_round` format, the packed
    INT4 checkpoint that transformers loads through auto-round's kernels)."""
    try:
        from auto_round import AutoRound
    except ImportError as e:
        raise UserError("method autoround needs the auto-round package: pip install auto-round") from e
    inner, prefix = _inner(model)
    calib = torch.as_tensor(calib, dtype=torch.long)
    if calib.dim() != 2 or len(calib) == 0:
        raise UserError(f"auto-round needs calibration windows (samples, tokens), got shape {tuple(calib.shape)}")
    available = _block_linears(inner)
    if layers is None:
        chosen = available
    else:
        wanted = {n[len(prefix):] if prefix and n.startswith(prefix) else n for n in layers}
        chosen = [n for n in available if n in wanted]
        missing = wanted - set(chosen)
        if missing:
            raise UserError(f"auto-round quantizes Linears of the decoder blocks only; not such: {sorted(missing)[:5]}")
    groups = {}
    layer_config = {}
    for n in available:
        if n in chosen:
            k = inner.get_submodule(n).in_features
            g = fitted_group(k, group_size) if group_size else k
            groups[n] = g
            layer_config[n] = {"bits": bits, "group_size": g if g < k else -1, "sym": symmetric}
        else:
            layer_config[n] = {"bits": 16}  # auto-round's way to keep a layer float
    if not chosen:
        return {}

    work = copy.deepcopy(inner).float().eval()
    threads = torch.get_num_threads()
    space = None if os.environ.get("AR_WORK_SPACE") else tempfile.TemporaryDirectory(prefix="autoround_")
    if space is not None:  # its offload folder, otherwise ./ar_work_space in the current directory
        os.environ["AR_WORK_SPACE"] = space.name
    try:
        ar = AutoRound(work, tokenizer=_TokenIds(), scheme=f"W{bits}A16", dataset=[w[None] for w in calib],
                       iters=iters, lr=lr, nsamples=len(calib), seqlen=calib.shape[1], batch_size=min(8, len(calib)),
                       device_map="cpu", layer_config=layer_config, seed=seed)
        quantized, _ = ar.quantize()
        results = _results(quantized, prefix, chosen, groups, bits, symmetric)
        if export_dir is not None:
            ar.save_quantized(str(export_dir), format="auto_round", inplace=True)
    finally:
        torch.set_num_threads(threads)
        if space is not None:
            os.environ.pop("AR_WORK_SPACE", None)
            space.cleanup()
    return results


def _results(quantized: nn.Module, prefix: str, chosen: list[str], groups: dict[str, int], bits: int,
             symmetric: bool) -> dict[str, dict]:
    results = {}
    with torch.no_grad():
        for n in chosen:
            lin = quantized.get_submodule(n)
            g, top = groups[n], 2 ** bits - 1
            w = lin.weight.detach().float()
            scale = torch.as_tensor(lin.scale).float().reshape(w.shape[0], -1)
            zp = lin.zp
            zp = torch.full_like(scale, float(zp)) if not torch.is_tensor(zp) or zp.numel() == 1 else \
                zp.float().reshape(w.shape[0], -1)
            if scale.shape[1] * g != w.shape[1]:
                raise RuntimeError(f"auto-round left {n} with {scale.shape[1]} groups, not {w.shape[1]} / {g}")
            q = (w.reshape(w.shape[0], -1, g) / scale.unsqueeze(2) + zp.unsqueeze(2)).round()
            if float(q.min()) < 0 or float(q.max()) > top or float(zp.min()) < 0 or float(zp.max()) > top:
                raise RuntimeError(f"auto-round's integers of {n} fall outside [0, {top}]")
            results[prefix + n] = {"integers": q.to(torch.uint8), "scale": scale, "zero_point": zp.to(torch.uint8),
                                   "group_size": g, "bits": bits, "symmetric": symmetric,
                                   "weight": lin.weight.detach().clone()}  # in auto-round's dtype (see to_weight_only)
    return results


@torch.no_grad()
def to_weight_only(model: nn.Module, results: dict[str, dict]) -> None:
    """Replace each Linear named in `results` (from `autoround_layers`) by a WeightOnly whose
    scale and zero point are auto-round's and whose inner weight is (integers - zero_point) *
    scale, bit-equal to auto-round's fake-quantized weight. The buffers are set directly, not
    through WeightOnly.assign, which clamps scales to positive values: auto-round's symmetric
    scales can be negative. Raises if WeightOnly does not give back auto-round's integers, or
    (where the result carries it) if its weight, rounded to auto-round's dtype, differs from
    auto-round's by 1e-6 or more."""
    for name, r in results.items():
        lin = model.get_submodule(name)
        if not isinstance(lin, nn.Linear):
            raise UserError(f"{name} is a {type(lin).__name__}, not a Linear to quantize")
        wo = WeightOnly(lin, r["bits"], r["group_size"], r.get("symmetric", False))
        wo.scale.copy_(r["scale"])
        wo.zero_point.copy_(r["zero_point"])
        lin.weight.copy_(wo._dequantize(r["integers"]).to(lin.weight.dtype))
        if not torch.equal(wo.integers(), r["integers"].to(torch.uint8)):
            raise RuntimeError(f"{name}: WeightOnly does not recover auto-round's integers")
        if "weight" in r:  # auto-round tunes in bf16 where the CPU has it (AVX-512 BF16, AMX): its weight is
            # our exact dequantization rounded to bf16, so compare in its dtype
            diff = float((lin.weight.to(r["weight"].dtype).float() - r["weight"].float()).abs().max())
            if diff >= 1e-6:
                raise RuntimeError(f"{name}: weight differs from auto-round's by {diff:.3g}")
        model.set_submodule(name, wo)

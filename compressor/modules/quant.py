"""Fake quantization in PyTorch: the one quantized model every backend reads.

Why by hand: torch.ao.quantization is deprecated in torch 2.14, and torchao's PT2E flow
failed on resnet18 here (see issue 4). A `QuantWrapper` around each Conv/Linear holds
calibrated scales as buffers; its forward runs `torch.fake_quantize_*`, so the metric the
report measures in PyTorch is the quantized model's, and torch.onnx exports it as
QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into integer kernels.
Activations: uint8 asymmetric per tensor. Weights: int8 symmetric per output channel.
`WeightOnly` (INT8/INT4 weights in groups, float activations) is the weight-only variant.
"""
from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class QuantWrapper(nn.Module):
    """Fake-quantizes the input activation and the weight of one Conv/Linear."""

    def __init__(self, inner: nn.Module, weight_bits: int = 8, dynamic: bool = False, quantize_output: bool = False,
                 activations: str = "per_tensor"):
        super().__init__()
        self.inner = inner
        self.weight_bits = weight_bits  # 7 = reduce_range (see `needs_reduce_range`); 2..8 allowed
        self.dynamic = dynamic  # activation range measured on each input, as ONNX Runtime's dynamic INT8 does
        # A conv whose output feeds a residual Add: its output is fake-quantized too, so the export
        # has a Q/DQ after it (ONNX Runtime runs it as QLinearConv) and PyTorch computes what the
        # engine computes. The Add itself stays float: its other input is not ours to quantize.
        self.quantize_output = quantize_output
        # dynamic only: "per_tensor" (one uint8 range per input, ONNX Runtime's DynamicQuantizeLinear) or
        # "per_token" (one symmetric scale per row of the input's last axis; see `per_token_linear`)
        self.activations = activations
        out = inner.weight.shape[0]
        self.register_buffer("act_scale", torch.ones(()))
        self.register_buffer("act_zero_point", torch.zeros((), dtype=torch.int32))
        self.register_buffer("weight_scale", torch.ones(out))
        if quantize_output:
            self.register_buffer("out_scale", torch.ones(()))
            self.register_buffer("out_zero_point", torch.zeros((), dtype=torch.int32))
        self.observer = None  # set during calibration only
        self.out_observer = None

    @property
    def qmax(self) -> int:
        return 2 ** (self.weight_bits - 1) - 1

    @torch.no_grad()
    def set_weight_scale(self) -> None:
        w = self.inner.weight.detach().flatten(1).abs().amax(1)
        self.weight_scale.copy_((w / self.qmax).clamp_min(1e-12))

    def set_act_range(self, lo: float, hi: float) -> None:
        _set_uint8_range(self.act_scale, self.act_zero_point, lo, hi)

    def set_out_range(self, lo: float, hi: float) -> None:
        _set_uint8_range(self.out_scale, self.out_zero_point, lo, hi)

    def quantized_weight(self) -> torch.Tensor:
        # The op's range stays int8 (what ONNX accepts); the scale (max |w| / qmax) keeps
        # values inside +-qmax, so 7-bit weights are plain int8 values that never exceed 63.
        zp = torch.zeros_like(self.weight_scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(self.inner.weight, self.weight_scale, zp, 0, -128, 127)

    def weight_integers(self) -> torch.Tensor:
        """The integers of `quantized_weight` (float tensor, values in [-qmax, qmax]), kept until
        the weight or its scale change (in-place changes bump a tensor's version)."""
        w, scale = self.inner.weight, self.weight_scale
        key = (w.data_ptr(), w._version, scale.data_ptr(), scale._version)
        if getattr(self, "_integers_key", None) != key:
            with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable outside inference mode too
                self._integers = torch.round(self.quantized_weight() / scale.reshape(-1, *[1] * (w.dim() - 1)))
            self._integers_key = key
        return self._integers

    # --- quantization-aware training -------------------------------------------------
    # Plain QAT: the fake-quant ops pass gradients straight through (inside the range) and the
    # weight scale follows the weights. LSQ (Esser et al. 2020): the scales are learned too,
    # through torch's learnable fake-quant kernels. `freeze` turns learned scales back into
    # the buffers that export and checkpoints read.

    def enable_lsq(self) -> None:
        self.act_scale_p = nn.Parameter(self.act_scale.reshape(1).clone())
        self.weight_scale_p = nn.Parameter(self.weight_scale.clone())

    def freeze(self) -> None:
        if hasattr(self, "act_scale_p"):
            with torch.no_grad():
                self.act_scale.copy_(self.act_scale_p.detach().abs().reshape(()).clamp_min(1e-12))
                self.weight_scale.copy_(self.weight_scale_p.detach().abs().clamp_min(1e-12))
            del self.act_scale_p, self.weight_scale_p

    def _lsq(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zp = self.act_zero_point.float().reshape(1)
        g_act = 1.0 / (x[0].numel() * 255) ** 0.5
        x = torch._fake_quantize_learnable_per_tensor_affine(x, self.act_scale_p, zp, 0, 255, g_act)
        w = self.inner.weight
        g_w = 1.0 / (w[0].numel() * self.qmax) ** 0.5
        w = torch._fake_quantize_learnable_per_channel_affine(
            w, self.weight_scale_p, torch.zeros_like(self.weight_scale_p), 0, -self.qmax, self.qmax, g_w)
        return x, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._forward(x)
        if self.out_observer is not None:
            self.out_observer.observe(y)
        elif self.quantize_output and self.observer is None:
            y = torch.fake_quantize_per_tensor_affine(y, float(self.out_scale), int(self.out_zero_point), 0, 255)
        return y

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.observe(x)
            return self.inner(x)
        if hasattr(self, "act_scale_p"):
            x, w = self._lsq(x)
        elif self.dynamic and self.activations == "per_token":
            return per_token_linear(x, self.weight_integers(), self.weight_scale, self.inner.bias)
        elif self.dynamic:
            with torch.no_grad():
                self.set_act_range(float(x.min()), float(x.max()))
            x = torch.fake_quantize_per_tensor_affine(x, float(self.act_scale), int(self.act_zero_point), 0, 255)
            w = self.quantized_weight()
        else:
            if self.training:
                self.set_weight_scale()
            x = torch.fake_quantize_per_tensor_affine(x, float(self.act_scale), int(self.act_zero_point), 0, 255)
            w = self.quantized_weight()
        if isinstance(self.inner, nn.Linear):
            return F.linear(x, w, self.inner.bias)
        return self.inner._conv_forward(x, w, self.inner.bias)


def _set_uint8_range(scale: torch.Tensor, zero_point: torch.Tensor, lo: float, hi: float) -> None:
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero must be exactly representable
    s = max((hi - lo) / 255.0, 1e-12)
    scale.fill_(s)
    zero_point.fill_(int(min(255, max(0, round(-lo / s)))))


class MinMaxObserver:
    def __init__(self):
        self.lo, self.hi = float("inf"), float("-inf")

    def observe(self, x: torch.Tensor) -> None:
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def range(self) -> tuple[float, float]:
        return self.lo, self.hi


class SampleObserver:
    """Keeps a bounded, fixed-seed sample of the values seen (plus the true min/max); the
    calibrators below choose a clipping range from it."""

    def __init__(self, percentile: float = 99.99, max_samples: int = 1 << 20):
        self.percentile, self.max_samples, self.samples = percentile, max_samples, []
        self.minmax = MinMaxObserver()

    def observe(self, x: torch.Tensor) -> None:
        self.minmax.observe(x)
        flat = x.detach().flatten().float()
        if flat.numel() > 65536:
            g = torch.Generator().manual_seed(len(self.samples))
            flat = flat[torch.randint(flat.numel(), (65536,), generator=g)]
        self.samples.append(flat)

    def values(self) -> torch.Tensor:
        return torch.cat(self.samples)[: self.max_samples]


class PercentileObserver(SampleObserver):
    """Clips outliers: the range covers `percentile` % of the values seen."""

    def range(self) -> tuple[float, float]:
        v, q = self.values(), self.percentile / 100.0
        return float(torch.quantile(v, 1 - q)), float(torch.quantile(v, q))


def _uint8_error(v: torch.Tensor, lo: float, hi: float) -> float:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    zp = int(min(255, max(0, round(-lo / scale))))
    return float((torch.fake_quantize_per_tensor_affine(v, scale, zp, 0, 255) - v).pow(2).mean())


class MSEObserver(SampleObserver):
    """The clipping range (a fraction of min/max) with the least quantization error."""

    def range(self) -> tuple[float, float]:
        v = self.values()
        lo, hi = self.minmax.range()
        best = min(torch.linspace(0.2, 1.0, 41).tolist(), key=lambda c: _uint8_error(v, lo * c, hi * c))
        return lo * best, hi * best


class EntropyObserver(SampleObserver):
    """TensorRT's KL-divergence calibration: the threshold whose 128-level quantized histogram
    of |x| stays closest (in KL) to the original one."""

    bins, levels = 2048, 128

    def range(self) -> tuple[float, float]:
        lo, hi = self.minmax.range()
        v = self.values().abs()
        top = float(v.max())
        if top == 0:
            return lo, hi
        hist = torch.histc(v, bins=self.bins, min=0, max=top).double()
        best_i, best_kl = self.bins, float("inf")
        for i in range(self.levels, self.bins + 1, 16):
            p = hist[:i].clone()
            p[-1] += hist[i:].sum()  # the reference: outliers clipped into the last bin
            # the candidate: the same bins (without the clipped mass) merged into 128 levels, each
            # level's mass spread evenly over the bins that were non-empty
            level = torch.arange(i) * self.levels // i
            h = hist[:i]
            mass = torch.zeros(self.levels, dtype=h.dtype).index_add_(0, level, h)
            used = torch.zeros(self.levels, dtype=h.dtype).index_add_(0, level, (h > 0).to(h.dtype))
            q = torch.where(h > 0, mass[level] / used[level].clamp_min(1), torch.zeros_like(h))
            kl = _kl(p, q)
            if kl < best_kl:
                best_i, best_kl = i, kl
        t = top * best_i / self.bins
        return max(lo, -t), min(hi, t)


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    p, q = p / p.sum(), q / q.sum().clamp_min(1e-12)
    mask = p > 0
    return float((p[mask] * (p[mask] / q[mask].clamp_min(1e-12)).log()).sum())


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver,
             "entropy": EntropyObserver}


X86_MACHINES = ("x86_64", "amd64", "i686", "x86")  # platform.machine() of x86 CPUs


def needs_reduce_range() -> bool:
    """True on x86 CPUs without VNNI/AMX: their u8s8 dot product (VPMADDUBSW) saturates at
    16 bits, which is what dropped INT8 ResNet-50 from 74.8 to 69.0 top-1 on such AMD machines.
    7-bit weights keep every pairwise sum inside int16."""
    if platform.machine().lower() not in X86_MACHINES:
        return False
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return True
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantWrapper) for m in model.modules())


def is_dynamic(model: nn.Module) -> bool:
    return any(isinstance(m, QuantWrapper) and m.dynamic for m in model.modules())


def float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating weights (float16 after an fp16 stage, ...)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def as_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Float inputs in the model's float dtype; token ids and other integers unchanged."""
    return x.to(float_dtype(model)) if x.is_floating_point() else x


def group_grid(w: torch.Tensor, bits: int, symmetric: bool, clip: torch.Tensor | float = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (float, integral) of each group of w (..., group_size): asymmetric spans
    [min, max] (widened to hold 0), symmetric [-max|w|, max|w|] around 2^(bits-1); `clip` < 1 shrinks
    the range (AWQ's and scale estimation's clipping search)."""
    top = 2 ** bits - 1
    if symmetric:  # values in [-(2^(b-1) - 1), 2^(b-1) - 1] around 2^(b-1)
        scale = w.abs().amax(-1) * clip / (2 ** (bits - 1) - 1)
        return scale.clamp_min(1e-12), torch.full_like(scale, 2 ** (bits - 1))
    lo, hi = w.amin(-1).clamp(max=0) * clip, w.amax(-1).clamp(min=0) * clip
    scale = ((hi - lo) / top).clamp_min(1e-12)
    return scale, (-lo / scale).round().clamp(0, top)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int) -> torch.Tensor:
    """w (..., group_size) rounded onto its groups' grids (scale, zp of shape (...))."""
    q = (w / scale.unsqueeze(-1) + zp.unsqueeze(-1)).round().clamp(0, 2 ** bits - 1)
    return (q - zp.unsqueeze(-1)) * scale.unsqueeze(-1)


class WeightOnly(nn.Module):
    """A Linear whose weight sits on a group-wise integer grid (INT8 or INT4), activations
    float: what ONNX Runtime's MatMulNBits runs. Groups of `group_size` consecutive input
    features per output row share a scale and a zero point (symmetric: zero point 2^(bits-1)).
    The inner weight holds the dequantized values, so forward is the Linear itself and the
    integers are exactly recoverable for export (`integers`)."""

    def __init__(self, inner: nn.Linear, bits: int = 4, group_size: int = 128, symmetric: bool = False):
        super().__init__()
        self.inner, self.bits, self.group_size, self.symmetric = inner, bits, group_size, symmetric
        self.act_block = 0  # > 0: activations rounded to int8 per block of this many features (W8A8)
        groups = -(-inner.in_features // group_size)
        self.register_buffer("scale", torch.ones(inner.out_features, groups))
        self.register_buffer("zero_point", torch.full((inner.out_features, groups), 2 ** (bits - 1), dtype=torch.uint8))

    def _grouped(self, w: torch.Tensor) -> torch.Tensor:
        """(out, in) -> (out, groups, group_size), zero-padded: zero is on every grid."""
        pad = self.scale.shape[1] * self.group_size - w.shape[1]
        return F.pad(w, (0, pad)).reshape(w.shape[0], -1, self.group_size)

    @torch.no_grad()
    def quantize(self) -> None:
        """Round to nearest on the grid of each group's min/max (or max |w|)."""
        scale, zp = group_grid(self._grouped(self.inner.weight.float()), self.bits, self.symmetric)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp.to(torch.uint8))
        self.inner.weight.copy_(self._dequantize(self.integers()).to(self.inner.weight.dtype))

    @torch.no_grad()
    def assign(self, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Take integers (out, groups, group_size) and their grid from an algorithm (GPTQ, AWQ,
        auto-round): the inner weight becomes exactly their dequantized values."""
        # magnitude kept off zero, sign kept: auto-round's symmetric grids have negative scales
        self.scale.copy_(torch.where(scale < 0, scale.clamp(max=-1e-12), scale.clamp(min=1e-12)))
        self.zero_point.copy_(zero_point.to(torch.uint8))
        self.inner.weight.copy_(self._dequantize(q).to(self.inner.weight.dtype))

    def integers(self) -> torch.Tensor:
        """(out, groups, group_size) uint8 in [0, 2^bits - 1]."""
        w = self._grouped(self.inner.weight.float())
        zp = self.zero_point.float().unsqueeze(2)
        return (w / self.scale.unsqueeze(2) + zp).round().clamp(0, 2 ** self.bits - 1).to(torch.uint8)

    def _dequantize(self, q: torch.Tensor) -> torch.Tensor:
        w = (q.float() - self.zero_point.float().unsqueeze(2)) * self.scale.unsqueeze(2)
        return w.reshape(w.shape[0], -1)[:, : self.inner.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_block:
            x = quantize_activation_blocks(x, self.act_block)
        return self.inner(x)


def quantize_activation_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """What MatMulNBits with accuracy_level 4 does to its input before the integer dot products:
    each row's consecutive `block` features share one symmetric int8 scale (max |x| / 127)."""
    k = x.shape[-1]
    pad = -k % block
    xb = F.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, block)
    scale = xb.abs().amax(-1, keepdim=True) / 127
    q = torch.where(scale > 0, torch.round(xb / scale.clamp_min(1e-30)), torch.zeros_like(xb))
    return (q * scale).reshape(*x.shape[:-1], -1)[..., :k]


def is_weight_only(model: nn.Module) -> bool:
    return any(isinstance(m, WeightOnly) for m in model.modules())


# --- dynamic INT8 with one activation scale per token ------------------------------------------
# Why by hand: ONNX Runtime's quantize_dynamic has one activation range per tensor (its
# DynamicQuantizeLinear), and on a sentence embedder that range is set by a few outlier tokens and
# the padding: all-MiniLM-L6-v2 keeps a mean cosine of 0.962 (0.992 with per-channel weights) to
# FP32. A scale per token (row) keeps 0.997. No runtime has a fused op for it that exports to
# plain ONNX, so the export (compressor/targets/onnx/dynamic.py) writes it from standard ops, and
# this function computes exactly those ops in the same order, so PyTorch and the engine agree.

PER_TOKEN_EPS = 1e-30  # a row of zeros gets this max |x|: its integers are 0, not NaN
PER_TOKEN_ZERO_POINT = 128  # uint8 activations and weights, zero point 128 (see onnx_dynamic)


def per_token_linear(x: torch.Tensor, w_int: torch.Tensor, w_scale: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """What the engine computes, op for op, in the same float32 order: m = max(max|x| over the
    last axis, eps); q = round_half_even(x * (127 / m)) (in [-127, 127]); acc = q @ w_int^T in
    integers; y = (acc * w_scale) * (m / 127) (+ bias). The integer product is exact in float32
    while every partial sum stays below 2^24 (127 * 127 * K: always for K <= 1040, and far from it
    in practice for larger K). `torch.div(tensor(127), m)`, not `127 / m`: PyTorch computes the
    latter as 127 * (1 / m), which differs from a true division in the last bit."""
    m = x.abs().amax(-1, keepdim=True).clamp_min(PER_TOKEN_EPS)
    q = torch.round(x * torch.div(m.new_tensor(127.0), m)).clamp(-128, 127)
    acc = q @ w_int.t().to(x.dtype)
    y = acc * w_scale * (m / 127)
    return y if bias is None else y + bias


def is_per_token(model: nn.Module) -> bool:
    return any(isinstance(m, QuantWrapper) and m.dynamic and m.activations == "per_token" for m in model.modules())


class QuantEmbedding(nn.Module):
    """An nn.Embedding whose table sits on an int8 grid, one symmetric scale per row: the engine
    stores the int8 table and the scales and computes Gather(table) * Gather(scale). The inner
    weight holds the dequantized values (q * scale, exactly what the engine computes), so forward
    is the embedding itself and `integers()` recovers q exactly."""

    def __init__(self, inner: nn.Embedding):
        super().__init__()
        self.inner = inner
        self.register_buffer("scale", torch.ones(inner.num_embeddings))

    @property
    def weight(self) -> nn.Parameter:  # code that reads `embeddings.weight` (tying, dtype checks) keeps working
        return self.inner.weight

    @torch.no_grad()
    def quantize(self) -> None:
        w = self.inner.weight.float()
        scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
        q = torch.round(w / scale[:, None]).clamp(-127, 127)
        self.scale.copy_(scale)
        self.inner.weight.copy_((q * scale[:, None]).to(self.inner.weight.dtype))

    def integers(self) -> torch.Tensor:
        """(num_embeddings, dim) int8."""
        return torch.round(self.inner.weight.float() / self.scale[:, None]).clamp(-127, 127).to(torch.int8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner(ids)

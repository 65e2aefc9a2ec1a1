"""Fake quantization in PyTorch: the one quantized model every backend reads.

Why by hand: torch.ao.quantization is deprecated in torch 2.14, and torchao's PT2E flow
failed on resnet18 here (see issue 4). A `QuantWrapper` around each Conv/Linear holds
calibrated scales as buffers; its forward runs `torch.fake_quantize_*`, so the metric the
report measures in PyTorch is the quantized model's, and torch.onnx exports it as
QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into integer kernels.
Activations: uint8 asymmetric per tensor. Weights: int8 symmetric per output channel.
"""
from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class QuantWrapper(nn.Module):
    """Fake-quantizes the input activation and the weight of one Conv/Linear."""

    def __init__(self, inner: nn.Module, weight_bits: int = 8):
        super().__init__()
        self.inner = inner
        self.weight_bits = weight_bits  # 7 = reduce_range (see `needs_reduce_range`)
        out = inner.weight.shape[0]
        self.register_buffer("act_scale", torch.ones(()))
        self.register_buffer("act_zero_point", torch.zeros((), dtype=torch.int32))
        self.register_buffer("weight_scale", torch.ones(out))
        self.observer = None  # set during calibration only

    @property
    def qmax(self) -> int:
        return 2 ** (self.weight_bits - 1) - 1

    def set_weight_scale(self) -> None:
        w = self.inner.weight.detach().flatten(1).abs().amax(1)
        self.weight_scale.copy_((w / self.qmax).clamp_min(1e-12))

    def set_act_range(self, lo: float, hi: float) -> None:
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero must be exactly representable
        scale = max((hi - lo) / 255.0, 1e-12)
        self.act_scale.fill_(scale)
        self.act_zero_point.fill_(int(min(255, max(0, round(-lo / scale)))))

    def quantized_weight(self) -> torch.Tensor:
        # The op's range stays int8 (what ONNX accepts); the scale (max |w| / qmax) keeps
        # values inside +-qmax, so 7-bit weights are plain int8 values that never exceed 63.
        zp = torch.zeros_like(self.weight_scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(self.inner.weight, self.weight_scale, zp, 0, -128, 127)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.observe(x)
            return self.inner(x)
        x = torch.fake_quantize_per_tensor_affine(
            x, float(self.act_scale), int(self.act_zero_point), 0, 255
        )
        w = self.quantized_weight()
        if isinstance(self.inner, nn.Linear):
            return F.linear(x, w, self.inner.bias)
        return self.inner._conv_forward(x, w, self.inner.bias)


class MinMaxObserver:
    def __init__(self):
        self.lo, self.hi = float("inf"), float("-inf")

    def observe(self, x: torch.Tensor) -> None:
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def range(self) -> tuple[float, float]:
        return self.lo, self.hi


class PercentileObserver:
    """Clips outliers: the range covers `percentile` % of the values seen."""

    def __init__(self, percentile: float = 99.99, max_samples: int = 1 << 20):
        self.percentile, self.max_samples, self.samples = percentile, max_samples, []

    def observe(self, x: torch.Tensor) -> None:
        flat = x.detach().flatten().float()
        if flat.numel() > 65536:  # a fixed-seed subsample keeps memory bounded and runs repeatable
            g = torch.Generator().manual_seed(len(self.samples))
            flat = flat[torch.randint(flat.numel(), (65536,), generator=g)]
        self.samples.append(flat)

    def range(self) -> tuple[float, float]:
        v = torch.cat(self.samples)[: self.max_samples]
        q = self.percentile / 100.0
        return float(torch.quantile(v, 1 - q)), float(torch.quantile(v, q))


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver}


def needs_reduce_range() -> bool:
    """True on x86 CPUs without VNNI/AMX: their u8s8 dot product (VPMADDUBSW) saturates at
    16 bits, which is what dropped INT8 ResNet-50 from 74.8 to 69.0 top-1 on such AMD machines.
    7-bit weights keep every pairwise sum inside int16."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return True
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantWrapper) for m in model.modules())

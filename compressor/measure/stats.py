"""Measurements the report is made of: task metric, parameters, MACs, size, latency."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from compressor.modules.quant import QuantEmbedding, QuantWrapper, WeightOnly, as_input
from compressor.registry import METRICS


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch's own FLOP counter / 2)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(as_input(model, example[:1]))
    return int(counter.get_total_flops() // 2)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's state as it would be stored at its effective precision:
    float tensors at their dtype, quantized weights at their integer width plus scales."""
    return int(sum(_layer_sizes(model).values()))


def layer_bytes(model: nn.Module) -> dict[str, int]:
    """The same, per layer, keyed "name (Type)"; a quantized layer's wrapper counts under the
    layer's own name and type, so before and after line up."""
    modules = dict(model.named_modules())
    out = {}
    for name, size in _layer_sizes(model).items():
        m = modules.get(name)
        m = getattr(m, "inner", m)
        out[f"{name} ({type(m).__name__})" if name else type(m).__name__] = int(size)
    return out


def _layer_sizes(model: nn.Module) -> dict[str, float]:
    quantized, sizes = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, (QuantWrapper, QuantEmbedding, WeightOnly)):  # int8 storage; WeightOnly at its bits
            quantized[f"{name}.inner.weight" if name else "inner.weight"] = getattr(m, "bits", 8) / 8
    for name, t in model.state_dict().items():
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        layer = layer[:-len(".inner")] if layer.endswith(".inner") else layer
        sizes[layer] = sizes.get(layer, 0) + t.numel() * (quantized.get(name) or t.element_size())
    return sizes


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero values among Conv/Linear weights."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / max(total, 1)


def latency(fn: Callable[[], object], warmup: int = 10, iters: int = 50) -> dict[str, float]:
    """p50/p90 wall time of `fn` in milliseconds, after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}


def torch_latency(model: nn.Module, example: torch.Tensor, warmup: int, iters: int) -> dict[str, float]:
    model.eval()
    example = as_input(model, example)
    with torch.inference_mode():
        return latency(lambda: model(example), warmup, iters)


def predict_torch(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], np.ndarray]:
    model.eval()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return model(as_input(model, x.to(device))).float().cpu().numpy()

    return run


def collect(predict: Callable[[torch.Tensor], np.ndarray], loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    outs, labels = [], []
    for x, y in loader:
        outs.append(predict(x))
        labels.append(np.asarray(y))
    return np.concatenate(outs), np.concatenate(labels)


def evaluate(predict, loader: DataLoader, metric_names: list[str], reference: np.ndarray | None = None,
             labelled: bool = True) -> dict[str, float]:
    """The named metrics that can be measured here: label metrics need labelled data,
    fidelity metrics the uncompressed model's outputs (`reference`)."""
    outputs, labels = collect(predict, loader)
    have = {"labels": labelled, "reference": reference is not None}
    result = {}
    for name in metric_names:
        fn = METRICS.get(name, key="eval.metric").obj
        if have.get(getattr(fn, "needs", "labels"), True):
            result[name] = float(fn(outputs, labels, reference))
    return result

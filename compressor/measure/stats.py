"""Measurements the report is made of: task metric, parameters, MACs, size, latency."""
from __future__ import annotations

import random
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from compressor.core.progress import tracked
from compressor.measure import lm
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


class PeakMemory:
    """Peak resident memory of this process above where it started, sampled every 10 ms while the
    `with` block runs (the stage's own working memory: Hessians, activations, copies)."""

    def __init__(self):
        import threading

        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def bytes(self) -> int:
        return self.peak - self.start


def _rss() -> int:
    try:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: no figure rather than a wrong one
        return 0


def latency(fn: Callable[[], object], warmup: int = 10, iters: int = 50, progress=None) -> dict[str, float]:
    """p50/p90 wall time of `fn` in milliseconds, after warm-up (a progress task over both, if given)."""
    times = []
    for i in tracked(progress, range(warmup + iters), "timing", warmup + iters):
        t = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}


def interleaved_latency(fns: dict[str, Callable[[], object]], warmup: int = 10, iters: int = 50,
                        progress=None) -> dict[str, dict[str, float]]:
    """`latency` of several functions, each called once per round in a fresh (seeded) random order:
    a change of load on the machine falls on all of them alike (their ratio is what is judged), and
    none always runs right after the same one (after an FP32 engine, another finds its weights
    evicted from cache)."""
    names, rng = list(fns), random.Random(0)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    times: dict[str, list[float]] = {k: [] for k in names}
    for _ in tracked(progress, range(iters), "timing against FP32", iters):
        rng.shuffle(names)
        for k in names:
            t = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90))} for k, v in times.items()}


def torch_latency(model: nn.Module, example: torch.Tensor, warmup: int, iters: int, progress=None) -> dict[str, float]:
    model.eval()
    example = as_input(model, example)
    with torch.inference_mode():
        return latency(lambda: model(example), warmup, iters, progress)


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


def is_lm_data(loader: DataLoader) -> bool:
    """Token windows with next-token labels (text in `mode: lm`): the language-model metrics apply."""
    x, y = loader.dataset[0]
    return torch.is_tensor(y) and x.ndim == 1 and y.shape == x.shape and not x.is_floating_point()


def reference(predict, loader: DataLoader):
    """The uncompressed model's outputs that fidelity metrics compare with: all of them, or for a
    language model its next-token log-probabilities (compressor.measure.lm)."""
    return lm.reference(predict, loader) if is_lm_data(loader) else collect(predict, loader)[0]


def evaluate(predict, loader: DataLoader, metric_names: list[str], reference=None,
             labelled: bool = True) -> dict[str, float]:
    """The named metrics that can be measured here: label metrics need labelled data,
    fidelity metrics the uncompressed model's outputs (`reference`), language-model metrics
    token windows (reduced batch by batch, see compressor.measure.lm)."""
    if is_lm_data(loader):
        outputs, labels = lm.accumulate(predict, loader, reference), None
        have = {"tokens": True}
    else:
        outputs, labels = collect(predict, loader)
        have = {"labels": labelled, "reference": reference is not None}
    result = {}
    for name in metric_names:
        fn = METRICS.get(name, key="eval.metric").obj
        if have.get(getattr(fn, "needs", "labels"), True):
            result[name] = float(fn(outputs, labels, reference))
    return result

"""Parity: does the engine compute what the measured PyTorch model computes?

The reference is the model the engine was built from, as the report measured it: for an INT8
engine that is the fake-quantized PyTorch model (see compressor.modules.quant), so parity checks the
export and the runtime, not the quantization (the metric and its gates judge that).

Judged on up to `eval.parity_samples` validation inputs (all of them where the split is
smaller), by one statistic that does not flip on a near-tie: the relative error
||engine - torch|| / ||torch|| over all outputs. Its tolerance comes from the precision: the
unit roundoff of the arithmetic the engine runs (2^-24 for FP32, 2^-11 FP16, 2^-8 BF16, one
8-bit step 2^-8 for INT8) times a margin for rounding that accumulates through the layers and
differs between kernels (summation order, fused ops, round-half-even ties, int32 bias).
Reported beside it, not judged: cosine per output row (mean, min), max and mean absolute
difference, and for classifier logits the mean KL divergence of the softmax, top-1 agreement
on all inputs and on the inputs where the reference is confident (top-1 probability >= 0.5),
with the sample counts."""
from __future__ import annotations

from typing import Any

import numpy as np

UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "fp16": 2.0 ** -11, "bf16": 2.0 ** -8, "fp8": 2.0 ** -4, "int8": 2.0 ** -8}
# Rounding differences accumulate through a deep network (bench/results/parity.json): INT8
# engines measured 0.0013 (digits CNN), 0.006 (mobilenet_v3), 0.019 (resnet18) and 0.036
# (efficientnet-lite0 at 224x224, 65 quantized layers: one-step flips where fp32 accumulation
# and integer accumulation round a tie differently); a wrong scale or a dropped layer is > 0.2.
MARGIN = {"fp32": 2 ** 7, "fp16": 2 ** 4, "bf16": 2 ** 3, "fp8": 2 ** 2, "int8": 2 ** 4}
CONFIDENT = 0.5  # top-1 probability above which a classifier's reference is not a near-tie


def arithmetic(precision: str) -> str:
    """The arithmetic an engine of this precision runs: int8, int8_dynamic -> int8; weight-only
    engines keep float activations but the runtime may quantize them for its integer kernels."""
    if precision.startswith("int"):
        return "int8"
    return precision if precision in UNIT_ROUNDOFF else "fp32"


def tolerance(precision: str) -> float:
    kind = arithmetic(precision)
    return UNIT_ROUNDOFF[kind] * MARGIN[kind]


def compare(out: np.ndarray, ref: np.ndarray, precision: str, classifier: bool) -> dict[str, Any]:
    """Every parity statistic of engine outputs `out` against PyTorch outputs `ref` (same inputs)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    finite = bool(np.isfinite(out).all())
    result: dict[str, Any] = {
        "statistic": "relative_error", "tolerance": tolerance(precision), "samples": int(len(ref)),
        "finite": finite, "nonfinite": int(out.size - np.isfinite(out).sum()),
    }
    if not finite:
        result.update(value=None, relative_error=None, max_abs=None, mean_abs=None, agreement=None, passed=False)
        return result
    diff = out - ref
    rel = float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30))
    rows_o, rows_r = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
    cos = (rows_o * rows_r).sum(1) / (np.linalg.norm(rows_o, axis=1) * np.linalg.norm(rows_r, axis=1)).clip(1e-30)
    result.update(value=rel, relative_error=rel, cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
                  max_abs=float(np.abs(diff).max()), mean_abs=float(np.abs(diff).mean()),
                  agreement=float((out.argmax(-1) == ref.argmax(-1)).mean()) if out.ndim > 1 else None)
    if classifier and out.ndim == 2:
        result.update(_classifier_stats(out, ref))
    result["passed"] = rel <= result["tolerance"]
    return result


def _classifier_stats(out: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    p, q = _softmax(ref), _softmax(out)
    kl = (p * (np.log(p.clip(1e-30)) - np.log(q.clip(1e-30)))).sum(1)
    same = out.argmax(1) == ref.argmax(1)
    confident = p.max(1) >= CONFIDENT
    return {"kl_mean": float(kl.mean()),
            "agreement_confident": float(same[confident].mean()) if confident.any() else None,
            "confident_samples": int(confident.sum())}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

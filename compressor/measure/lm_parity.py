"""Parity of a language-model engine with the PyTorch model it was built from, on the first
`windows` evaluation windows: relative error of the logits (the judged statistic, tolerance from
the precision as in compressor.measure.parity), and beside it the mean KL divergence of the
engine's next-token distribution to the model's and their top-1 agreement."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from compressor.measure import lm
from compressor.measure.parity import tolerance


def compare(engine: Callable[[np.ndarray], np.ndarray], torch_model: Callable[[torch.Tensor], np.ndarray],
            loader, windows: int, precision: str) -> dict[str, Any]:
    diff2 = ref2 = 0.0
    kl = agree = tokens = nonfinite = seen = 0
    for x, _ in loader:
        x = x[: windows - seen]
        if not len(x):
            break
        out, ref = np.asarray(engine(x.numpy()), np.float32), torch_model(x)
        nonfinite += int(out.size - np.isfinite(out).sum())
        diff2 += float(((out.astype(np.float64) - ref) ** 2).sum())
        ref2 += float((ref.astype(np.float64) ** 2).sum())
        p, q = lm.log_softmax(ref), lm.log_softmax(out)
        kl += lm.kl_sum(p, q)
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        tokens += p.shape[0] * p.shape[1]
        seen += len(x)
    rel = float(np.sqrt(diff2 / max(ref2, 1e-30))) if not nonfinite else None
    tol = tolerance(precision)
    return {"statistic": "relative_error", "tolerance": tol, "samples": seen, "tokens": tokens,
            "finite": not nonfinite, "nonfinite": nonfinite, "value": rel, "relative_error": rel,
            "kld": kl / max(tokens, 1), "token_agreement": agree / max(tokens, 1),
            "passed": rel is not None and rel <= tol}

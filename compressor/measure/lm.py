"""Language-model metrics over fixed token windows: perplexity, KL divergence of the next-token
distribution to the uncompressed model, and top-1 next-token agreement with it.

Logits are (windows, time, vocab): for a 49k vocabulary 16k tokens of them are 3 GB, so nothing
holds them all. `reference` keeps the uncompressed model's log-probabilities once, as float16
(1.6 GB for SmolLM2 on 16k tokens; the float16 rounding moves a KL of 1e-3 by under 1e-5), and
`accumulate` reduces each batch of a compressed model's logits against it as it comes.

Definitions (the same in bench/llm.py for the peers):
- perplexity: exp of the mean negative log-likelihood of the next token over every predicted
  position of every window (token-weighted; windows do not share context).
- kld: mean over positions of KL(p_reference || p_model), full vocabulary, natural log.
- token_agreement: share of positions whose argmax is the reference's argmax."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch


@dataclass
class Reference:
    """The uncompressed model's next-token log-probabilities on the evaluation windows."""

    logp: np.ndarray  # (windows, time, vocab) float16
    argmax: np.ndarray  # (windows, time) int64


@dataclass
class TokenStats:
    """Sums over evaluated positions, from which every metric here follows."""

    nll: float = 0.0
    kl: float = 0.0
    agree: int = 0
    tokens: int = 0
    compared: bool = False  # a reference was there to compare with


def is_lm_batch(out: np.ndarray, labels) -> bool:
    """Logits (batch, time, vocab) with next-token labels (batch, time)."""
    labels = np.asarray(labels)
    return out.ndim == 3 and labels.ndim == 2 and out.shape[:2] == labels.shape and out.shape[2] > 1


def log_softmax(logits: np.ndarray) -> torch.Tensor:
    return torch.log_softmax(torch.as_tensor(np.asarray(logits, dtype=np.float32)), dim=-1)


def kl_sum(ref_logp: torch.Tensor, logp: torch.Tensor) -> float:
    """Sum over positions of KL(p_ref || p), from log-probabilities (..., vocab)."""
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).double().sum())


def reference(predict: Callable, batches: Iterable) -> Reference:
    logps, tops = [], []
    for x, _ in batches:
        logp = log_softmax(predict(x))
        logps.append(logp.to(torch.float16).numpy())
        tops.append(logp.argmax(-1).numpy())
    return Reference(np.concatenate(logps), np.concatenate(tops))


def accumulate(predict: Callable, batches: Iterable, ref: Reference | None) -> TokenStats:
    s = TokenStats(compared=ref is not None)
    row = 0
    for x, y in batches:
        logp = log_softmax(predict(x))
        y = torch.as_tensor(np.asarray(y), dtype=torch.long)
        s.nll -= float(logp.gather(-1, y.unsqueeze(-1)).double().sum())
        s.tokens += y.numel()
        if ref is not None:
            r = torch.tensor(ref.logp[row: row + len(y)], dtype=torch.float32)
            s.kl += kl_sum(r, logp)
            s.agree += int((logp.argmax(-1) == torch.from_numpy(ref.argmax[row: row + len(y)])).sum())
            row += len(y)
    return s


def perplexity(stats: TokenStats, labels=None, reference=None) -> float:
    """Perplexity of the next token (lower is better)."""
    return math.exp(stats.nll / max(stats.tokens, 1))


def kld(stats: TokenStats, labels=None, reference=None) -> float:
    """Mean KL divergence of the next-token distribution to the uncompressed model's (lower is better)."""
    return stats.kl / max(stats.tokens, 1)


def token_agreement(stats: TokenStats, labels=None, reference=None) -> float:
    """Share of positions whose most likely next token is the uncompressed model's."""
    return stats.agree / max(stats.tokens, 1)


for _fn in (perplexity, kld, token_agreement):
    _fn.needs = "tokens"
perplexity.lower_is_better = kld.lower_is_better = True

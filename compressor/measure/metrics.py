"""Task metrics: functions (outputs, labels, reference) -> float, registered by name.

`reference` is the uncompressed model's outputs on the same inputs. A metric says what it
needs (`needs = "labels"` or `"reference"`); one whose input is missing (no labels in
synthetic data) is left out of the report rather than invented."""
from __future__ import annotations

import numpy as np


def needs(what: str):
    def mark(fn):
        fn.needs = what
        return fn

    return mark


@needs("labels")
def top1(outputs: np.ndarray, labels: np.ndarray, reference=None) -> float:
    """Top-1 accuracy."""
    return float((outputs.argmax(1) == labels).mean())


@needs("labels")
def top5(outputs: np.ndarray, labels: np.ndarray, reference=None) -> float:
    """Top-5 accuracy."""
    k = min(5, outputs.shape[1])
    best = np.argpartition(-outputs, k - 1, axis=1)[:, :k]
    return float((best == labels[:, None]).any(1).mean())


@needs("reference")
def agreement(outputs: np.ndarray, labels, reference: np.ndarray) -> float:
    """Share of inputs where the top-1 class matches the uncompressed model's."""
    return float((outputs.argmax(-1) == reference.argmax(-1)).mean())


@needs("reference")
def fidelity(outputs: np.ndarray, labels, reference: np.ndarray) -> float:
    """Mean cosine similarity to the uncompressed model's outputs (embeddings or logits)."""
    a, b = outputs.reshape(len(outputs), -1), reference.reshape(len(reference), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(1e-12)
    return float(cos.mean())


@needs("reference")
def neighbour_agreement(outputs: np.ndarray, labels, reference: np.ndarray) -> float:
    """Embeddings: share of items whose nearest neighbour (cosine) is the same as with the
    uncompressed model's embeddings."""
    def nearest(e):
        e = e.reshape(len(e), -1)
        e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    return float((nearest(outputs) == nearest(reference)).mean())


@needs("reference")
def output_mse(outputs: np.ndarray, labels, reference: np.ndarray) -> float:
    """Mean squared difference from the uncompressed model's outputs (lower is better)."""
    return float(((outputs - reference) ** 2).mean())


output_mse.lower_is_better = True

"""Task metrics: functions (outputs, labels) -> float, registered by name."""
from __future__ import annotations

import numpy as np


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy."""
    return float((outputs.argmax(1) == labels).mean())


def top5(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-5 accuracy."""
    k = min(5, outputs.shape[1])
    best = np.argpartition(-outputs, k - 1, axis=1)[:, :k]
    return float((best == labels[:, None]).any(1).mean())

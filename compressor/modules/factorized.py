"""The marker type for one layer rewritten as two (the lowrank and depthwise stages)."""
from __future__ import annotations

from torch import nn


class Factorized(nn.Sequential):
    """Two layers that stand for one factorised weight, run in sequence. A type of its own
    rather than a plain nn.Sequential, so checkpoints record and rebuild exactly these pairs
    (see compressor/run/checkpoint.py) and leave a model's own Sequentials alone."""

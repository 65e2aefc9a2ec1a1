"""Dataset sources: functions `build(params, seed) -> DataSplits` registered by short name (digits,
image folders, photos, text, tensors, torchvision and Hugging Face datasets), and `build_data` that
turns a recipe's `data:` section into splits. Imports the registry and `compressor.core` only."""
from __future__ import annotations

from typing import Any

from compressor.errors import UserError
from compressor.core.interfaces import DataSplits
from compressor.core.params import parse_params
from compressor.registry import DATASETS


def build_data(section: dict[str, Any], seed: int = 0) -> DataSplits:
    entry = DATASETS.get(section.get("kind"), key="data.kind")
    params, problems = parse_params(entry.params, section, "data")
    if problems:
        raise UserError(problems)
    return entry.obj(params, seed=seed)

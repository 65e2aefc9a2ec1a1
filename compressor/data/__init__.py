"""Dataset sources: functions `build(params, seed) -> DataSplits` registered by short name."""
from __future__ import annotations

from typing import Any

from compressor.errors import UserError
from compressor.interfaces import DataSplits
from compressor.params import parse_params
from compressor.registry import DATASETS


def build_data(section: dict[str, Any], seed: int = 0) -> DataSplits:
    entry = DATASETS.get(section.get("kind"), key="data.kind")
    params, problems = parse_params(entry.params, section, "data")
    if problems:
        raise UserError(problems)
    return entry.obj(params, seed=seed)

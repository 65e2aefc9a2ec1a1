"""Model sources. Each is a function `build(params, load_weights=True) -> nn.Module`
registered under a short name; `build_model` turns a recipe's `model:` section into a module."""
from __future__ import annotations

from typing import Any

from torch import nn

from compressor.errors import UserError
from compressor.params import parse_params
from compressor.registry import MODELS


def build_model(section: dict[str, Any], load_weights: bool = True) -> nn.Module:
    entry = MODELS.get(section.get("kind"), key="model.kind")
    params, problems = parse_params(entry.params, section, "model")
    if problems:
        raise UserError(problems)
    return entry.obj(params, load_weights=load_weights)

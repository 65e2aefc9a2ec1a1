"""Model sources. Each is a function `build(params, load_weights=True) -> nn.Module`
registered under a short name; `build_model` turns a recipe's `model:` section into a module.
Imports `compressor.data` and `compressor.training` (the packaged toy models train on first use),
the registry and `compressor.core`."""
from __future__ import annotations

from typing import Any

from torch import nn

from compressor.errors import UserError
from compressor.core.params import parse_params
from compressor.registry import MODELS


def check_model_spec(section: dict[str, Any], key: str):
    """(key, message) for each problem of a model spec inside a stage's params (a teacher, a
    student), so that plan validation reports them before any work."""
    try:
        entry = MODELS.get(section.get("kind"), key=f"{key}.kind")
    except UserError as e:
        yield from ((p.key, p.message) for p in e.problems)
        return
    for problem in parse_params(entry.params, section, key)[1]:
        yield problem.key, problem.message


def build_model(section: dict[str, Any], load_weights: bool = True) -> nn.Module:
    entry = MODELS.get(section.get("kind"), key="model.kind")
    params, problems = parse_params(entry.params, section, "model")
    if problems:
        raise UserError(problems)
    return entry.obj(params, load_weights=load_weights)

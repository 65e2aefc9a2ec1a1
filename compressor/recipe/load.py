"""The one way from a recipe reference and overrides to validated plans: compose, check that no
key is unsafe or unknown to a sweep, plan. Used by the command line and the library alike."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from compressor.core.safety import unsafe_keys
from compressor.errors import Problem, UserError
from compressor.recipe.compose import compose_recipe, override_problems
from compressor.recipe.plan import make_plan

_ABSENT = object()


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """For validation only: every discrete value of each sweep, the others at their first."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for o, line in zip(parsed, overrides):
        if o.is_sweep_override() and not o.is_interval_sweep():
            key = line.split("=", 1)[0]
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        elif o.is_interval_sweep():
            choices.append([])  # ranges for a sweeper (optuna) are checked by Hydra when it runs
        else:
            choices.append([line])
    base = [c[0] for c in choices if c]
    variants = [base]
    for i, c in enumerate(choices):
        for v in c[1:]:
            variant = list(base)
            variant[[j for j, cc in enumerate(choices) if cc].index(i)] = v
            variants.append(variant)
    return variants


def check(ref, overrides: list[str], multirun: bool = False):
    """Compose and validate; returns the plans or raises UserError with every problem."""
    overrides, problems = override_problems(overrides)
    plans = []
    for variant in sweep_variants(overrides) if multirun else [overrides]:
        cfg, found = compose_recipe(ref, variant)
        if cfg is not None:  # bad overrides were dropped: check the rest too, to report all at once
            found += unsafe_keys(cfg) + unknown_search_keys(cfg)
            try:
                plans.append(make_plan(cfg, ref.name))
            except UserError as e:
                found += e.problems
        problems += [p for p in found if str(p) not in {str(q) for q in problems}]
    if problems:
        raise UserError(problems)
    return plans


def unknown_search_keys(cfg: DictConfig) -> list[Problem]:
    """Keys an Optuna sweep (hydra.sweeper.params) or search=budget (search.space) would set
    that this recipe does not have: found before any trial runs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = {f"hydra.sweeper.params.{k}": k for k in OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}}
    space = list(OmegaConf.select(cfg, "search.space", default=None) or [])
    try:
        keys.update({f"search.space[{i}]": o.get_key_element() for i, o in enumerate(OverridesParser.create().parse_overrides(space))})
    except Exception as e:  # Hydra's parser names the bad entry
        return [Problem("search.space", str(e).splitlines()[0])]
    return [Problem(where, f"'{key}' is not a key of this recipe")
            for where, key in keys.items() if not key.startswith("+") and OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT]

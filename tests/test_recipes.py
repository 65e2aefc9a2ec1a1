"""Every recipe under recipes/ composes and validates."""
from pathlib import Path

import pytest

from compressor.recipe.compose import compose_recipe, locate, recipe_names
from compressor.recipe.plan import make_plan

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def all_yaml():
    return sorted(p.relative_to(RECIPES) for p in RECIPES.rglob("*.yaml") if p.name != "base.yaml")


@pytest.mark.parametrize("rel", all_yaml(), ids=str)
def test_recipe_composes_and_validates(rel):
    if len(rel.parts) == 1:
        ref, overrides = locate(rel.stem), []
    else:  # a config-group option: select it on the default recipe
        group = "/".join(rel.parts[:-1])
        # groups the default recipe (or base.yaml, or Hydra) already selects are swapped, others added
        swapped = ("model", "data", "target", "hparams_search", "search", "hydra/launcher")
        ref, overrides = locate("default"), [f"{group}={rel.stem}" if group in swapped else f"+{group}={rel.stem}"]
    cfg, problems = compose_recipe(ref, overrides)
    assert not problems, problems
    plan = make_plan(cfg, ref.name)
    assert plan.steps or rel.parts[0] != "default"


def test_packaged_recipes_listed():
    assert "default" in recipe_names()

"""Recipes as data: one YAML file says what a run does (world, components, stages, evaluation);
one generic runner does it.

    from llavakit.recipe import load_recipe, run_recipe
    recipe = load_recipe("quickstart", ["scale=0.5", "stages.stage2.train.epochs=8"])
    run_recipe(recipe, "runs/quick")
"""

from .load import RECIPES_DIR, find_recipe, load_recipe
from .runner import run_recipe
from .schema import Recipe, RecipeError

__all__ = ["RECIPES_DIR", "Recipe", "RecipeError", "find_recipe", "load_recipe", "run_recipe"]

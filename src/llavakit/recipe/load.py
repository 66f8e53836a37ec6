"""Finding and reading recipes: a path, or the name of one shipped with llavakit."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from llavakit.recipe.overrides import apply_overrides
from llavakit.recipe.plan import check
from llavakit.recipe.schema import Recipe, RecipeError, validate_recipe

# The shipped recipes and ablations, inside the package so an installed llavakit has them
# (the repository's top-level recipes/ is a link to this folder).
RECIPES_DIR = Path(str(files("llavakit") / "recipes"))


def find_recipe(text: str | Path) -> Path:
    """A recipe file: ``text`` as a path, else a shipped recipe of that name (``quickstart``,
    ``ablations/anyres``)."""
    path = Path(text)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / (path.as_posix() if path.suffix in (".yaml", ".yml") else f"{path.as_posix()}.yaml")
    if shipped.is_file():
        return shipped
    raise RecipeError(f"recipe {str(text)!r}: no such file, nor a shipped recipe (in {RECIPES_DIR})")


def read_yaml(path: Path) -> Any:
    try:
        return unshared(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as err:
        raise RecipeError(f"{path}: cannot read ({err})") from None


def unshared(value: Any) -> Any:
    """A copy in which no mapping or list appears twice. YAML aliases (``*whole_model``) load as
    one shared object; shared, a ``--set`` on one stage would change every stage that names it."""
    if isinstance(value, dict):
        return {key: unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unshared(item) for item in value]
    return value


def load_recipe(path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Recipe:
    """Read, override, validate and check a recipe: a Recipe that can run, or a RecipeError."""
    from llavakit.recipe.model_recipe import is_model_recipe

    path = find_recipe(path)
    data = read_yaml(path)
    if is_model_recipe(data):
        raise RecipeError(f"{path}: a real model's recipe (its parts by hub id), which the synthetic-world runner "
                          f"does not run; size it with `llavakit plan {path}` (docs/plan.md)")
    if isinstance(data, dict):
        data = apply_overrides(data, overrides)
    recipe = validate_recipe(data, str(path))
    check(recipe)
    return recipe

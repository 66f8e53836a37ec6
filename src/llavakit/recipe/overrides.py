"""``--set key.path=value`` on a recipe's data, before it is validated.

A path walks mappings by key and lists of named items (the stages) by name or position:
``stages.stage2.train.epochs=8``, ``model.visual.image_mode=squash``, ``seed=3``. The value is read
as YAML (``8`` is a number, ``null`` is None, ``{a: 1}`` a mapping). A missing mapping key is
created, so a misspelt one reaches validation and is refused there by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from llavakit.recipe.schema import RecipeError


def parse_set(text: str) -> tuple[str, Any]:
    """``"a.b=1"`` -> ``("a.b", 1)``."""
    path, sep, raw = text.partition("=")
    if not sep or not path.strip():
        raise RecipeError(f"--set {text!r}: expected key.path=value")
    try:
        return path.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise RecipeError(f"--set {text!r}: the value is not YAML ({err})") from None


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, key, where)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
        else:
            raise RecipeError(f"--set {path}: {'.'.join(keys[:depth])} is a value, not a mapping or list")


def _list_index(items: list, key: str, where: str) -> int:
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == key:
            return index
    if key.isdigit() and int(key) < len(items):
        return int(key)
    names = [str(item["name"]) for item in items if isinstance(item, dict) and "name" in item]
    raise RecipeError(f"--set {where}: no item named {key!r} (there are: {', '.join(names) or len(items)})")


def apply_overrides(data: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with each override applied in order (``key=value`` strings, or a mapping of paths)."""
    pairs = overrides.items() if isinstance(overrides, Mapping) else (parse_set(text) for text in overrides)
    for path, value in pairs:
        set_path(data, path, value)
    return data


def as_set_flags(overrides: Mapping[str, Any]) -> list[str]:
    """A mapping of paths as ``key=value`` strings (values in YAML flow style), as ``--set`` takes them."""
    return [f"{path}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for path, value in overrides.items()]

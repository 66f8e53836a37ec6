"""The configuration reference, generated from the pydantic schemas so it cannot drift.

    python -m llavakit.train.schema_doc > docs/config-reference.md   # what `llavakit train --schema` prints
    llavakit train --schema --json                                   # TrainConfig's JSON schema

Every field of `TrainConfig` (nested sections as dotted paths, list items as ``[]``), the stage
presets, the model config (`LlavaConfig`, what ``model.build`` holds), the recipe files (`Recipe`,
`ModelRecipe`) and the lab's ablation file (`Ablation`): type, default and the field's
``description``. The recipe's sections built from settings dataclasses (``world``,
``components.vision``, ``components.language``) take theirs from the dataclass fields' metadata
(``llavakit.utils.described``).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REGENERATE = "python -m llavakit.train.schema_doc > docs/config-reference.md"


def type_name(annotation: Any) -> str:
    """A short, readable spelling of a field's type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _models_in(annotation: Any) -> list[tuple[type[BaseModel], str]]:
    """The pydantic models a field holds: (model, path suffix), ``[]`` for list items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return [found for a in args for found in _models_in(a)]
    if origin is list:
        return [(model, "[]" + suffix) for model, suffix in _models_in(args[0])]
    return []


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(see fields)"
    return json.dumps(value.tolist() if hasattr(value, "tolist") else value, default=str)


def fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every field of ``model`` and of the models inside it, depth first, as (dotted path, info)."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path, info
        for inner, suffix in _models_in(info.annotation):
            yield from fields(inner, f"{path}{suffix}.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(model: type[BaseModel]) -> str:
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for path, info in fields(model):
        rows.append(f"| `{path}` | {type_name(info.annotation)} | `{_cell(default_text(info))}` | "
                    f"{_cell(info.description or '')} |")
    return "\n".join(rows)


def documented() -> list[type[BaseModel]]:
    """The schemas the reference lists, in its order."""
    from llavakit.config import LlavaConfig
    from llavakit.recipe.ablation import Ablation
    from llavakit.recipe.model_recipe import ModelRecipe
    from llavakit.recipe.schema import Recipe
    from llavakit.train.config import TrainConfig

    return [TrainConfig, LlavaConfig, Recipe, ModelRecipe, Ablation]


def markdown() -> str:
    from llavakit.config import LlavaConfig
    from llavakit.recipe.ablation import Ablation
    from llavakit.recipe.model_recipe import ModelRecipe
    from llavakit.recipe.schema import Recipe
    from llavakit.train.config import PRESETS, TrainConfig

    presets = "\n".join(f"- `{stage}`: `{json.dumps(values)}`" for stage, values in PRESETS.items())
    return f"""# Configuration reference

<!-- Generated from the pydantic schemas by `{REGENERATE}`
     (the same text as `llavakit train --schema`); do not edit by hand. -->

Every field of a training config (`llavakit train CONFIG.yaml`, `--set key.path=value`), of the
model config, of the recipe files and of the lab's ablation file. Nested sections are dotted paths;
`[]` marks the items of a list. `required` fields have no default. How the fields work together:
[training.md](training.md), [model.md](model.md), [recipes.md](recipes.md), [lab.md](lab.md).

## Training config (`TrainConfig`)

{table(TrainConfig)}

## Stage presets

The preset of the config's `stage` is merged under the file (the file wins; a `trainable` list in
the file replaces the preset's):

{presets}

## Model config (`LlavaConfig`)

What `model.build` holds (with `pretrained` paths for `vision` and `llm`), and what a checkpoint's
`llavakit_config.json` stores.

{table(LlavaConfig)}

## Recipe (`llavakit recipe run`, `llavakit quickstart`)

A synthetic-world recipe: the world, the tiny components, the stages and the evaluation. A stage's
`train` and the recipe's `stage_defaults` are training-config fragments (above); `--set
stages.NAME.train.key=value` names a stage by its name.

{table(Recipe)}

## Real-model recipe (`llavakit plan`)

A recipe whose `model` names its parts by hub id, with their architectures written out; the stages'
`data` are the user's.

{table(ModelRecipe)}

## Ablation file (`llavakit lab`)

A base recipe, named arms of `--set` overrides, the seeds and the compared tasks.

{table(Ablation)}
"""


def json_schema() -> str:
    from llavakit.train.config import TrainConfig

    return json.dumps(TrainConfig.model_json_schema(), indent=2)


def missing_descriptions() -> list[str]:
    """Fields of the documented schemas without a description (the reference would be silent)."""
    return [f"{model.__name__}: {path}" for model in documented() for path, info in fields(model)
            if not info.description]


def main() -> None:
    print(markdown(), end="")


if __name__ == "__main__":
    main()

"""The installed transformers is inside the range pyproject.toml admits (the range the suite was run with)."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_installed_transformers_is_within_the_declared_range():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (requirement,) = [Requirement(d) for d in dependencies if Requirement(d).name == "transformers"]
    assert requirement.specifier, "transformers must be bounded: a new release can break an installed llavakit"
    assert any(spec.operator == "<" for spec in requirement.specifier), "transformers needs an upper bound"
    installed = version("transformers")
    assert requirement.specifier.contains(installed), (
        f"transformers {installed} is outside pyproject's {requirement.specifier}: run the suite with it and move "
        "the bound, or install a version inside it")

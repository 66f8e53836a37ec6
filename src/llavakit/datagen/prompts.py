"""Prompt files: per response type a system prompt and few-shot examples, plus the detail instructions.

A prompt folder holds::

    detail_instructions.txt          # one "describe in detail" paraphrase per line (seed 001)
    <type>/system.txt                # the system prompt of that response type
    <type>/NNN_context.txt           # few-shot example NNN: a symbolic representation ...
    <type>/NNN_response.txt          # ... and the reply the model should write for it

for ``<type>`` in conversation, detail, complex_reasoning. The package ships one
(``llavakit/datagen/prompts``); ``llavakit datagen prompts --out DIR`` copies it for editing and
``--prompts DIR`` uses the copy. Messages are built as in LLaVA: the system prompt, then each example
as a user turn (context) and an assistant turn (response), then the image's context as the last user turn.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from llavakit.datagen.errors import DatagenError

ResponseType = Literal["conversation", "detail", "complex_reasoning"]
RESPONSE_TYPES: tuple[ResponseType, ...] = ("conversation", "detail", "complex_reasoning")
INSTRUCTIONS_FILE = "detail_instructions.txt"


@dataclass(frozen=True)
class FewShot:
    context: str
    response: str


@dataclass(frozen=True)
class TypePrompt:
    kind: ResponseType
    system: str
    examples: tuple[FewShot, ...]

    def messages(self, context: str) -> list[dict]:
        """OpenAI chat messages asking for this response type about one image's context."""
        messages = [{"role": "system", "content": self.system}]
        for example in self.examples:
            messages += [{"role": "user", "content": example.context},
                         {"role": "assistant", "content": example.response}]
        return messages + [{"role": "user", "content": context}]

    def digest(self) -> str:
        """Changes when the system prompt or any example changes."""
        text = json.dumps([self.system, [[e.context, e.response] for e in self.examples]], ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PromptSet:
    folder: str
    types: dict[str, TypePrompt]
    detail_instructions: tuple[str, ...]

    def digest(self) -> str:
        text = json.dumps([t.digest() for t in self.types.values()] + [list(self.detail_instructions)])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def default_prompt_dir() -> Path:
    return Path(str(resources.files("llavakit.datagen") / "prompts"))


def load_prompts(folder: str | Path | None = None) -> PromptSet:
    """The prompt set in ``folder`` (default: the shipped one); every problem names the file."""
    folder = Path(folder) if folder is not None else default_prompt_dir()
    if not folder.is_dir():
        raise DatagenError(f"{folder}: prompt folder not found")
    types = {kind: _type_prompt(folder, kind) for kind in RESPONSE_TYPES}
    return PromptSet(str(folder), types, _instructions(folder / INSTRUCTIONS_FILE))


def _read(path: Path) -> str:
    if not path.is_file():
        raise DatagenError(f"{path}: prompt file not found")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise DatagenError(f"{path}: prompt file is empty")
    return text


def _type_prompt(folder: Path, kind: ResponseType) -> TypePrompt:
    sub = folder / kind
    contexts = sorted(sub.glob("*_context.txt"))
    examples = []
    for context in contexts:
        response = context.with_name(context.name.replace("_context.txt", "_response.txt"))
        examples.append(FewShot(_read(context), _read(response)))
    orphans = {p.name.replace("_response.txt", "") for p in sub.glob("*_response.txt")} - {
        p.name.replace("_context.txt", "") for p in contexts}
    if orphans:
        first = min(orphans)
        raise DatagenError(f"{sub}: {first}_response.txt has no {first}_context.txt")
    return TypePrompt(kind, _read(sub / "system.txt"), tuple(examples))


def _instructions(path: Path) -> tuple[str, ...]:
    lines = tuple(line.strip() for line in _read(path).splitlines() if line.strip())
    if len(set(lines)) != len(lines):
        raise DatagenError(f"{path}: an instruction is listed twice")
    return lines


def export_prompts(destination: str | Path) -> Path:
    """Copy the shipped prompt folder to ``destination`` (which must not exist) for editing."""
    destination = Path(destination)
    if destination.exists():
        raise DatagenError(f"{destination}: already exists; choose a new folder")
    shutil.copytree(default_prompt_dir(), destination, ignore=shutil.ignore_patterns("__pycache__"))
    return destination

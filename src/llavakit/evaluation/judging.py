"""LLM-as-judge over a task's predictions: build each judge request from the judge prompt file, ask
the judge (several requests in flight), and keep every reply in ``reviews/<task>.jsonl`` so that a
restart asks only for what is missing. Failed requests are kept with their error and asked again on
the next run; the metric reports them as failed judgements, never averaging them in."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llavakit.evaluation.judge_client import JudgeClient
from llavakit.evaluation.store import append_jsonl, read_jsonl_tolerant
from llavakit.evaluation.task_spec import JudgeSpec, TaskSpecError


class JudgePrompt(BaseModel):
    """A judge prompt file: system message, user template over ``{context}``, ``{question}``,
    ``{reference}``, ``{answer}``, and the judge's sampling settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    system: str | None = None
    template: str
    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(1024, gt=0)

    def messages(self, context: str, question: str, reference: str, answer: str) -> list[dict]:
        text = self.template.format(context=context, question=question, reference=reference, answer=answer)
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": text}]


def load_judge_prompt(name_or_path: str | Path) -> JudgePrompt:
    """A packaged prompt (``llava_bench``) or a YAML file with the same fields."""
    path = Path(str(name_or_path))
    if not path.is_file():
        packaged = Path(str(resources.files("llavakit.evaluation") / "prompts" / f"{name_or_path}.yaml"))
        if not packaged.is_file():
            raise TaskSpecError(f"judge prompt {name_or_path!r}: not a file and not a packaged prompt")
        path = packaged
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        prompt = JudgePrompt.model_validate({"name": path.stem, **(data or {})})
    except (OSError, yaml.YAMLError, TypeError) as err:
        raise TaskSpecError(f"judge prompt {path}: cannot read ({err})") from None
    except ValidationError as err:
        raise TaskSpecError(f"judge prompt {path}: invalid:\n{err}") from None
    for name in ("context", "question", "reference", "answer"):
        if "{" + name + "}" not in prompt.template:
            raise TaskSpecError(f"judge prompt {path}: the template never uses {{{name}}}")
    return prompt


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def judge_request(prompt: JudgePrompt, spec: JudgeSpec, record: dict) -> list[dict]:
    """The messages that ask the judge about one predictions line."""
    context = _text(record.get(spec.context)) if spec.context else ""
    return prompt.messages(context, _text(record.get(spec.question)), _text(record.get(spec.reference)),
                           _text(record.get("prediction")))


@dataclass
class JudgeStats:
    requested: int = 0  # requests made in this run
    attempts: int = 0  # HTTP attempts in this run (requests + retries)
    failed: int = 0  # ids whose latest request failed


def read_reviews(path: Path) -> dict[str, dict[str, Any]]:
    """The latest review line per id (a retried request appends a new line)."""
    latest: dict[str, dict[str, Any]] = {}
    for line in read_jsonl_tolerant(path):
        latest[str(line["id"])] = line
    return latest


def judge_records(records: Sequence[dict], spec: JudgeSpec, client: JudgeClient, reviews_path: Path,
                  progress: bool = False, desc: str = "judge") -> tuple[dict[str, dict[str, Any]], JudgeStats]:
    """Reviews for every record (by id), asking the judge only for those without a successful one."""
    from tqdm.auto import tqdm

    prompt = load_judge_prompt(spec.prompt)
    reviews = read_reviews(reviews_path)
    todo = [r for r in records if reviews.get(str(r["id"]), {}).get("review") is None]
    stats = JudgeStats()
    if todo:
        bar = tqdm(total=len(todo), desc=desc, disable=not progress, leave=False)
        with ThreadPoolExecutor(max_workers=max(1, client.settings.workers)) as pool:
            futures = {pool.submit(client.chat, judge_request(prompt, spec, r), prompt.temperature,
                                   prompt.max_tokens): r for r in todo}
            for future in as_completed(futures):
                reply = future.result()  # JudgeConfigError propagates and stops the run
                line = {"id": futures[future]["id"], "review": reply.text, "error": reply.error,
                        "attempts": reply.attempts, "judge": client.settings.model}
                append_jsonl(reviews_path, [line])
                reviews[str(line["id"])] = line
                stats.requested += 1
                stats.attempts += reply.attempts
                bar.update(1)
        bar.close()
    stats.failed = sum(reviews[str(r["id"])].get("review") is None for r in records)
    return reviews, stats

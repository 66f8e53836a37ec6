"""``datagen instruct``: plan the items, send the missing requests concurrently, rebuild the outputs.

Workers (``concurrency`` of them) take items in order; each finished request is journaled at once.
Requests that fail transiently after every retry, or that the budget stops, leave their item
unfinished: the next run sends them again. At the end (also after Ctrl-C or a spent budget) the
dataset and rejects files are rewritten atomically from the journal, in item order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from llavakit.datagen.annotations import BoxUnits, read_annotations
from llavakit.datagen.assemble import Assembly, assemble
from llavakit.datagen.client import (
    Budget,
    ChatClient,
    ChatResult,
    EndpointSettings,
    Failed,
    Refused,
    RetrySettings,
    Usage,
)
from llavakit.datagen.errors import DatagenError, EndpointError, ReplyError
from llavakit.datagen.files import AppendOnlyJsonl, RunLock, write_jsonl
from llavakit.datagen.items import Item, OutputPaths, plan_items
from llavakit.datagen.journal import entry_for, read_journal
from llavakit.datagen.prompts import RESPONSE_TYPES, load_prompts
from llavakit.datagen.replies import ReplySettings, parse_reply


@dataclass(frozen=True)
class InstructSettings:
    annotations: tuple[str, ...]
    output: str  # OUT.jsonl; OUT.rejects.jsonl and OUT.journal.jsonl go next to it
    endpoint: EndpointSettings
    retry: RetrySettings = field(default_factory=RetrySettings)
    replies: ReplySettings = field(default_factory=ReplySettings)
    types: tuple[str, ...] = RESPONSE_TYPES
    prompts: str | None = None  # a prompt folder; None: the shipped one
    image_prefix: str = ""
    box_units: BoxUnits = "auto"
    limit: int | None = None  # first N images
    concurrency: int = 8
    max_requests: int | None = None  # attempts, retries included, in this run
    max_total_tokens: int | None = None  # prompt + completion tokens in this run
    max_consecutive_failures: int = 20  # items in a row that fail every retry: the endpoint is down
    seed: int = 0
    retry_rejects: bool = False  # send rejected items again (a new reply replaces the old one)
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [t for t in self.types if t not in RESPONSE_TYPES]
        if unknown or not self.types or len(set(self.types)) != len(self.types):
            raise DatagenError(f"types {list(self.types)}: choose distinct ones from {', '.join(RESPONSE_TYPES)}")
        if self.concurrency < 1:
            raise DatagenError(f"concurrency must be at least 1, got {self.concurrency}")


@dataclass
class RunSummary:
    paths: OutputPaths
    items: int = 0
    written: int = 0
    rejected: int = 0
    unfinished: int = 0
    empty_images: int = 0
    sent: int = 0  # items requested in this run
    failed: int = 0  # ... of which every attempt failed (or the budget stopped them)
    duplicates_dropped: int = 0
    journal_lines_ignored: int = 0
    budget_spent: bool = False
    interrupted: bool = False
    usage: Usage = field(default_factory=Usage)  # this run
    total_prompt_tokens: int = 0  # every reply used in the dataset and rejects
    total_completion_tokens: int = 0
    failures: list[str] = field(default_factory=list)  # "item: reason", the first few

    @property
    def complete(self) -> bool:
        return self.unfinished == 0


def run_instruct(settings: InstructSettings) -> RunSummary:
    prompts = load_prompts(settings.prompts)
    annotations = read_annotations(settings.annotations, settings.image_prefix, settings.box_units, settings.limit)
    items, empty = plan_items(annotations, settings.types, prompts, settings.endpoint.sampling())
    paths = OutputPaths.for_output(settings.output)
    if paths.dataset.suffix != ".jsonl":
        raise DatagenError(f"{paths.dataset}: the output must be a .jsonl file")
    summary = RunSummary(paths, items=len(items), empty_images=len(empty))
    with RunLock(paths.dataset):
        journal = read_journal(paths.journal)
        todo = _todo(items, settings, assemble(items, journal, prompts.detail_instructions, settings.seed,
                                               settings.replies))
        try:
            if todo:
                asyncio.run(_send_all(todo, settings, paths, summary))
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            _finish(items, settings, prompts.detail_instructions, paths, summary)
    return summary


def _todo(items: Sequence[Item], settings: InstructSettings, current: Assembly) -> list[Item]:
    todo = {i.index for i in current.pending}
    if settings.retry_rejects:
        rejected = {r["id"] for r in current.rejects}
        todo |= {i.index for i in items if i.record_id in rejected}
    return [i for i in items if i.index in todo]


async def _send_all(todo: list[Item], settings: InstructSettings, paths: OutputPaths, summary: RunSummary) -> None:
    budget = Budget(summary.usage, settings.max_requests, settings.max_total_tokens)
    client = ChatClient(settings.endpoint, settings.retry, budget, settings.concurrency)
    queue = iter(todo)
    bar = tqdm(total=len(todo), desc="datagen", unit="req", disable=not settings.progress, dynamic_ncols=True)
    state = _Progress(bar, settings.max_consecutive_failures)
    try:
        with AppendOnlyJsonl(paths.journal) as journal:
            workers = [asyncio.create_task(_worker(queue, client, journal, settings, summary, state))
                       for _ in range(settings.concurrency)]
            await _first_error(workers)
    finally:
        bar.close()
        await client.aclose()
    summary.budget_spent = budget.exhausted


@dataclass
class _Progress:
    bar: tqdm
    max_consecutive_failures: int
    ok: int = 0
    rejected: int = 0
    consecutive_failures: int = 0


async def _worker(queue, client: ChatClient, journal: AppendOnlyJsonl, settings: InstructSettings,
                  summary: RunSummary, state: _Progress) -> None:
    for item in queue:
        if client.budget.exhausted:
            return
        summary.sent += 1
        result = await client.complete(item.messages())
        if isinstance(result, Failed):
            _failed(item, result, summary, state)
            continue
        state.consecutive_failures = 0
        journal.append(entry_for(item, result).as_dict())
        _count(item, result, settings.replies, state)


def _failed(item: Item, result: Failed, summary: RunSummary, state: _Progress) -> None:
    summary.failed += 1
    if len(summary.failures) < 10:
        summary.failures.append(f"{item.key}: {result.reason}")
    if result.budget:
        return
    state.consecutive_failures += 1
    if state.consecutive_failures >= state.max_consecutive_failures:
        raise EndpointError(f"{state.consecutive_failures} requests in a row failed every retry (last: {item.key}: "
                            f"{result.reason}); is the endpoint up?")


def _count(item: Item, result: ChatResult | Refused, settings: ReplySettings, state: _Progress) -> None:
    """Live counts for the progress bar (the dataset itself is assembled from the journal at the end)."""
    if _acceptable(item, result, settings):
        state.ok += 1
    else:
        state.rejected += 1
    state.bar.set_postfix(ok=state.ok, rejected=state.rejected, refresh=False)
    state.bar.update(1)


def _acceptable(item: Item, result: ChatResult | Refused, settings: ReplySettings) -> bool:
    if isinstance(result, Refused):
        return False
    try:
        parse_reply(item.kind, result.text, result.finish_reason, settings)
    except ReplyError:
        return False
    return True


async def _first_error(tasks: list[asyncio.Task]) -> None:
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise task.exception()


def _finish(items: Sequence[Item], settings: InstructSettings, instructions: Sequence[str], paths: OutputPaths,
            summary: RunSummary) -> None:
    journal = read_journal(paths.journal)
    result = assemble(items, journal, instructions, settings.seed, settings.replies)
    write_jsonl(paths.dataset, result.records)
    write_jsonl(paths.rejects, result.rejects)
    summary.written, summary.rejected, summary.unfinished = len(result.records), len(result.rejects), len(
        result.pending)
    summary.duplicates_dropped = result.duplicates_dropped
    summary.journal_lines_ignored = journal.unreadable_lines
    summary.total_prompt_tokens, summary.total_completion_tokens = result.prompt_tokens, result.completion_tokens

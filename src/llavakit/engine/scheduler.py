"""The engine: a queue of requests and the step loop that generates their answers.

Every step (:meth:`Engine.step`): rows of cancelled requests leave; waiting requests join while
rows and cache are free (first come, first served; one that does not fit waits, it is never cut);
up to ``max_prefill_tokens`` prompt tokens are prefilled, several prompts in one forward pass, long
prompts in chunks over several steps; then one decode step gives every running row its next token.
So finished rows leave and new requests join at every step, and running rows keep streaming while
new prompts are read (``schedule="continuous"``). ``schedule="static"`` admits a batch only when
the previous one has ended: it runs to its end while new requests wait.

Each row owns a cache slot from admission to its end. A request's prompt is prefilled once, into
its first choice's slot, and copied into the slots of its other choices. A decode step covers slots
``0..h-1``, ``h`` past the highest slot in use; free slots among them are padding rows. New
requests take the lowest free slots, so the batch stays dense.

The engine runs in its own thread (:meth:`start`, for the server) or in the caller's thread
(:meth:`run`, for ``Llava.generate``); either way one step runs at a time.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llavakit.engine.config import EngineConfig
from llavakit.engine.forward import Forward
from llavakit.processing.processor import ModelInputs
from llavakit.engine.kv_cache import SlotCache
from llavakit.engine.requests import EngineClosed, QueueFull, Request, RequestTooLarge
from llavakit.engine.rows import Row
from llavakit.engine.sampling import BatchSampler, make_generator
from llavakit.engine.text import TextStream

if TYPE_CHECKING:
    from llavakit.api import Llava

log = logging.getLogger("llavakit.engine")

GROWTH_ROUNDING = 256  # a cache sized on demand grows its slots' length in steps of this many tokens


@dataclass(eq=False)  # compared by identity
class _Prefill:
    """An admitted request whose prompt is being read into its first slot."""

    request: Request
    slots: list[int]  # one per choice
    embeds: torch.Tensor | None = None  # (prompt, H)
    done: int = 0  # prompt tokens prefilled so far
    parked: _Parked | None = None  # a finished sequence in its first slot that this prompt may continue

    @property
    def left(self) -> int:
        return self.request.prompt_length - self.done


@dataclass(eq=False)
class _Parked:
    """What a freed slot still holds: the keys of ``ids`` (a prompt and its answer), from ``embeds``."""

    ids: torch.Tensor  # (L,) the tokens whose keys the slot holds
    embeds: torch.Tensor  # (P, H) the prompt's input embeddings (visual features included)

    def common_prefix(self, ids: torch.Tensor) -> int:
        """Leading tokens of ``ids`` that equal the slot's (never the whole prompt: its last token's
        logits are needed)."""
        size = min(self.ids.shape[0], ids.shape[0] - 1)
        if size <= 0:
            return 0
        differ = (self.ids[:size] != ids[:size]).nonzero()
        return int(differ[0, 0]) if differ.numel() else size


class Engine:
    """Generates answers for submitted requests with one preallocated KV cache."""

    def __init__(self, llava: Llava, config: EngineConfig | None = None):
        self.llava = llava
        self.config = config or EngineConfig()
        self.model = llava.model
        self.device = self.model.device
        self.eos_token_ids = llava.eos_token_ids
        self.compile = decide_compile(self.config.compile, self.device, serving=False)
        self._queue: deque[Request] = deque()
        self._wake = threading.Condition()
        self._drive = threading.Lock()  # one step at a time, whichever thread runs it
        self._closed = False
        self._thread: threading.Thread | None = None
        self.rows: dict[int, Row] = {}  # running rows by slot
        self.prefilling: deque[_Prefill] = deque()
        self._free: list[int] = []  # free slots, a heap: the lowest is taken first
        self._parked: dict[int, _Parked] = {}  # free slots whose keys a prompt may continue (reuse_prefixes)
        self.prefix_tokens_reused = 0
        self.cache: SlotCache | None = None
        self.forward: Forward | None = None
        self._seen: torch.Tensor | None = None  # (slots, V) tokens of each row, for repetition penalties
        self._sampler: BatchSampler | None = None
        self._running = 0
        self.steps = 0  # statistics, read by /health
        self.rows_generated = 0
        self.rows_cancelled = 0  # rows stopped early: their client left, timed out or was cut
        if self.config.slot_length is not None:
            self._allocate(self.config.max_rows, self.config.slot_length)
        else:
            log.info("KV cache: sized on demand, up to %d rows (set max_cache_tokens to allocate it once)",
                     self.config.max_rows)

    # ---- the callers' side -----------------------------------------------------------------------
    def start(self) -> Engine:
        """Run the steps in a background thread (a server); without it, :meth:`run` drives them.

        With a compiled step and a fixed-size cache, every row bucket is compiled first."""
        if self._thread is None:
            compile_step = decide_compile(self.config.compile, self.device, serving=True)
            if compile_step != self.compile:
                self.compile = compile_step
                if self.cache is not None:
                    self.forward = Forward(self.model, self.cache, compile_step=compile_step)
            if self.forward is not None and not self.rows:
                self.forward.warm_up()
            self._thread = threading.Thread(target=self._loop, name="llavakit-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, request: Request) -> None:
        self.check_fits(request)
        with self._wake:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
            if len(self._queue) >= self.config.max_queued:
                raise QueueFull(f"{len(self._queue)} requests are already waiting (the queue holds "
                                f"{self.config.max_queued})")
            self._queue.append(request)
            self._wake.notify()

    def run(self, requests: Sequence[Request]) -> None:
        """Submit ``requests`` and return when all have finished (in this thread unless :meth:`start`ed)."""
        for request in requests:
            self.check_fits(request)
        with self._wake:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
            self._queue.extend(requests)  # the caller waits for them: no queue limit
            self._wake.notify()
        for request in requests:
            while not request.finished.is_set():
                if self._thread is not None and self._thread.is_alive():
                    request.finished.wait(0.1)
                else:
                    with self._drive:
                        if not request.finished.is_set():
                            self.step()

    def check_fits(self, request: Request) -> None:
        length = self.config.slot_length
        if request.n > self.config.max_rows and length is not None:
            raise RequestTooLarge(f"the request asks for {request.n} choices; the engine's cache holds "
                                  f"{self.config.max_rows} rows (max_rows)")
        if length is not None and request.cache_tokens > length:
            raise RequestTooLarge(
                f"the request needs {request.cache_tokens} tokens of KV cache (prompt {request.prompt_length} + "
                f"max_new_tokens {request.settings.max_new_tokens} - 1); a row holds at most {length} "
                f"(max_cache_tokens {self.config.max_cache_tokens} / max_rows {self.config.max_rows})")

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        """Requests admitted and not finished (being prefilled or decoded), as of the last step."""
        return self._running

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; finish the queued and running ones (drain) or cancel them; stop the thread."""
        with self._wake:
            self._closed = True
            if not drain:
                # copied first (one C call each): the engine thread may change them meanwhile
                prefilling, rows = list(self.prefilling), list(self.rows.values())
                for request in [*self._queue, *(p.request for p in prefilling), *(r.request for r in rows)]:
                    request.cancel()
            self._wake.notify()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the step loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._queue or self.rows or self.prefilling):
                    if self._closed:
                        return
                    self._wake.wait()
            with self._drive:
                try:
                    self.step()
                except Exception:  # noqa: BLE001 - logged, its requests failed; the engine serves on
                    pass

    def step(self) -> None:
        """Cancelled rows leave, waiting requests join, prompts are prefilled, every row decodes one token."""
        try:
            self._leave_cancelled()
            self._admit()
            self._running = self._count_running()
            self._prefill()
            self._decode()
            self._running = self._count_running()
        except Exception as error:  # a fault of the loop itself: fail what is running rather than hang it
            log.exception("engine step failed")
            for request in {id(r): r for r in [*(p.request for p in self.prefilling),
                                                *(row.request for row in self.rows.values())]}.values():
                self._fail(request, error)
            raise

    def _count_running(self) -> int:
        return len({id(row.request) for row in self.rows.values()} | {id(p.request) for p in self.prefilling})

    # admission -----------------------------------------------------------------------------------
    def _reserved(self) -> int:
        return len(self.rows) + sum(p.request.n for p in self.prefilling)

    def _admit(self) -> None:
        static = self.config.schedule == "static"
        if static and (self.rows or self.prefilling):
            return  # the running batch goes to its end first
        with self._wake:
            if static and self._queue and self.config.batch_window_s > 0 and self._thread is not None:
                deadline = time.monotonic() + self.config.batch_window_s
                while sum(r.n for r in self._queue) < self.config.max_rows and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            while self._queue:
                request = self._queue[0]
                if request.cancelled.is_set() or request.settings.max_new_tokens == 0:
                    self._queue.popleft()
                    self._end_unstarted(request)
                    continue
                reserved = self._reserved()
                if reserved and reserved + request.n > self.config.max_rows:
                    break  # it waits; a request with more choices than max_rows runs alone
                self._queue.popleft()
                self._ensure_capacity(reserved + request.n, request.cache_tokens)
                self.prefilling.append(self._take_slots(request))

    def _take_slots(self, request: Request) -> _Prefill:
        """The lowest free slots; with prefix reuse, first the slot holding the longest start of the prompt."""
        parked, first = None, None
        if self._parked:
            ids = request.inputs.input_ids[0].to(self.device)
            best = max(self._parked, key=lambda slot: self._parked[slot].common_prefix(ids))
            if self._parked[best].common_prefix(ids) > 0:
                first, parked = best, self._parked.pop(best)
                self._free.remove(best)
                heapq.heapify(self._free)
        slots = [heapq.heappop(self._free) for _ in range(request.n - (first is not None))]
        for slot in slots:
            self._parked.pop(slot, None)  # overwritten from now on
        return _Prefill(request, [first, *slots] if first is not None else slots, parked=parked)

    def _reuse_prefix(self, item: _Prefill) -> None:
        """Start the prefill after the part of the prompt its slot already holds: the same tokens, the
        same input embeddings over the old prompt (visual features included), and no visual
        placeholder over the old answer (whose tokens were embedded as text)."""
        parked, item.parked = item.parked, None
        ids = item.request.inputs.input_ids[0].to(self.device)
        size = parked.common_prefix(ids)
        prompt = min(size, parked.embeds.shape[0])
        differ = (item.embeds[:prompt] != parked.embeds[:prompt]).any(-1).nonzero()
        if differ.numel():
            size = int(differ[0, 0])
        else:
            placeholders = self.model.placeholder_mask(ids[None])[0, prompt:size].nonzero()
            size = prompt + int(placeholders[0, 0]) if placeholders.numel() else size
        item.done = size
        self.prefix_tokens_reused += size

    def _park(self, row: Row) -> None:
        if not self.config.reuse_prefixes or row.choice != 0 or row.prompt_embeds is None:
            return
        prompt = row.request.inputs.input_ids[0].to(self.device)
        answer = torch.tensor(row.token_ids[:row.filled - prompt.shape[0]], dtype=prompt.dtype, device=self.device)
        self._parked[row.slot] = _Parked(torch.cat([prompt, answer]), row.prompt_embeds)

    def _end_unstarted(self, request: Request) -> None:
        reason = "cancelled" if request.cancelled.is_set() else "length"
        if reason == "cancelled":
            self.rows_cancelled += request.n
        for choice in range(request.n):
            request.listener.on_finish(choice, reason, [])
            request.finish_choice()

    # cache ---------------------------------------------------------------------------------------
    def _allocate(self, slots: int, length: int) -> None:
        """A cache of ``slots`` rows of ``length`` tokens, plus a scratch slot and position (where
        padding tokens write)."""
        old = self.cache
        cache = SlotCache(self.model.language_model.config, slots + 1, length + 1, self.model.dtype, self.device)
        if old is not None:
            cache.copy_from(old)
        used = 0 if old is None else old.slots - 1
        self._free = sorted([*self._free, *range(used, slots)])
        self.cache = cache
        self.forward = Forward(self.model, cache, compile_step=self.compile)
        if self._seen is not None:
            seen = torch.zeros(cache.slots, self._seen.shape[1], dtype=torch.bool, device=self.device)
            seen[:self._seen.shape[0]] = self._seen
            self._seen = seen
        log.info("KV cache %s: %s", "grown to" if old is not None else "allocated", cache.describe())

    def _ensure_capacity(self, rows: int, tokens: int) -> None:
        if self.config.slot_length is not None:
            return  # allocated once for the configured limits; check_fits refused what cannot fit
        slots = 0 if self.cache is None else self.cache.slots - 1
        length = 0 if self.cache is None else self.cache.length - 1
        if rows <= slots and tokens <= length:
            return
        rounded = -(-tokens // GROWTH_ROUNDING) * GROWTH_ROUNDING
        new_slots = slots if rows <= slots else max(rows, min(2 * slots, self.config.max_rows))
        new_length = length if tokens <= length else max(tokens, min(rounded, context_length(self.model)))
        self._allocate(new_slots, new_length)

    def cache_data_ptrs(self) -> list[int]:
        return [] if self.cache is None else self.cache.data_ptrs()

    # prefill -------------------------------------------------------------------------------------
    def _prefill(self) -> None:
        """Prefill chunks of waiting prompts, several prompts per forward pass. Continuous: one pass of
        at most ``max_prefill_tokens`` tokens; static: passes until every admitted prompt is read."""
        while self.prefilling:
            budget = self.config.max_prefill_tokens
            self._drop_cancelled_prefills()
            batch = self._prefill_batch(budget)
            if not batch:
                return
            self._embed([item for item, _ in batch if item.embeds is None])
            for item, _ in batch:
                if item.parked is not None and item.embeds is not None:
                    self._reuse_prefix(item)
            # sizes after the reused prefixes; prompts that failed to embed have left
            batch = [(item, size) for item, size in self._prefill_batch(budget) if item.embeds is not None]
            if batch:
                self._prefill_chunks(batch)
            if self.config.schedule == "continuous":
                return

    def _prefill_batch(self, budget: int) -> list[tuple[_Prefill, int]]:
        """The prompts prefilled in one pass (first come first), and how many tokens of each: chunks
        padded to the longest stay within ``budget`` tokens together."""
        batch: list[tuple[_Prefill, int]] = []
        width = 0
        for item in self.prefilling:
            size = min(item.left, budget)
            if batch and max(width, size) * (len(batch) + 1) > budget:
                break
            batch.append((item, size))
            width = max(width, size)
        return batch

    def _drop_cancelled_prefills(self) -> None:
        for item in [p for p in self.prefilling if p.request.cancelled.is_set()]:
            self.prefilling.remove(item)
            self._free_slots(item.slots)
            self._end_unstarted(item.request)

    def _prefill_chunks(self, batch: list[tuple[_Prefill, int]]) -> None:
        try:
            logits = self.forward.prefill([item.embeds[item.done:item.done + size] for item, size in batch],
                                          [item.slots[0] for item, _ in batch], [item.done for item, _ in batch])
        except Exception as error:
            log.exception("prefill failed")
            for item, _ in batch:
                self._abandon(item, error)
            return
        for (item, size), row_logits in zip(batch, logits):
            item.done += size
            if item.left == 0:
                self.prefilling.remove(item)
                self._start_rows(item, row_logits[None])

    @torch.no_grad()
    def _embed(self, items: list[_Prefill]) -> None:
        """Token and visual embeddings of new prompts: one pass for all of them (the vision tower sees
        their images together), or one by one when that fails, so only a faulty prompt fails."""
        if not items:
            return
        extra = {} if self.config.feature_cache is None else {"feature_cache": self.config.feature_cache}
        if len(items) > 1:
            try:
                inputs = collate([item.request.inputs for item in items], self.pad_token_id).to(self.device)
                embeds = self.model.embed(inputs.input_ids, inputs.pixel_values, inputs.visual_items, **extra)
                for row, item in enumerate(items):  # left-padded: a prompt is the end of its row
                    item.embeds = embeds[row, embeds.shape[1] - item.request.prompt_length:]
                return
            except Exception:  # noqa: BLE001 - retried one by one below, where the faulty prompt fails
                log.warning("embedding %d prompts together failed; embedding them one by one", len(items))
        for item in items:
            try:
                inputs = item.request.inputs.to(self.device)
                item.embeds = self.model.embed(inputs.input_ids, inputs.pixel_values, inputs.visual_items, **extra)[0]
            except Exception as error:
                log.exception("embedding a prompt failed")
                self._abandon(item, error)

    @property
    def pad_token_id(self) -> int:
        pad = self.llava.tokenizer.pad_token_id
        return pad if pad is not None else self.eos_token_ids[0]

    def _abandon(self, item: _Prefill, error: Exception) -> None:
        if item in self.prefilling:
            self.prefilling.remove(item)
            self._free_slots(item.slots)
        item.embeds = None
        item.request.listener.on_error(error)
        item.request.fail()

    def _start_rows(self, item: _Prefill, logits: torch.Tensor) -> None:
        """A prefilled request: one row per choice, each with its first token, in its own slot."""
        request = item.request
        tokenizer = self.llava.tokenizer
        end_ids = () if request.ignore_eos else self.eos_token_ids
        rows = []
        for choice, slot in enumerate(item.slots):
            settings = request.choice_settings(choice)
            rows.append(Row(request, choice, settings, TextStream(tokenizer, request.stop, end_ids),
                            make_generator(settings.seed, self.device), filled=request.prompt_length, slot=slot,
                            prompt_embeds=item.embeds if self.config.reuse_prefixes else None))
        sampler = BatchSampler([r.settings for r in rows], [r.generator for r in rows], self.device)
        prompt_seen = None
        if sampler.any_penalty or self._seen is not None:
            prompt_seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool, device=self.device)
            prompt_seen[0, request.inputs.input_ids[0].to(self.device)] = True
        tokens = sampler(logits.expand(len(rows), -1),
                         prompt_seen.expand(len(rows), -1) if sampler.any_penalty else None).tolist()
        if len(rows) > 1:  # the other choices continue from the same prompt
            self.cache.copy_slot(item.slots[0], item.slots[1:], request.prompt_length)
        self.rows_generated += len(rows)
        if sampler.any_penalty and self._seen is None:
            self._seen = torch.zeros(self.cache.slots, logits.shape[-1], dtype=torch.bool, device=self.device)
        for row, token in zip(rows, tokens):
            if row.accept(token):
                self._park(row)
                self._free_slots([row.slot])
                request.finish_choice()
                continue
            if self._seen is not None:
                self._seen[row.slot] = prompt_seen[0]
                self._seen[row.slot, token] = True
            self.rows[row.slot] = row
            self._sampler = None

    # decode --------------------------------------------------------------------------------------
    def _decode(self) -> None:
        if not self.rows:
            return
        width = max(self.rows) + 1
        slots = sorted(self.rows)
        rows = [self.rows[slot] for slot in slots]
        try:
            tokens = [self.rows[s].last_token if s in self.rows else None for s in range(width)]
            logits = self.forward.decode(tokens, [self.rows[s].filled if s in self.rows else 0 for s in range(width)])
            index = torch.tensor(slots, device=self.device)
            if self._sampler is None:
                self._sampler = BatchSampler([r.settings for r in rows], [r.generator for r in rows], self.device)
            seen = self._seen[index] if self._sampler.any_penalty else None
            chosen = self._sampler(logits[index] if len(slots) < width else logits, seen)
        except Exception as error:
            log.exception("decode step failed")
            for request in {id(r.request): r.request for r in rows}.values():
                self._fail(request, error)
            return
        self.steps += 1
        if self._seen is not None:
            self._seen[index, chosen] = True
        ended = []
        for row, token in zip(rows, chosen.tolist()):
            row.filled += 1
            if row.accept(token):
                ended.append(row)
        self._remove(ended)

    def _leave_cancelled(self) -> None:
        ended = []
        for row in self.rows.values():
            if row.request.cancelled.is_set():
                row.finish("cancelled")
                self.rows_cancelled += 1
                ended.append(row)
        self._remove(ended)

    def _remove(self, rows: list[Row]) -> None:
        """Rows that have ended leave their slots."""
        for row in rows:
            del self.rows[row.slot]
            self._park(row)
            self._free_slots([row.slot])
            self._sampler = None
        self._running = self._count_running()  # before the callers waiting for these rows wake up
        for row in rows:
            row.request.finish_choice()

    def _free_slots(self, slots: list[int]) -> None:
        for slot in slots:
            heapq.heappush(self._free, slot)

    def _fail(self, request: Request, error: Exception) -> None:
        """A request that cannot go on: its rows leave and its listener gets the error."""
        for row in [row for row in self.rows.values() if row.request is request]:
            del self.rows[row.slot]
            self._free_slots([row.slot])
            self._sampler = None
        for item in [p for p in self.prefilling if p.request is request]:
            self.prefilling.remove(item)
            self._free_slots(item.slots)
        self._running = self._count_running()
        request.listener.on_error(error)
        request.fail()


def collate(parts: list[ModelInputs], pad_token_id: int) -> ModelInputs:
    """Several prepared prompts -> one left-padded batch (what the processor gives for them together)."""
    import torch.nn.functional as F

    width = max(p.input_ids.shape[1] for p in parts)
    ids = torch.cat([F.pad(p.input_ids, (width - p.input_ids.shape[1], 0), value=pad_token_id) for p in parts])
    mask = torch.cat([F.pad(p.attention_mask, (width - p.attention_mask.shape[1], 0), value=0) for p in parts])
    pixels = [p.pixel_values for p in parts if p.pixel_values is not None]
    items = [item for p in parts for item in p.visual_items]
    prompt_tokens = [count for p in parts for count in p.prompt_tokens]
    return ModelInputs(ids, mask, torch.cat(pixels) if pixels else None, items, prompt_tokens)


def decide_compile(option: bool | str, device: torch.device, serving: bool) -> bool:
    """``"auto"``: compile for a server on a GPU. Compiling takes a while for each row bucket, which
    pays back over a server's life, not over a ``Llava.generate`` call; and on a CPU the compiled
    step is no faster for models of real size (ask for it with ``compile=True``)."""
    if option == "auto":
        return serving and device.type == "cuda"
    return bool(option)


def context_length(model) -> int:
    return int(getattr(model.language_model.config, "max_position_embeddings", None) or 4096)

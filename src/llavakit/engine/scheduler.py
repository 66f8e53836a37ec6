"""The engine: a queue of requests and the step loop that generates their answers.

Every step (:meth:`Engine.step`): rows of cancelled requests leave; waiting requests join while
rows and cache are free (first come, first served; one that does not fit waits, it is never cut);
up to ``max_prefill_tokens`` prompt tokens are prefilled, long prompts in chunks over several
steps; then one decode step gives every running row its next token. So finished rows leave and new
requests join at every step, and running rows keep streaming while new prompts are read
(``schedule="continuous"``). ``schedule="static"`` admits a batch only when the previous one has
ended: it runs to its end while new requests wait.

A request's prompt is prefilled once, in the cache's spare slot, and copied into one slot per
choice. Running rows occupy slots ``0..n-1`` in order, so a decode step attends over a contiguous
view of the cache; when a row leaves, the last row moves into its slot.

The engine runs in its own thread (:meth:`start`, for the server) or in the caller's thread
(:meth:`run`, for ``Llava.generate``); either way one step runs at a time.
"""

from __future__ import annotations

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
from llavakit.engine.kv_cache import SlotCache
from llavakit.engine.requests import EngineClosed, QueueFull, Request, RequestTooLarge
from llavakit.engine.rows import Row
from llavakit.engine.sampling import BatchSampler, make_generator
from llavakit.engine.text import TextStream

if TYPE_CHECKING:
    from llavakit.api import Llava

log = logging.getLogger("llavakit.engine")

GROWTH_ROUNDING = 256  # a cache sized on demand grows its slots' length in steps of this many tokens


@dataclass
class _Prefill:
    """An admitted request whose prompt is being read into the spare slot."""

    request: Request
    embeds: torch.Tensor | None = None
    done: int = 0  # prompt tokens prefilled so far


class Engine:
    """Generates answers for submitted requests with one preallocated KV cache."""

    def __init__(self, llava: Llava, config: EngineConfig | None = None):
        self.llava = llava
        self.config = config or EngineConfig()
        self.model = llava.model
        self.device = self.model.device
        self.eos_token_ids = llava.eos_token_ids
        self.compile = decide_compile(self.config.compile, self.device)
        self._queue: deque[Request] = deque()
        self._wake = threading.Condition()
        self._drive = threading.Lock()  # one step at a time, whichever thread runs it
        self._closed = False
        self._thread: threading.Thread | None = None
        self.rows: list[Row] = []  # running rows; rows[i] lives in slot i
        self.prefilling: deque[_Prefill] = deque()
        self.cache: SlotCache | None = None
        self.forward: Forward | None = None
        self._seen: torch.Tensor | None = None  # (slots, V) tokens of each row, for repetition penalties
        self._sampler: BatchSampler | None = None
        self.steps = 0  # statistics, read by /health
        self.rows_generated = 0
        self.rows_cancelled = 0  # rows stopped early: their client left, timed out or was cut
        if self.config.slot_length is not None:
            self._allocate(self.config.max_rows, self.config.slot_length)

    # ---- the callers' side -----------------------------------------------------------------------
    def start(self) -> Engine:
        """Run the steps in a background thread (a server); without it, :meth:`run` drives them."""
        if self._thread is None:
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
        if request.n > self.config.max_rows:
            raise RequestTooLarge(f"the request asks for {request.n} choices; the engine decodes at most "
                                  f"{self.config.max_rows} rows (max_rows)")
        length = self.config.slot_length
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
        """Requests admitted and not finished (being prefilled or decoded)."""
        return len({id(row.request) for row in self.rows} | {id(p.request) for p in self.prefilling})

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; finish the queued and running ones (drain) or cancel them; stop the thread."""
        with self._wake:
            self._closed = True
            if not drain:
                for request in [*self._queue, *(p.request for p in self.prefilling), *(r.request for r in self.rows)]:
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
                self.step()

    def step(self) -> None:
        """Cancelled rows leave, waiting requests join, prompts are prefilled, every row decodes one token."""
        try:
            self._leave_cancelled()
            self._admit()
            self._prefill()
            self._decode()
        except Exception:  # a bug in the loop itself: fail what is running rather than hang its callers
            log.exception("engine step failed")
            raise

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
            prompt_tokens = 0
            while self._queue:
                request = self._queue[0]
                if request.cancelled.is_set() or request.settings.max_new_tokens == 0:
                    self._queue.popleft()
                    self._end_unstarted(request)
                    continue
                if self._reserved() + request.n > self.config.max_rows:
                    break
                if static and self.prefilling and prompt_tokens + request.prompt_length > self.config.max_prefill_tokens:
                    break
                self._queue.popleft()
                self._ensure_capacity(self._reserved() + request.n, request.cache_tokens)
                self.prefilling.append(_Prefill(request))
                prompt_tokens += request.prompt_length

    def _end_unstarted(self, request: Request) -> None:
        reason = "cancelled" if request.cancelled.is_set() else "length"
        if reason == "cancelled":
            self.rows_cancelled += request.n
        for choice in range(request.n):
            request.listener.on_finish(choice, reason, [])
            request.finish_choice()

    # cache ---------------------------------------------------------------------------------------
    def _allocate(self, slots: int, length: int) -> None:
        """A cache of ``slots`` rows of ``length`` tokens, plus one spare slot (prefills) and one spare
        position per slot (where padding rows of a compiled step write)."""
        old = self.cache
        cache = SlotCache(self.model.language_model.config, slots + 1, length + 1, self.model.dtype, self.device)
        if old is not None:
            cache.copy_from(old, spare=(old.slots - 1, cache.slots - 1))
        self.cache = cache
        self.forward = Forward(self.model, cache, scratch_slot=cache.slots - 1, compile_step=self.compile)
        if self._seen is not None:
            seen = torch.zeros(cache.slots, self._seen.shape[1], dtype=torch.bool, device=self.device)
            seen[:self._seen.shape[0] - 1] = self._seen[:-1]
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
        budget = self.config.max_prefill_tokens
        while self.prefilling and (budget > 0 or self.config.schedule == "static"):
            item = self.prefilling[0]
            request = item.request
            if request.cancelled.is_set():
                self.prefilling.popleft()
                self._end_unstarted(request)
                continue
            try:
                if item.embeds is None:
                    item.embeds = self._embed(request)
                length = request.prompt_length
                chunk = min(length - item.done, budget if self.config.schedule == "continuous"
                            else self.config.max_prefill_tokens)
                logits = self.forward.prefill(item.embeds[:, item.done:item.done + chunk], self.cache.slots - 1,
                                              item.done)
            except Exception as error:
                self.prefilling.popleft()
                log.exception("prefill failed")
                self._fail(request, error)
                continue
            item.done += chunk
            budget -= chunk
            if item.done == length:
                self.prefilling.popleft()
                self._start_rows(request, logits)

    @torch.no_grad()
    def _embed(self, request: Request) -> torch.Tensor:
        inputs = request.inputs.to(self.device)
        extra = {} if self.config.feature_cache is None else {"feature_cache": self.config.feature_cache}
        return self.model.embed(inputs.input_ids, inputs.pixel_values, inputs.visual_items, **extra)

    def _start_rows(self, request: Request, logits: torch.Tensor) -> None:
        """A prefilled request: one row per choice, each with its first token, copied into its slot."""
        tokenizer = self.llava.tokenizer
        end_ids = () if request.ignore_eos else self.eos_token_ids
        rows = []
        for choice in range(request.n):
            settings = request.choice_settings(choice)
            rows.append(Row(request, choice, settings, TextStream(tokenizer, request.stop, end_ids),
                            make_generator(settings.seed, self.device), filled=request.prompt_length))
        sampler = BatchSampler([r.settings for r in rows], [r.generator for r in rows], self.device)
        prompt_seen = None
        if sampler.any_penalty or self._seen is not None:
            prompt_seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool, device=self.device)
            prompt_seen[0, request.inputs.input_ids[0].to(self.device)] = True
        tokens = sampler(logits.expand(len(rows), -1), prompt_seen.expand(len(rows), -1) if sampler.any_penalty
                         else None).tolist()
        self.rows_generated += len(rows)
        for row, token in zip(rows, tokens):
            if row.accept(token):
                row.request.finish_choice()
                continue
            slot = len(self.rows)
            self.cache.copy_slot(self.cache.slots - 1, [slot], request.prompt_length)
            if sampler.any_penalty and self._seen is None:
                self._seen = torch.zeros(self.cache.slots, logits.shape[-1], dtype=torch.bool, device=self.device)
            if self._seen is not None:
                self._seen[slot] = prompt_seen[0]
                self._seen[slot, token] = True
            self.rows.append(row)
            self._sampler = None

    # decode --------------------------------------------------------------------------------------
    def _decode(self) -> None:
        if not self.rows:
            return
        rows = self.rows
        try:
            logits = self.forward.decode([r.last_token for r in rows], [r.filled for r in rows])
            if self._sampler is None:
                self._sampler = BatchSampler([r.settings for r in rows], [r.generator for r in rows], self.device)
            seen = self._seen[:len(rows)] if self._sampler.any_penalty else None
            tokens = self._sampler(logits, seen)
        except Exception as error:
            log.exception("decode step failed")
            for request in {id(r.request): r.request for r in rows}.values():
                self._fail(request, error)
            return
        self.steps += 1
        if self._seen is not None:
            self._seen[torch.arange(len(rows), device=self.device), tokens] = True
        ended = []
        for index, (row, token) in enumerate(zip(rows, tokens.tolist())):
            row.filled += 1
            if row.accept(token):
                ended.append(index)
        self._remove(ended)

    def _leave_cancelled(self) -> None:
        ended = []
        for index, row in enumerate(self.rows):
            if row.request.cancelled.is_set():
                row.finish("cancelled")
                self.rows_cancelled += 1
                ended.append(index)
        self._remove(ended)

    def _remove(self, indices: list[int]) -> None:
        """Rows at ``indices`` have ended: free their slots, moving the last rows down into them."""
        for index in sorted(indices, reverse=True):
            row = self.rows[index]
            row.request.finish_choice()
            last = len(self.rows) - 1
            if index != last:
                moved = self.rows[last]
                self.cache.move_slot(last, index, moved.filled)
                if self._seen is not None:
                    self._seen[index] = self._seen[last]
                self.rows[index] = moved
            self.rows.pop()
            self._sampler = None

    def _fail(self, request: Request, error: Exception) -> None:
        """A request that cannot go on: its rows leave and its listener gets the error."""
        self._remove([i for i, row in enumerate(self.rows) if row.request is request and row.finish_reason is None])
        request.listener.on_error(error)
        request.fail()


def decide_compile(option: bool | str, device: torch.device) -> bool:
    """``"auto"``: compile where a compiled step pays, on a GPU (on a CPU, the eager step was as fast
    once the cache stopped growing, and compiling costs start-up time)."""
    if option == "auto":
        return device.type == "cuda"
    return bool(option)


def context_length(model) -> int:
    return int(getattr(model.language_model.config, "max_position_embeddings", None) or 4096)

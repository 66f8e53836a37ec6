"""The engine: a bounded queue of requests and one scheduler thread that batches them on the model.

Request handlers prepare their prompt (images decoded, tokens counted) in their own threads and
submit a :class:`Job`. The scheduler waits a few milliseconds after the first job arrives so that
concurrent requests share one batch, then runs the batch to the end with ``generate_rows``. Jobs
that arrive meanwhile wait for the next batch (static batching; continuous batching can replace
``_run`` without changing the job interface). Results flow back through each job's listener, from
the scheduler thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llavakit.api import Llava
from llavakit.model.generation import SamplingSettings
from llavakit.processing.processor import ModelInputs
from llavakit.serving.decode import Row, collate, generate_rows
from llavakit.serving.sampling import make_generator
from llavakit.serving.text import TextStream

log = logging.getLogger("llavakit.serving")


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


class EngineClosed(Exception):
    """The engine is shutting down and takes no new requests."""


class JobListener(Protocol):
    """Receives a job's results, from the scheduler thread."""

    def on_text(self, choice: int, delta: str) -> None: ...
    def on_finish(self, choice: int, reason: str, token_ids: list[int]) -> None: ...
    def on_error(self, error: Exception) -> None: ...


@dataclass
class Job:
    """One request: a prepared prompt answered ``n`` times."""

    inputs: ModelInputs  # a batch of one prompt
    settings: SamplingSettings
    listener: JobListener
    n: int = 1
    stop: Sequence[str] = ()
    ignore_eos: bool = False  # end tokens are generated as text; only the limit or a stop string ends a row
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.monotonic)

    @property
    def prompt_length(self) -> int:
        return int(self.inputs.input_ids.shape[1])

    def cancel(self) -> None:
        """Stop generating for this job (client gone or timed out); its rows end as "cancelled"."""
        self.cancelled.set()

    def choice_settings(self, choice: int) -> SamplingSettings:
        # Choice i samples with seed + i: choice 0 equals the same request with n = 1.
        seed = None if self.settings.seed is None else self.settings.seed + choice
        s = self.settings
        return SamplingSettings(s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.repetition_penalty, seed)


@dataclass
class EngineLimits:
    max_batch_rows: int = 32  # sequences decoded together (a request counts n; a larger n runs alone)
    max_batch_tokens: int = 65_536  # padded prompt tokens prefilled together
    batch_window_s: float = 0.005  # how long the first job of a batch waits for company
    max_queued: int = 256  # jobs waiting; more are refused


class Engine:
    """Owns the model; one scheduler thread runs every forward pass."""

    def __init__(self, llava: Llava, limits: EngineLimits | None = None):
        self.llava = llava
        self.limits = limits or EngineLimits()
        self.pad_token_id = llava.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = llava.eos_token_ids[0]
        self._queue: deque[Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._running: list[Job] = []
        self._thread = threading.Thread(target=self._loop, name="llavakit-scheduler", daemon=True)
        self.batches = 0  # statistics, read by /health
        self.rows_generated = 0
        self.rows_cancelled = 0  # rows stopped early: their client left, timed out or was cut

    # ---- the handlers' side ---------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        return self

    def submit(self, job: Job) -> None:
        with self._wake:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            if len(self._queue) >= self.limits.max_queued:
                raise QueueFull(f"{len(self._queue)} requests are already waiting (the queue holds "
                                f"{self.limits.max_queued})")
            self._queue.append(job)
            self._wake.notify()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new jobs; finish the queued and running ones (drain) or cancel them; stop the thread."""
        with self._wake:
            self._closed = True
            if not drain:
                for job in [*self._queue, *self._running]:
                    job.cancel()
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the scheduler thread ----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            self._running = jobs
            try:
                self._run(jobs)
            except Exception as error:
                log.exception("batch failed outside generation")
                for job in jobs:
                    job.listener.on_error(error)
            finally:
                self._running = []

    def _next_batch(self) -> list[Job] | None:
        limits = self.limits
        with self._wake:
            while not self._queue:
                if self._closed:
                    return None
                self._wake.wait()
            deadline = time.monotonic() + limits.batch_window_s
            while sum(j.n for j in self._queue) < limits.max_batch_rows and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            batch = [self._queue.popleft()]
            while self._queue and self._fits(batch, self._queue[0]):
                batch.append(self._queue.popleft())
            return batch

    def _fits(self, batch: list[Job], job: Job) -> bool:
        rows = sum(j.n for j in batch) + job.n
        width = max(job.prompt_length, *(j.prompt_length for j in batch))
        return rows <= self.limits.max_batch_rows and width * (len(batch) + 1) <= self.limits.max_batch_tokens

    def _run(self, jobs: list[Job]) -> None:
        self.rows_cancelled += sum(job.n for job in jobs if job.cancelled.is_set())  # left while queued
        jobs = [job for job in jobs if not job.cancelled.is_set()]
        if not jobs:
            return
        rows = [self._row(job, index, choice) for index, job in enumerate(jobs) for choice in range(job.n)]
        try:
            generate_rows(self.llava.model, collate([j.inputs for j in jobs], self.pad_token_id), rows)
        except Exception as error:
            started = any(row.token_ids or row.finish_reason for row in rows)
            if len(jobs) > 1 and not started:
                # Nothing was sent yet: run each job alone so that only the faulty one fails.
                log.warning("batch of %d failed before generating (%s); retrying one by one", len(jobs), error)
                for job in jobs:
                    self._run([job])
                return
            log.exception("generation failed")
            for job in {id(r.data["job"]): r.data["job"] for r in rows if r.finish_reason is None}.values():
                job.listener.on_error(error)
            return
        self.batches += 1
        self.rows_generated += len(rows)
        self.rows_cancelled += sum(row.finish_reason == "cancelled" for row in rows)

    def _row(self, job: Job, prompt: int, choice: int) -> Row:
        settings = job.choice_settings(choice)
        listener = job.listener
        return Row(
            prompt=prompt,
            settings=settings,
            stream=TextStream(self.llava.tokenizer, job.stop, () if job.ignore_eos else self.llava.eos_token_ids),
            generator=make_generator(settings.seed, self.llava.model.device),
            on_text=lambda row, delta: listener.on_text(choice, delta),
            on_finish=lambda row: listener.on_finish(choice, row.finish_reason, list(row.token_ids)),
            cancelled=job.cancelled.is_set,
            data={"job": job},
        )

"""The one thread that runs the model for `chattune serve`: a bounded queue, batching and cancellation.

A `Generator` must not run two calls at once, and generation must never block the event loop, so
HTTP handlers only put a `Job` on the queue and await what the worker hands back through
`Job.deliver` (thread-safe, via the job's event loop).

Each turn the worker takes the oldest job plus every queued job of the same kind (streaming or not)
with equal `Sampling`, up to `max_batch_size`, and answers them with one batched call:
`Generator.generate` for plain requests; for streams, `Generator.stream_many` (one left-padded batch that
hands each row's text to its own client, with per-row stop and cancel). A lone
stream goes through `Generator.stream`. Jobs whose client left are skipped; a running stream whose
client left stops at its next token without stopping the other rows.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

from .engine import Job, QueueFull, Sampling, Started, as_api_error
from .serve_schema import APIError

if TYPE_CHECKING:
    from .generate import Generator

log = logging.getLogger("chattune.serve")


class Worker:
    """Runs queued jobs on the model, one batch at a time (see the module doc).

    Args:
        generator: the loaded `Generator`.
        max_queue: jobs that may wait (not counting running ones) before `submit` raises QueueFull.
        max_batch_size: most jobs answered by one batched call.
    """

    def __init__(self, generator: Generator, max_queue: int, max_batch_size: int = 8):
        self.gen = generator
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        # Held for every model call; anything else in the process that calls the generator takes it too.
        self.model_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = {"completed": 0, "skipped": 0, "cancelled": 0, "rejected": 0, "batches": 0,
                      "largest_batch": 0}
        limit = getattr(getattr(generator.model, "config", None), "max_position_embeddings", None)
        self.context_limit = int(limit) if isinstance(limit, int) and limit > 0 else None

    # --- lifecycle and queue ----------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="chattune-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail queued jobs (503), cancel running ones and wait for the thread."""
        with self._cond:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
            for job in self._running:
                job.cancel.set()
            self._cond.notify_all()
        for job in pending:
            job.deliver(APIError(503, "the server is shutting down", code="shutting_down"))
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a job. Raises QueueFull when `max_queue` jobs wait, APIError(503) when stopping."""
        with self._cond:
            if self._stopping:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if len(self._pending) >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull
            self._pending.append(job)
            self._cond.notify()

    def snapshot(self) -> dict:
        """Queue depth and counters (shown by /health)."""
        with self._cond:
            return {"queued": len(self._pending), "running": len(self._running), **self.stats}

    def _count(self, key: str, n: int = 1) -> None:
        with self._cond:
            self.stats[key] += n

    # --- the thread -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                first = self._pending.popleft()
                self._running = [first]  # counted as running also while it waits for the model lock
            try:
                with self.model_lock:
                    self._run(first)
            except Exception as e:
                log.exception("generation failed")
                for job in dict.fromkeys([first, *self._running]):
                    job.deliver(as_api_error(e))
            finally:
                with self._cond:
                    self._running = []

    def _take_compatible(self, first: Job) -> list[Job]:
        """Remove up to max_batch_size-1 queued jobs that can share first's batch."""
        if not first.sampling.batchable:
            return []
        taken: list[Job] = []
        with self._cond:
            keep: deque[Job] = deque()
            for job in self._pending:
                if (len(taken) < self.max_batch_size - 1 and job.stream == first.stream
                        and job.sampling == first.sampling and not job.cancel.is_set()):
                    taken.append(job)
                else:
                    keep.append(job)
            self._pending = keep
            self._running = [first, *taken]
        return taken

    def _prepare(self, job: Job) -> tuple[int, Sampling]:
        """Render the prompt, check it fits the context and trim a defaulted max_tokens to fit."""
        n = len(self.gen.prompt_ids(job.messages, job.tools))
        s = job.sampling
        if self.context_limit is not None:
            room = self.context_limit - n
            if room < 1:
                raise APIError(400, f"the prompt is {n} tokens; this model's context window is "
                               f"{self.context_limit} tokens", param="messages", code="context_length_exceeded")
            if s.max_new_tokens > room:
                if s.explicit_max:
                    raise APIError(400, f"the prompt ({n} tokens) plus max_tokens ({s.max_new_tokens}) exceeds "
                                   f"this model's context window of {self.context_limit} tokens",
                                   param="max_tokens", code="context_length_exceeded")
                s = replace(s, max_new_tokens=room)
        return n, s

    def _run(self, first: Job) -> None:
        groups: dict[Sampling, list[Job]] = {}
        for job in [first, *self._take_compatible(first)]:
            if job.cancel.is_set():
                self._count("skipped")
                continue
            try:
                n, s = self._prepare(job)
            except Exception as e:  # noqa: BLE001 - one bad prompt fails only its own request
                job.deliver(as_api_error(e))
                continue
            if job.stream:
                job.deliver(Started(n))
            groups.setdefault(s, []).append(job)  # a trimmed max_tokens splits the batch
        for s, group in groups.items():
            try:
                if not first.stream:
                    for job, c in zip(group, self.gen.generate(
                            [j.messages for j in group], max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                            top_p=s.top_p, seed=s.seed, stop=list(s.stop) or None, tools=[j.tools for j in group])):
                        job.deliver(c)
                elif len(group) == 1:
                    for item in self.gen.stream(group[0].messages, max_new_tokens=s.max_new_tokens,
                                                temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                                                stop=list(s.stop) or None, cancel=group[0].cancel,
                                                tools=group[0].tools):
                        group[0].deliver(item)
                else:  # one left-padded batch; each row ends (and is answered) on its own
                    for i, item in self.gen.stream_many(
                            [j.messages for j in group], max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                            top_p=s.top_p, seed=s.seed, stop=list(s.stop) or None,
                            cancels=[j.cancel for j in group], tools=[j.tools for j in group]):
                        group[i].deliver(item)
            except Exception as e:
                log.exception("generation failed")
                for job in group:
                    job.deliver(as_api_error(e))
                continue
            cancelled = sum(j.cancel.is_set() for j in group) if first.stream else 0
            with self._cond:
                self.stats["batches"] += 1
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(group))
                self.stats["completed"] += len(group) - cancelled
                self.stats["cancelled"] += cancelled

"""One loaded model's continuous batch in the hf engine: admitted jobs → prefill → decode steps → answers.

A `Lane` is driven by the engine's thread, one `turn` at a time (the engine holds the model lock around
it). Each turn: newcomers waiting for a prefill form a group of at most `prefill_tokens` prompt tokens
(the first always goes), the group in flight advances by one chunk of that budget, a finished group
samples its first tokens and joins the running rows, then every running row takes one decode step. So
a newcomer's prefill delays running streams by at most one chunk per token, and a row that ends (end of
turn, stop string, max_tokens) or whose client left is answered and dropped in the same turn.

Per-row sampling (`sampling.RowSampler`): each row applies the logits processors `Generator.generate`
applies to its conversation alone (the run's generation_config: repetition_penalty, top_k, ...) to its
own ids, then takes the argmax (so a greedy answer equals `Generator.generate` alone) or draws from its
own `torch.Generator`, seeded by the request's ``seed`` (reproducible whatever else shares the batch) or
from a process-wide source. Greedy rows that need no processor take the batch's argmax.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .engine import Job, LaneStats, Sampling, Started, fit_context
from .answer import RowStream
from .kv_batch import Prefill, Rows, prefill_cost
from .sampling import RowSampler, pick, row_sampler
from .serve_schema import APIError

if TYPE_CHECKING:
    from .generate import Generator


@dataclass(frozen=True)
class Run:
    """One served run: its `Generator` (tokenizer, template, end-of-turn ids) and its adapter's name in a
    model that holds several (None: the model as loaded answers it)."""

    gen: Generator
    adapter: str | None = None


@dataclass(eq=False)
class Live:
    """A job inside a lane: its prompt, settings, text so far and sampler (None: the batch's argmax)."""

    job: Job
    run: Run
    prompt: list[int]
    sampling: Sampling
    text: RowStream
    sampler: RowSampler | None = field(default=None, repr=False)


class Lane:
    """The continuous batch of one loaded model (see the module doc).

    Args:
        model: the causal LM (a PeftModel holding one or several adapters, or a plain model).
        pad: the pad token id rows are left-padded with.
        multi_adapter: the model holds several adapters: rows pass peft's per-row ``adapter_names``.
        prefill_tokens: prompt tokens per prefill chunk (bounds how long a newcomer stalls running rows).
    """

    def __init__(self, model, pad: int, multi_adapter: bool, prefill_tokens: int):
        self.model, self.pad, self.multi_adapter, self.budget = model, pad, multi_adapter, prefill_tokens
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.context_limit = int(limit) if isinstance(limit, int) and limit > 0 else None
        self.device = next(model.parameters()).device
        self.waiting: deque[Live] = deque()  # admitted, rendered, not prefilled yet
        self.prefill: Prefill | None = None
        self.prefilling: list[Live] = []
        self.rows = Rows(model)
        self.live: list[Live] = []  # in the order of self.rows
        self.stats = LaneStats()
        # Jobs held (waiting, prefilling, decoding): one counter, so another thread reading it never sees a
        # job between two lists (e.g. while its prefill group joins the running rows).
        self.held = 0

    def __len__(self) -> int:
        """Jobs this lane holds (waiting for a prefill, being prefilled, decoding)."""
        return self.held

    # --- admission (engine thread, outside the model lock) ------------------------------------------
    def admit(self, job: Job, run: Run) -> None:
        """Render `job`'s prompt, check it fits, and queue it for the next prefill (or answer its error)."""
        if job.cancel.is_set():
            self.stats.skipped += 1
            return
        try:
            prompt = run.gen.prompt_ids(job.messages, job.tools)
            sampling = self._fit(len(prompt), job.sampling)
            rng = None
            if sampling.temperature > 0:
                rng = torch.Generator(device=self.device)
                rng.manual_seed(sampling.seed if sampling.seed is not None else random.getrandbits(63))
            kwargs = run.gen.generate_kwargs(sampling.max_new_tokens, sampling.temperature, sampling.top_p)
            sampler = row_sampler(self.model, run.gen.generation_config, kwargs, prompt, rng, self.device)
        except Exception as e:  # noqa: BLE001 - one bad prompt fails only its own request
            from .engine import as_api_error

            job.deliver(as_api_error(e))
            return
        live = Live(job, run, prompt, sampling, RowStream(run.gen, len(prompt), sampling.max_new_tokens,
                                                          list(sampling.stop)), sampler)
        if job.stream:
            job.deliver(Started(len(prompt)))
        self.waiting.append(live)
        self.held += 1

    def _fit(self, n: int, s: Sampling) -> Sampling:
        """Check the prompt fits the context window; trim a defaulted max_tokens to what is left."""
        return fit_context(n, s, self.context_limit)

    # --- one turn (engine thread, under the model lock) ---------------------------------------------
    def turn(self) -> None:
        """Advance prefill by one chunk and every running row by one token (see the module doc)."""
        with torch.inference_mode():
            self._drop_cancelled()
            if self.prefill is None and self.waiting:
                self._start_prefill()
            if self.prefill is not None:
                logits = self.prefill.advance(self.budget)
                if logits is not None:
                    self._join(logits)
            if len(self.rows):
                self.stats.steps += 1
                self.stats.largest_batch = max(self.stats.largest_batch, len(self.rows))
                self._advance(self.rows.step(self.multi_adapter))

    def _drop_cancelled(self) -> None:
        for live in [x for x in self.waiting if x.job.cancel.is_set()]:
            self.waiting.remove(live)
            self.stats.skipped += 1
            self.held -= 1
        gone = [i for i, x in enumerate(self.live) if x.job.cancel.is_set()]
        if gone:
            for i in gone:
                self._end(self.live[i], cancelled=True)
            self._keep([i for i in range(len(self.live)) if i not in set(gone)])

    def _start_prefill(self) -> None:
        """Take the oldest waiting rows whose prefill fits one chunk's budget, counted as `Prefill`
        computes it (a prefix they share once), so a burst of prompts that share a system prompt
        and template header is prefilled together; the oldest always goes."""
        group = [self.waiting.popleft()]
        while self.waiting and prefill_cost([x.prompt for x in (*group, self.waiting[0])],
                                            self._adapters([*group, self.waiting[0]])) <= self.budget:
            group.append(self.waiting.popleft())
        adapters = self._adapters(group)
        self.prefill = Prefill(self.model, [x.prompt for x in group], self.pad, adapters)
        self.prefilling = group
        self.stats.prefills += 1

    def _adapters(self, rows: list[Live]) -> list[str] | None:
        return [x.run.adapter or "__base__" for x in rows] if self.multi_adapter else None

    def _join(self, logits: torch.Tensor) -> None:
        group, done = self.prefilling, self.prefill
        self.prefill, self.prefilling = None, []
        assert done is not None
        first = self._pick(logits, group)
        self.rows.join(done, first)
        self.live += group
        self._deliver(first.tolist(), start=len(self.live) - len(group))

    def _advance(self, logits: torch.Tensor) -> None:
        nxt = self._pick(logits, self.live)
        self.rows.last = nxt
        self._deliver(nxt.tolist(), start=0)

    def _pick(self, logits: torch.Tensor, rows: list[Live]) -> torch.Tensor:
        return pick(logits, [x.sampler for x in rows])

    def _deliver(self, tokens: list[int], start: int) -> None:
        """Hand each row its new token's text; answer and drop the rows that ended."""
        ended = []
        for i, tok in enumerate(tokens, start):
            live = self.live[i]
            delta, end = live.text.push(tok)
            if delta and live.job.stream:
                live.job.deliver(delta)
            if end:
                ended.append(i)
                self._end(live, cancelled=False)
        if ended:
            gone = set(ended)
            self._keep([i for i in range(len(self.live)) if i not in gone])

    def _end(self, live: Live, cancelled: bool) -> None:
        self.held -= 1
        if cancelled:
            live.text.finish(cancelled=True)
            self.stats.cancelled += 1
            return  # nobody is listening
        live.text.answer(live.job)
        self.stats.completed += 1

    def _keep(self, index: list[int]) -> None:
        self.rows.keep(index)
        self.live = [self.live[i] for i in index]

    def fail(self, err: APIError) -> list[Job]:
        """Answer every job this lane holds with `err` and start empty (after a failed model call)."""
        jobs = [x.job for x in (*self.waiting, *self.prefilling, *self.live)]
        for job in jobs:
            job.deliver(err)
        self.waiting.clear()
        self.prefill, self.prefilling, self.live = None, [], []
        self.rows.clear()
        self.held = 0
        return jobs

"""llama.cpp's own multi-sequence batches, as llama-server runs them: one context whose KV cache holds every
running answer of one model, each as its own sequence id.

`SeqContext` owns the llama.cpp model, context and token batch (the low-level C API of llama-cpp-python:
its `Llama` class keeps one sequence per context). `Sampler` is one request's llama.cpp sampler chain.
`Lane` schedules the answers of one model over its context (the hf engine's `hf_lane` is the model):

* a turn builds one batch: the next token of every decoding row, then prompt tokens of newcomers up to
  the batch's token budget (a long prompt is fed over several turns, so running streams keep a step
  per turn); one `llama_decode` runs it all;
* the rows whose last token asked for logits sample their next token from their own sampler (greedy =
  the argmax of the row's logits; a seeded sampler draws the same numbers whatever shares the batch);
* a row that ends (end of turn, stop string, max_tokens) or whose client left is answered (or dropped)
  and its sequence is removed from the KV cache in the same turn, so its cells and its id are free for
  the next newcomer.

The KV cache is unified (one buffer of cells shared by all sequences): with per-sequence streams,
llama.cpp can only put sequences with consecutive ids in one micro-batch. Each row reserves the cells it
may need (prompt + max_new_tokens) when it starts, so a decode never runs out of cells halfway through an
answer; rows that do not fit wait, rendered, until enough cells are free.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ChattuneError
from .answer import RowStream
from .engine import Job, LaneStats, Sampling, Started, as_api_error, fit_context
from .prompt import PromptRenderer

# Cells of a context's KV cache when every row could use the whole window: a bound so a long window times
# many rows does not allocate (and zero) gigabytes up front. Rows beyond it wait for cells.
POOL_CELLS = 16384
BATCH_TOKENS = 512  # tokens per llama_decode: every running row's next token plus newcomers' prompt tokens


log = logging.getLogger("chattune.serve")
LOG_ERROR = 4  # ggml's GGML_LOG_LEVEL_ERROR (llama-cpp-python's own log filter maps ggml's levels off by one)


@functools.cache
def _quiet(llama_cpp: Any) -> Any:
    """Route llama.cpp's log (model and context details on every load, to stderr) to this module's logger,
    errors only. Cached: the callback must stay alive as long as llama.cpp may call it."""

    @llama_cpp.llama_log_callback
    def sink(level: int, text: bytes, _user: Any) -> None:
        if level == LOG_ERROR:
            log.error("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

    llama_cpp.llama_log_set(sink, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    return sink


class SeqContext:
    """One GGUF loaded in llama.cpp with a context for `n_seq` sequences sharing one KV cache.

    Args:
        llama_cpp: the `llama_cpp` module.
        gguf: the model file.
        window: the context window of one sequence (the run's training max_length); None: the GGUF's own.
        n_seq: sequences the context holds at once.
        threads: CPU threads llama.cpp computes with.

    Raises:
        ChattuneError: llama.cpp could not load the file or make the context.
    """

    def __init__(self, llama_cpp: Any, gguf: Path, window: int | None, n_seq: int, threads: int):
        _quiet(llama_cpp)
        self.lib = llama_cpp
        self.model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), llama_cpp.llama_model_default_params())
        if not self.model:
            raise ChattuneError(f"llama.cpp could not load {gguf}")
        self.window = int(window or llama_cpp.llama_model_n_ctx_train(self.model))
        if self.window <= 0:
            llama_cpp.llama_model_free(self.model)
            raise ChattuneError(f"{gguf} states no context window and its run none either")
        self.n_seq = max(1, min(n_seq, llama_cpp.llama_max_parallel_sequences()))
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = max(self.window, min(self.window * self.n_seq, POOL_CELLS))
        p.n_batch = p.n_ubatch = BATCH_TOKENS
        p.n_seq_max = self.n_seq
        p.kv_unified = True
        # as `Llama` (the export's verification) runs: llama.cpp's default (auto) picks flash attention on
        # CPU, which rounds differently
        p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.n_threads = p.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, p)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise ChattuneError(f"llama.cpp could not make a context for {gguf} ({p.n_ctx} cells, {self.n_seq} "
                                "sequences)")
        self.cells = int(llama_cpp.llama_n_ctx(self.ctx))  # llama.cpp rounds up to a multiple of 256
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
        self.size = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Put one token of sequence `seq` at position `pos` into the next batch; its index in the batch."""
        b, i = self.batch, self.size
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, int(logits)
        b.seq_id[i][0] = seq
        self.size += 1
        return i

    def decode(self) -> None:
        """Run the batch built by `add` (and empty it).

        Raises:
            ChattuneError: llama.cpp refused it (the cache is left as before the call for a refusal).
        """
        self.batch.n_tokens, n = self.size, self.size
        self.size = 0
        rc = self.lib.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise ChattuneError(f"llama_decode failed ({rc}) on a batch of {n} tokens")

    def drop(self, seq: int) -> None:
        """Remove sequence `seq` from the KV cache (its cells are free again)."""
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def clear(self) -> None:
        """Empty the KV cache and start filling it from its first cell again (its contents are left: every
        cell is free), so a request alone lays out its cells as a fresh single-sequence context does."""
        self.lib.llama_memory_clear(self.memory, False)

    def close(self) -> None:
        """Free the batch, the context and the model."""
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)
            self.ctx = self.model = None


class Sampler:
    """One request's llama.cpp sampler chain: greedy at temperature 0, else temperature, the run's top-k
    (`top_k`, 0: none), then top-p (the hf engine's order) and a draw from the chain's own generator, seeded
    by `seed` (a random seed when None)."""

    def __init__(self, llama_cpp: Any, s: Sampling, top_k: int = 0):
        self.lib = llama_cpp
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        parts = [llama_cpp.llama_sampler_init_greedy()]
        if s.temperature > 0:
            seed = s.seed if s.seed is not None else random.getrandbits(32)
            parts = [llama_cpp.llama_sampler_init_temp(s.temperature)]
            if top_k > 0:
                parts.append(llama_cpp.llama_sampler_init_top_k(top_k))
            if s.top_p < 1:
                parts.append(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
            parts.append(llama_cpp.llama_sampler_init_dist(seed % 2**32))
        for part in parts:  # the chain owns (and frees) its parts
            llama_cpp.llama_sampler_chain_add(self.chain, part)

    def sample(self, ctx: SeqContext, index: int) -> int:
        """The next token from the logits of batch entry `index` of the last decode."""
        return int(self.lib.llama_sampler_sample(self.chain, ctx.ctx, index))

    def close(self) -> None:
        if self.chain:
            self.lib.llama_sampler_free(self.chain)
            self.chain = None


@dataclass(eq=False)
class Row:
    """One job in a lane: its prompt, how much of it (and of the answer) is in the cache, its sampler."""

    job: Job
    prompt: list[int]
    sampling: Sampling
    text: RowStream
    sampler: Sampler
    seq: int = -1  # its sequence id while it holds cells
    pos: int = 0  # tokens of this row in the KV cache
    next: int | None = None  # the sampled token to feed next (None while the prompt is fed)
    index: int = -1  # its entry in the batch being decoded that asked for logits (-1: none)

    @property
    def reserved(self) -> int:
        return len(self.prompt) + self.sampling.max_new_tokens


class Lane:
    """The continuous batch of one served GGUF (see the module doc).

    Args:
        ctx: its llama.cpp context.
        renderer: the run's prompt renderer (tokenizer, template, end-of-turn ids).
        top_k: the run's generation_config top_k for sampled rows (0: none), as `Generator` samples.
    """

    def __init__(self, ctx: SeqContext, renderer: PromptRenderer, top_k: int = 0):
        self.ctx, self.renderer, self.top_k = ctx, renderer, top_k
        self.waiting: deque[Row] = deque()  # rendered, not in the cache yet
        self.rows: list[Row] = []  # holding a sequence id and cells
        self.free = list(range(ctx.n_seq))
        self.stats = LaneStats()

    def __len__(self) -> int:
        return len(self.waiting) + len(self.rows)

    def admit(self, job: Job) -> None:
        """Render `job`'s prompt, check it fits the window, and queue it for the next turn (or answer its
        error)."""
        if job.cancel.is_set():
            self.stats.skipped += 1
            return
        try:
            prompt = self.renderer.prompt_ids(job.messages, job.tools)
            s = fit_context(len(prompt), job.sampling, self.ctx.window)
        except Exception as e:  # noqa: BLE001 - one bad prompt fails only its own request
            job.deliver(as_api_error(e))
            return
        row = Row(job, prompt, s, RowStream(self.renderer, len(prompt), s.max_new_tokens, list(s.stop)),
                  Sampler(self.ctx.lib, s, self.top_k))
        if job.stream:
            job.deliver(Started(len(prompt)))
        self.waiting.append(row)

    def turn(self) -> None:
        """Drop cancelled rows, start waiting ones that fit, decode one batch, hand out its tokens."""
        for row in [r for r in self.waiting if r.job.cancel.is_set()]:
            self.waiting.remove(row)
            row.sampler.close()
            self.stats.skipped += 1
        for row in [r for r in self.rows if r.job.cancel.is_set()]:
            row.text.finish(cancelled=True)
            self.stats.cancelled += 1
            self._leave(row)
        if not self.rows:
            # Where a sequence's cells lie changes its attention sums by rounding (masked cells sit between
            # them); starting from the first cell, a request alone computes exactly what one-sequence
            # llama.cpp (and export's verification) computes.
            self.ctx.clear()
        used = sum(r.reserved for r in self.rows)
        while self.waiting and self.free and used + self.waiting[0].reserved <= self.ctx.cells:
            row = self.waiting.popleft()
            row.seq = self.free.pop()
            used += row.reserved
            self.rows.append(row)
        if not self.rows:
            return
        budget = BATCH_TOKENS
        for row in self.rows:
            row.index = -1
            if row.next is not None:
                row.index = self.ctx.add(row.next, row.pos, row.seq, True)
                row.pos += 1
                budget -= 1
        for row in self.rows:
            if row.next is None and budget > 0:
                chunk = row.prompt[row.pos:row.pos + budget]
                for k, tok in enumerate(chunk):
                    i = self.ctx.add(tok, row.pos + k, row.seq, row.pos + k == len(row.prompt) - 1)
                row.pos += len(chunk)
                budget -= len(chunk)
                if row.pos == len(row.prompt):
                    row.index = i
                    self.stats.prefills += 1
        self.stats.steps += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(self.rows))
        self.ctx.decode()
        for row in [r for r in self.rows if r.index >= 0]:
            row.next = row.sampler.sample(self.ctx, row.index)
            delta, ended = row.text.push(row.next)
            if delta and row.job.stream:
                row.job.deliver(delta)
            if ended:  # counted and gone before the client hears of it, so a snapshot never lags its answer
                self._leave(row)
                self.stats.completed += 1
                row.text.answer(row.job)

    def _leave(self, row: Row) -> None:
        self.rows.remove(row)
        self.ctx.drop(row.seq)
        self.free.append(row.seq)
        row.sampler.close()

    def fail(self, err: Exception) -> list[Job]:
        """Answer every job this lane holds with `err` and start empty (after a failed llama.cpp call)."""
        jobs = [r.job for r in (*self.waiting, *self.rows)]
        for row in (*self.waiting, *self.rows):
            row.job.deliver(err)
            row.sampler.close()
            if row.seq >= 0:
                self.ctx.drop(row.seq)
        self.waiting.clear()
        self.rows = []
        self.free = list(range(self.ctx.n_seq))
        return jobs

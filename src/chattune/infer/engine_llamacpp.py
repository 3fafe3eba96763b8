"""The ``llamacpp`` engine: a run's GGUF export answered by llama.cpp (llama-cpp-python), for laptops.

It serves what `chattune export RUN --to gguf` wrote (and verified token for token against the run): the
path may be the run dir (its default export folder beside it is used, f16 first), an export folder, or a
.gguf file inside one. Prompts are rendered by the run's `PromptRenderer` (never llama.cpp's own template
handling) and fed as token ids; generation stops on the run's end-of-turn ids, and `RowStream` turns the
ids into text by `Generator`'s rule (whole UTF-8 characters only).

Continuous batching through llama.cpp's own multi-sequence batches (`llamacpp_batch`): each model's
context holds up to ``max_batch_size`` answers as separate sequences of one KV cache; new requests join
between decode steps and finished or abandoned ones leave at once. Each answer starts from an empty
sequence (no prefix reuse), so it never depends on the request before it.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ChattuneError
from ..export.report import REPORT_JSON as REPORT
from .engine import EngineCaps, Job, LaneStats, QueueFull, ServedModel, as_api_error, unknown_model
from .engine_ids import RunSource, model_names, read_source, refuse_fields
from .llamacpp_batch import Lane, SeqContext
from .serve_schema import APIError

if TYPE_CHECKING:
    from ..config import ServeConfig

log = logging.getLogger("chattune.serve")
PREFERRED = ("f16", "q8_0", "q4_k_m")  # the closest to the run first


def _report(folder: Path) -> dict | None:
    try:
        return json.loads((folder / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _from_export(folder: Path) -> tuple[Path, Path]:
    """(the .gguf, the run dir) of an export folder."""
    rep = _report(folder)
    if rep is None:
        raise ChattuneError(f"{folder} is not a `chattune export` folder (no {REPORT})")
    if rep.get("target") not in ("gguf", "ollama") or rep.get("lora_only"):
        raise ChattuneError(f"{folder} is a `--to {rep.get('target')}{' --lora-only' if rep.get('lora_only') else ''}` "
                            "export; --engine llamacpp serves a merged GGUF (`chattune export RUN --to gguf`)")
    ggufs = sorted(f for f in rep.get("files", {}) if f.endswith(".gguf"))
    if len(ggufs) != 1 or not (folder / ggufs[0]).is_file():
        raise ChattuneError(f"{folder}: expected one .gguf listed in {REPORT}, found {ggufs or 'none'}")
    run = Path(rep["run_dir"])
    if not run.is_dir():  # exported with a relative path from elsewhere: the default layout keeps it beside
        run = folder.parent / run.name
    if not run.is_dir():
        raise ChattuneError(f"{folder}: the run it was exported from ({rep['run_dir']}) is gone; the engine renders "
                            "prompts with the run's tokenizer and template")
    return folder / ggufs[0], run


def find_gguf(path: str | Path) -> tuple[Path, Path]:
    """The GGUF to serve for `path` and the run it came from.

    Args:
        path: a run dir (its default `--to gguf` / `--to ollama` export folder beside it, f16 first), an
            export folder, or a .gguf file inside one.

    Raises:
        ChattuneError: nothing servable; for a run without an export, the export command that makes one.
    """
    from ..export.run import default_out
    from ..rundir.layout import is_run_dir

    p = Path(path)
    if p.suffix == ".gguf" and p.is_file():
        gguf, run = _from_export(p.parent)
        if gguf.resolve() != p.resolve():
            raise ChattuneError(f"{p} is not the GGUF its folder's {REPORT} lists ({gguf.name})")
        return p, run
    if (p / REPORT).is_file():
        return _from_export(p)
    if is_run_dir(p):
        for to in ("gguf", "ollama"):
            for quant in PREFERRED:
                folder = default_out(p, to, quant)
                if _report(folder) is not None:
                    return _from_export(folder)
        # Not exported on the fly: an export converts, quantises and verifies for minutes and writes a
        # folder beside the run; serve should not do that behind the user's back.
        raise ChattuneError(f"{p} has no GGUF export to serve (looked for {default_out(p, 'gguf', 'f16').name} and "
                            f"the other quantisations beside it). Make one with `chattune export {p} --to gguf "
                            "--quant f16` (or q8_0 / q4_k_m for a smaller file), then serve again")
    raise ChattuneError(f"{p}: expected a chattune run dir, a `chattune export --to gguf` folder or a .gguf in one")


class LlamaCppEngine:
    """Serve runs' GGUF exports through llama.cpp with continuous batching (see the module doc).

    Args:
        sources: the served runs by model name (their renderers).
        contexts: each model's llama.cpp context (`SeqContext`), by model name.
        max_queue: jobs that may wait before `submit` raises `QueueFull`.
        max_batch: jobs per model generating at once (more wait in the queue).
        ggufs: the served files by model name (shown by /health).

    Attributes:
        model_lock: held by the worker from taking queued jobs to the end of its turn (tests hold it to keep
            requests queued, so they all join one batch).
    """

    kind = "llamacpp"
    caps = EngineCaps(continuous_batching=True, tools=True, reasoning=True, lora_switching=False)

    def __init__(self, sources: dict[str, RunSource], contexts: dict[str, SeqContext], *, max_queue: int,
                 max_batch: int, ggufs: dict[str, Path] | None = None):
        self.models = {n: ServedModel(n, s.renderer, s.default_temperature, s.default_top_p)
                       for n, s in sources.items()}
        self.lanes = {n: Lane(contexts[n], s.renderer, top_k=int(s.generation.get("top_k", 0)))
                      for n, s in sources.items()}
        self.ggufs = ggufs or {}
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.model_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = {"failed": 0, "rejected": 0}

    @classmethod
    def from_paths(cls, paths: list[str], serve_cfg: ServeConfig, device: str | None = None,
                   dtype: str | None = None) -> LlamaCppEngine:
        """Find each path's GGUF (see `find_gguf`) and load it with llama.cpp.

        Args:
            paths: run dirs, export folders or .gguf files.
            serve_cfg: the server settings (max_queue, max_batch_size).
            device: only "cpu" or None (llama-cpp-python's CPU build).
            dtype: ignored values other than None are refused: the GGUF's quantisation is its precision.

        Raises:
            ChattuneError: no export to serve (says which command makes one), llama-cpp-python missing.
        """
        from ..export.llamacpp import require_binding

        if device not in (None, "cpu"):
            raise ChattuneError(f"--engine llamacpp runs llama.cpp on the CPU; device {device!r} is not supported")
        if dtype is not None:
            raise ChattuneError("--engine llamacpp serves the GGUF at the precision it was exported with "
                                "(`chattune export --quant`); drop --dtype")
        llama_cpp = require_binding()
        names = model_names([str(p) for p in paths])
        sources, contexts, ggufs = {}, {}, {}
        try:
            for name, p in zip(names, paths):
                gguf, run = find_gguf(p)
                src = read_source(run, name)
                refuse_fields(src, "llamacpp", {"top_k"})  # llama.cpp's top_k is transformers' (sampling only)
                # the run's training window per answer (as export's Modelfile sets num_ctx)
                contexts[name] = SeqContext(llama_cpp, gguf, src.max_length, serve_cfg.max_batch_size, threads())
                sources[name], ggufs[name] = src, gguf
        except BaseException:
            for ctx in contexts.values():
                ctx.close()
            raise
        return cls(sources, contexts, max_queue=serve_cfg.max_queue, max_batch=serve_cfg.max_batch_size,
                   ggufs=ggufs)

    # --- lifecycle and queue ------------------------------------------------------------------------
    def main_loop(self) -> None:
        """None: this engine's work does not run in the server's main thread (see `Engine.main_loop`)."""
        return None

    def start(self) -> None:
        """Start the worker thread (a no-op while it runs)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="chattune-llamacpp-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail queued jobs (503), stop the running ones, wait for the thread, free the models."""
        with self._cond:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for job in pending:
            job.deliver(_shutting_down())
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # still in a llama.cpp call: freeing its model under it would crash the process
        for lane in self.lanes.values():
            lane.ctx.close()

    def submit(self, job: Job) -> None:
        """Queue `job`. Raises `QueueFull` when `max_queue` jobs wait, `APIError` (404, 503)."""
        if job.model not in self.models:
            raise unknown_model(job.model, self.models)
        with self._cond:
            if self._stopping:
                raise _shutting_down()
            if len(self._pending) >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull
            self._pending.append(job)
            self._cond.notify()

    def snapshot(self) -> dict:
        """``queued``, ``running`` (rendered into a lane) and the counters: completed, cancelled, skipped (left
        before starting), failed, rejected, steps (batches decoded), largest_batch."""
        with self._cond:
            return {"queued": len(self._pending), "running": sum(len(lane) for lane in self.lanes.values()),
                    **self.stats, **LaneStats.total(lane.stats for lane in self.lanes.values())}

    # --- the worker ---------------------------------------------------------------------------------
    def _take(self) -> list[Job]:
        """Under the condition: queued jobs whose lane has room, oldest first."""
        room = {name: self.max_batch - len(lane) for name, lane in self.lanes.items()}
        taken: list[Job] = []
        keep: deque[Job] = deque()
        for job in self._pending:
            if room[job.model] > 0:
                room[job.model] -= 1
                taken.append(job)
            else:
                keep.append(job)
        self._pending = keep
        return taken

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._pending and not any(self.lanes.values()):
                        self._cond.wait()
                    if self._stopping:
                        return
                with self.model_lock:
                    self._step()
        finally:
            with self._cond:
                for lane in self.lanes.values():
                    lane.fail(_shutting_down())

    def _step(self) -> None:
        """Admit the queued jobs that have room, then one turn per lane with work (a method, so no local
        holds a request afterwards)."""
        with self._cond:
            taken = self._take()
        for job in taken:
            self.lanes[job.model].admit(job)
        for lane in self.lanes.values():
            if len(lane):
                self._turn(lane)

    def _turn(self, lane: Lane) -> None:
        try:
            lane.turn()
        except Exception as e:  # a failed decode fails the jobs of its batch, not the server
            log.exception("llama.cpp generation failed")
            with self._cond:
                self.stats["failed"] += len(lane.fail(as_api_error(e)))


def threads() -> int:
    """CPU threads llama.cpp computes with: OMP_NUM_THREADS when set (as the hf engine's torch reads it), else
    llama-cpp-python's own default, half the logical CPUs (the physical cores of a hyper-threaded CPU).

    Not every core: llama.cpp's threads spin while they wait for each other, so when they outnumber the free
    cores (the HTTP thread needs one; a shared machine has fewer) a step waits for a descheduled thread
    (a 2-core machine under load measured a one-row prompt 60x slower with 2 threads than with 1).
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 2) // 2)


def _shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", code="shutting_down")

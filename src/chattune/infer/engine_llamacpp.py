"""The ``llamacpp`` engine: a run's GGUF export answered by llama.cpp (llama-cpp-python), for laptops.

It serves what `chattune export RUN --to gguf` wrote (and verified token for token against the run): the
path may be the run dir (its default export folder beside it is used, f16 first), an export folder, or a
.gguf file inside one. Prompts are rendered by the run's `PromptRenderer` (never llama.cpp's own template
handling) and fed as token ids; generation stops on the run's end-of-turn ids, temperature 0 is llama.cpp's
greedy sampler, and `RowStream` turns the ids into text by `Generator`'s rule (whole UTF-8 characters only).

One worker thread answers one job at a time (a llama.cpp context holds one sequence here): no continuous
batching. Each job starts from an empty KV cache, so an answer never depends on the request before it.
"""
from __future__ import annotations

import json
import logging
import random
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ChattuneError
from ..export.report import REPORT_JSON as REPORT
from .answer import RowStream
from .engine import EngineCaps, Job, QueueFull, ServedModel, Started, as_api_error, fit_context, unknown_model
from .engine_ids import RunSource, model_names, read_source
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
    """Serve runs' GGUF exports through llama-cpp-python, one job at a time (see the module doc).

    Args:
        sources: the served runs by model name (their renderers).
        llms: the loaded `llama_cpp.Llama` per model name.
        max_queue: jobs that may wait before `submit` raises `QueueFull`.
    """

    kind = "llamacpp"
    caps = EngineCaps(continuous_batching=False, tools=True, reasoning=True, lora_switching=False)

    def __init__(self, sources: dict[str, RunSource], llms: dict[str, Any], *, max_queue: int,
                 ggufs: dict[str, Path] | None = None):
        self.models = {n: ServedModel(n, s.renderer, s.default_temperature, s.default_top_p)
                       for n, s in sources.items()}
        self.llms = llms
        self.ggufs = ggufs or {}
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._running: Job | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = {"completed": 0, "cancelled": 0, "skipped": 0, "failed": 0, "rejected": 0}

    @classmethod
    def from_paths(cls, paths: list[str], serve_cfg: ServeConfig, device: str | None = None,
                   dtype: str | None = None) -> LlamaCppEngine:
        """Find each path's GGUF (see `find_gguf`) and load it with llama.cpp.

        Args:
            paths: run dirs, export folders or .gguf files.
            serve_cfg: the server settings (max_queue).
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
        sources, llms, ggufs = {}, {}, {}
        for name, p in zip(names, paths):
            gguf, run = find_gguf(p)
            src = read_source(run, name)
            # the run's training window (as export's Modelfile sets num_ctx); 0 = the model's own
            llms[name] = llama_cpp.Llama(model_path=str(gguf), n_ctx=src.max_length or 0, verbose=False)
            sources[name], ggufs[name] = src, gguf
        return cls(sources, llms, max_queue=serve_cfg.max_queue, ggufs=ggufs)

    # --- lifecycle and queue ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (a no-op while it runs)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="chattune-llamacpp-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail queued jobs (503), cancel the running one, wait for the thread, free the models."""
        with self._cond:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
            if self._running is not None:
                self._running.cancel.set()
            self._cond.notify_all()
        for job in pending:
            job.deliver(APIError(503, "the server is shutting down", code="shutting_down"))
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # still in a llama.cpp call: freeing its model under it would crash the process
        for llm in self.llms.values():
            llm.close()
        self.llms = {}

    def submit(self, job: Job) -> None:
        """Queue `job`. Raises `QueueFull` when `max_queue` jobs wait, `APIError` (404, 503)."""
        if job.model not in self.models:
            raise unknown_model(job.model, self.models)
        with self._cond:
            if self._stopping:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if len(self._pending) >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull
            self._pending.append(job)
            self._cond.notify()

    def snapshot(self) -> dict:
        """Queue depth and counters (for /health and /metrics)."""
        with self._cond:
            return {"queued": len(self._pending), "running": int(self._running is not None), **self.stats}

    # --- the worker ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._running = self._pending.popleft()
            try:
                if job.cancel.is_set():
                    self._count("skipped")
                else:
                    self._answer(job)
            except Exception as e:  # one failed request fails only its own job
                if not isinstance(e, APIError):
                    log.exception("llama.cpp generation failed")
                self._count("failed")
                job.deliver(as_api_error(e))
            finally:
                with self._cond:
                    self._running = None

    def _answer(self, job: Job) -> None:
        llm = self.llms[job.model]
        renderer = self.models[job.model].renderer
        ids = renderer.prompt_ids(job.messages, job.tools)
        s = fit_context(len(ids), job.sampling, llm.n_ctx())
        row = RowStream(renderer, len(ids), s.max_new_tokens, list(s.stop))
        if job.stream:
            job.deliver(Started(len(ids)))
        # A request without a seed samples differently each time (llama.cpp would reuse its context's seed).
        llm.set_seed(s.seed if s.seed is not None else random.randrange(2**31))
        llm.reset()  # no prefix reuse: the same prompt gives the same answer whatever ran before
        # Only the request's settings shape sampling: llama.cpp's own defaults (top_k 40, min_p 0.05) are off.
        for token in llm.generate(ids, temp=s.temperature, top_p=s.top_p, top_k=0, min_p=0.0, typical_p=1.0,
                                  repeat_penalty=1.0, reset=False):
            delta, ended = row.push(token)
            if delta and job.stream and not job.cancel.is_set():
                job.deliver(delta)
            if ended or job.cancel.is_set() or self._stopping:
                break
        if job.cancel.is_set():
            self._count("cancelled")
            return
        row.answer(job)
        self._count("completed")

    def _count(self, key: str) -> None:
        with self._cond:
            self.stats[key] += 1

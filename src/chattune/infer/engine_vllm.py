"""The ``vllm`` engine: a managed vLLM server answers, chattune renders the prompts and reads the tokens.

Runs that are adapters of one base become LoRA adapters of one vLLM server (each run one model name,
switched per request, batched together by vLLM's continuous batching); a merged or full-weights run is
served as its folder. Each job is rendered here by the run's `PromptRenderer` and sent to vLLM's
``/v1/completions`` as prompt token ids, with the run's end-of-turn ids as the only stop ids, so vLLM
never applies a chat template or a generation_config of its own. vLLM streams back token ids (always,
also for plain requests, so one path serves both and a client that leaves closes its stream, which
aborts the sequence in vLLM); `RowStream` decodes them with the run's tokenizer by `Generator`'s rule.

Jobs run as tasks of the engine's own event loop thread (the HTTP layer's loop never waits on vLLM); one
watcher task closes the stream of any job whose ``cancel`` is set, also while it waits for its first token.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ChattuneError
from .answer import RowStream
from .engine import EngineCaps, Job, QueueFull, ServedModel, Started, as_api_error, fit_context, unknown_model
from .engine_ids import RunSource, model_names, read_source, refuse_fields
from .serve_schema import APIError

if TYPE_CHECKING:
    from ..config import ServeConfig
    from ..export.vllm_launch import ServerSpec, VllmServer

log = logging.getLogger("chattune.serve")
CANCEL_POLL_S = 0.05  # how often the watcher looks at cancel events (a job's stream closes within this)
# generation_config fields vLLM's sampler applies as transformers' `generate` does: the field → vLLM's
# request parameter, and whether it applies to greedy requests too (top_k/min_p warp sampling only).
APPLIED = {"repetition_penalty": ("repetition_penalty", True), "min_new_tokens": ("min_tokens", True),
           "top_k": ("top_k", False), "min_p": ("min_p", False)}


@dataclass(frozen=True)
class VLLMLaunch:
    """What the one vLLM server loads.

    Attributes:
        model: the folder (or hub id) vLLM loads: the shared base of adapter runs, or a merged/full model.
        served_name: the name vLLM serves `model` under.
        loras: adapter name → run dir, LoRA modules of `model` (switched per request).
        max_lora_rank: the ``--max-lora-rank`` holding every adapter's rank (None without adapters).
        max_model_len: context window (prompt + answer) per sequence.
        dtype: the precision vLLM computes in ("float32" on CPU: what chattune's hf engine answers in).
    """

    model: str
    served_name: str
    loras: dict[str, str] = field(default_factory=dict)
    max_lora_rank: int | None = None
    max_model_len: int = 2048
    dtype: str = "float32"


def generation_params(generation: dict, sampling: bool) -> dict:
    """vLLM request parameters for a run's generation_config fields (`APPLIED`; vLLM is started without the
    file, so they travel with each request, as `generate` applies them: top_k and min_p only when sampling)."""
    return {APPLIED[k][0]: v for k, v in generation.items() if APPLIED[k][1] or sampling}


def server_spec(launch: VLLMLaunch, port: int) -> ServerSpec:
    """The `export.vllm_launch.ServerSpec` for `launch` on 127.0.0.1:`port`.

    ``--generation-config vllm``: requests carry every sampling setting (the run's generation_config fields
    included, `generation_params`) and the run's end-of-turn ids themselves, so the base's
    generation_config must not fill in defaults of its own. Several adapters go in `extra` (the spec's own LoRA field holds one).
    """
    from ..export.vllm_launch import ServerSpec

    extra = ["--seed", "0", "--disable-uvicorn-access-log"]
    if launch.loras:
        extra += ["--enable-lora", "--max-loras", str(len(launch.loras)), "--max-lora-rank",
                  str(launch.max_lora_rank or 16), "--lora-modules",
                  *(f"{name}={path}" for name, path in launch.loras.items())]
    return ServerSpec(model=launch.model, name=launch.served_name, max_model_len=launch.max_model_len,
                      generation_config="vllm", dtype=launch.dtype, port=port, extra=tuple(extra))


def plan_launch(sources: dict[str, RunSource], *, dtype: str) -> VLLMLaunch:
    """One vLLM server for all `sources`: the base they share, each adapter run a LoRA module.

    Raises:
        ChattuneError: the runs do not share one base, or an adapter vLLM would reject (added token rows,
            modules_to_save; the same check and message as `chattune export --to vllm --lora-only`).
    """
    from ..export.stage import read_facts
    from ..export.vllm import check_lora_servable, max_lora_rank

    def key(model: str) -> str:  # a local folder compares by its real path, a hub id as written
        return str(Path(model).resolve()) if Path(model).exists() else model

    bases = {name: s.base for name, s in sources.items()}
    full = [name for name, s in sources.items() if not s.is_adapter]
    if len(full) > 1 or len({key(b) for b in bases.values()}) > 1:
        listing = "; ".join(f"{n}: {'adapter on ' if sources[n].is_adapter else 'weights of '}{b}"
                            for n, b in bases.items())
        raise ChattuneError("one vLLM server serves one model's weights (adapters of it switch per request); these "
                            f"runs need different weights ({listing}). Serve them with one `chattune serve` each, or "
                            "merge adapters and serve each merged folder on its own")
    loras, ranks = {}, []
    for name, s in sources.items():
        if s.is_adapter:
            facts, tok, _ = read_facts(s.path)
            try:
                ranks.append(check_lora_servable(facts, tok))
            except ChattuneError as e:
                raise ChattuneError(f"{s.path}: {e}; to serve it with vLLM, serve its merged weights "
                                    f"(`chattune merge {s.path} --out OUT`, then `chattune serve OUT --engine vllm`)") from None
            loras[name] = str(s.path.resolve())
    # the run's training max_length is the window export's serve.sh reserves too; the model's own limit caps it
    context = max((s.max_length for s in sources.values() if s.max_length), default=None)
    limit = model_context(next(iter(bases.values())))
    max_len = min(x for x in (context, limit) if x) if (context or limit) else 2048
    served = full[0] if full else "chattune-base"
    return VLLMLaunch(model=next(iter(bases.values())), served_name=served, loras=loras,
                      max_lora_rank=max_lora_rank(max(ranks)) if ranks else None, max_model_len=max_len, dtype=dtype)


def model_context(model: str) -> int | None:
    """The model's ``max_position_embeddings`` from its config.json (None when unknown)."""
    cfg = Path(model) / "config.json"
    if not cfg.is_file():
        return None
    n = json.loads(cfg.read_text(encoding="utf-8")).get("max_position_embeddings")
    return int(n) if isinstance(n, int) and n > 0 else None


class VLLMEngine:
    """Serve runs through a managed vLLM server (see the module doc).

    Args:
        sources: the served runs by model name.
        launch: the server's layout (from `plan_launch`).
        max_queue: jobs that may wait for their first token before `submit` raises `QueueFull`.
        startup_timeout: seconds `start` waits for vLLM to become healthy.
    """

    kind = "vllm"
    caps = EngineCaps(continuous_batching=True, tools=True, reasoning=True, lora_switching=True)

    def __init__(self, sources: dict[str, RunSource], launch: VLLMLaunch, *, max_queue: int,
                 startup_timeout: float = 900.0):
        self.sources = sources
        self.models = {n: ServedModel(n, s.renderer, s.default_temperature, s.default_top_p)
                       for n, s in sources.items()}
        self.launch = launch
        self.max_queue = max_queue
        self.startup_timeout = startup_timeout
        self.server: VllmServer | None = None
        self._target = {n: (n if n in launch.loras else launch.served_name) for n in sources}
        self._lock = threading.Lock()
        self._waiting: set[Job] = set()   # sent, no first token yet
        self._running: set[Job] = set()   # streaming tokens
        self._tasks: dict[Job, asyncio.Future] = {}
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0, "rejected": 0}

    @classmethod
    def from_paths(cls, paths: list[str], serve_cfg: ServeConfig, device: str | None = None,
                   dtype: str | None = None) -> VLLMEngine:
        """Read the runs (no weights are loaded here) and plan their server.

        Args:
            paths: run dirs (adapters of one base, or one merged/full run with adapters of it).
            serve_cfg: the server settings (max_queue).
            device: only "cpu" (or None): this engine runs vLLM's CPU build.
            dtype: the precision vLLM computes in (default float32, as the hf engine on CPU).

        Raises:
            ChattuneError: another device, runs on different bases, an adapter vLLM rejects.
        """
        if device not in (None, "cpu"):
            raise ChattuneError(f"--engine vllm runs vLLM's CPU build; device {device!r} is not supported "
                                "(use --engine hf for GPUs)")
        names = model_names([str(p) for p in paths])
        sources = {n: read_source(p, n) for n, p in zip(names, paths)}
        for source in sources.values():
            refuse_fields(source, "vllm", set(APPLIED))
        launch = plan_launch(sources, dtype=str(dtype or "float32").replace("torch.", ""))
        return cls(sources, launch, max_queue=serve_cfg.max_queue)

    # --- lifecycle ----------------------------------------------------------------------------------
    def main_loop(self) -> None:
        """None: this engine's work does not run in the server's main thread (see `Engine.main_loop`)."""
        return None

    def start(self) -> None:
        """Launch vLLM (blocks until it is healthy) and the engine's event loop thread; a no-op when running
        (a caller may start the slow vLLM launch before the app's lifespan calls `start` again)."""
        import httpx

        from ..export.vllm_launch import VllmServer, free_port, server_command

        if self.alive() and self._thread is not None and self._thread.is_alive():
            return
        port = free_port()
        # raises with how to install vLLM when its venv is missing, before anything starts
        argv = server_command(server_spec(self.launch, port))
        self.server = VllmServer(argv, port=port, ready_timeout=self.startup_timeout)
        self.server.start()
        atexit.register(self.server.close)  # a chattune that dies without stop() leaves no vLLM behind
        self._stopping = False
        ready = threading.Event()
        server = self.server

        def run_loop() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            # no connection cap: vLLM's scheduler, not the client pool, decides what runs together
            self._client = httpx.AsyncClient(base_url=server.base_url, timeout=httpx.Timeout(30.0, read=None),
                                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
            watcher = loop.create_task(self._watch_cancels())
            ready.set()
            loop.run_forever()
            watcher.cancel()
            loop.run_until_complete(self._client.aclose())
            loop.close()

        self._thread = threading.Thread(target=run_loop, name="chattune-vllm-client", daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail jobs still waiting (503), cancel streaming ones, end the loop thread and the vLLM server."""
        with self._lock:
            self._stopping = True
            waiting, running = list(self._waiting), list(self._running)
        for job in waiting:
            job.deliver(APIError(503, "the server is shutting down", code="shutting_down"))
        for job in waiting + running:
            job.cancel.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for task in list(self._tasks.values()):
                loop.call_soon_threadsafe(task.cancel)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        if self.server is not None:
            self.server.close()
            atexit.unregister(self.server.close)

    def submit(self, job: Job) -> None:
        """Send `job` to vLLM. Raises `QueueFull` (max_queue jobs wait for a first token) or `APIError`."""
        if job.model not in self.models:
            raise unknown_model(job.model, self.models)
        with self._lock:
            if self._stopping or self._loop is None or not self.alive():
                raise APIError(503, "the server is shutting down" if self._stopping else
                               "the vLLM server is not running", code="shutting_down")
            if len(self._waiting) >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull
            self._waiting.add(job)
        self._tasks[job] = asyncio.run_coroutine_threadsafe(self._answer(job), self._loop)  # type: ignore[assignment]

    def snapshot(self) -> dict:
        """Queue depth and counters (for /health and /metrics)."""
        with self._lock:
            return {"queued": len(self._waiting), "running": len(self._running), **self.stats,
                    "vllm_alive": self.alive()}

    def alive(self) -> bool:
        """Whether the vLLM server process runs."""
        return self.server is not None and self.server.proc is not None and self.server.proc.poll() is None

    # --- one job ------------------------------------------------------------------------------------
    async def _watch_cancels(self) -> None:
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            for job, fut in list(self._tasks.items()):
                if job.cancel.is_set() and not fut.done():
                    fut.cancel()

    def _body(self, job: Job, ids: list[int], max_new: int) -> dict:
        s = job.sampling
        return {"model": self._target[job.model], "prompt": ids, "max_tokens": max_new,
                "temperature": s.temperature, "top_p": s.top_p if s.temperature > 0 else 1.0, "seed": s.seed,
                "stop": list(s.stop) or None, "include_stop_str_in_output": False,
                # only the run's end-of-turn ids end an answer (not the base tokenizer's EOS): as Generator
                "stop_token_ids": list(self.models[job.model].renderer.eos_token_ids), "ignore_eos": True,
                "skip_special_tokens": True, "return_token_ids": True, "stream": True,
                **generation_params(self.sources[job.model].generation, s.temperature > 0)}

    async def _answer(self, job: Job) -> None:
        renderer = self.models[job.model].renderer
        try:
            try:
                ids = renderer.prompt_ids(job.messages, job.tools)
                sampling = fit_context(len(ids), job.sampling, self.launch.max_model_len)
                row = RowStream(renderer, len(ids), sampling.max_new_tokens, list(sampling.stop))
                await self._stream(job, self._body(job, ids, sampling.max_new_tokens), row)
            except asyncio.CancelledError:
                pass  # the client left (or the server stops): answered no further
            if job.cancel.is_set():
                self._count("cancelled")
                return
            row.answer(job)
            self._count("completed")
        except Exception as e:  # one failed request fails only its own job
            if not isinstance(e, APIError) or e.status >= 500:
                log.exception("vLLM request failed")
            self._count("failed")
            job.deliver(as_api_error(e))
        finally:
            with self._lock:
                self._waiting.discard(job)
                self._running.discard(job)
            self._tasks.pop(job, None)

    async def _stream(self, job: Job, body: dict, row: RowStream) -> None:
        async with self._client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                raise self._error(resp.status_code, (await resp.aread()).decode("utf-8", "replace"))
            with self._lock:
                self._waiting.discard(job)
                self._running.add(job)
            if job.stream:
                job.deliver(Started(len(body["prompt"])))
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                if "error" in chunk:
                    raise self._error(500, json.dumps(chunk))
                ended = False
                for t in (t for choice in chunk.get("choices", []) for t in choice.get("token_ids") or []):
                    if job.cancel.is_set():
                        break  # the rest of a chunk (vLLM merges steps a slow reader has not taken) is moot
                    delta, ended = row.push(t)
                    if delta and job.stream:
                        job.deliver(delta)
                    if ended:
                        break  # vLLM may send a step more than the answer has (e.g. past a stop string)
                if ended or job.cancel.is_set():
                    break  # leaving the block closes the stream: vLLM aborts the sequence

    def _error(self, status: int, raw: str) -> APIError:
        """vLLM's error answer as the client's error (a 4xx stays a 4xx: e.g. a prompt over the context)."""
        try:
            err = json.loads(raw).get("error", {})
            message = err.get("message") if isinstance(err, dict) else str(err)
        except (ValueError, AttributeError):
            message = raw[:500]
        code = status if 400 <= status < 500 else 502
        return APIError(code, f"vLLM: {message or raw[:500]}", code="upstream_error" if code == 502 else None)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

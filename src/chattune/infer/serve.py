"""OpenAI-compatible HTTP API over any `Engine`: ``chattune serve RUN [RUN ...] --engine hf|vllm|llamacpp``.

Endpoints: ``POST /v1/chat/completions`` (JSON, or server-sent events with ``stream: true``),
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (no key; engine, capabilities, queue depth
and counters). The wire format and the request policy (what is honoured, rejected, ignored) live in
`serve_schema`; the API key and body cap in `serve_guard`; running the model in the engine (`engine.py`
says what every engine promises).

A handler validates the body, builds a `Job`, `submit`s it and awaits what the engine hands back, so
generation never blocks the event loop. A full queue answers 429; a client that leaves cancels its job.

Decisions: max_tokens above `ServeConfig.max_tokens_cap` is a 400 (clamping would silently return
less than asked); an omitted max_tokens means "up to the cap", trimmed to the context window by the
engine. Omitted temperature/top_p take the served model's defaults (its generation_config when it
samples, else OpenAI's 1.0). The request's `model` picks a served model by name; a server with one
model answers any name with it (clients often send a placeholder), a server with several answers an
unknown name with 404.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from typing_extensions import Self

from .engine import Job, QueueFull, Sampling, ServedModel, unknown_model
from .serve_bind import bind_socket, check_bind
from .serve_guard import Guard
from .serve_metrics import ServeMetrics, Tracker, uvicorn_log_config
from .serve_schema import (
    APIError,
    ChatCompletionRequest,
    check_unsupported,
    chunk_body,
    completion_body,
    error_body,
    new_id,
    sse,
    stop_list,
    to_messages,
    usage,
    validation_error,
)
from .serve_tools import AnswerStream, answer, tool_use

if TYPE_CHECKING:
    from ..config import ServeConfig
    from .engine import Engine
    from .generate import Completion

log = logging.getLogger("chattune.serve")
_POLL_S = 0.25  # how often a waiting non-streaming handler checks whether its client left


def _json_response(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


async def _wait(out: asyncio.Queue, request, cancel: threading.Event):
    """The next item from the engine; sets `cancel` and returns None if the client disconnects first."""
    getter = asyncio.ensure_future(out.get())
    try:
        while True:
            done, _ = await asyncio.wait({getter}, timeout=_POLL_S)
            if done:
                return getter.result()
            if await request.is_disconnected():
                cancel.set()
                return None
    finally:
        if not getter.done():
            getter.cancel()


def pick_model(engine: Engine, name: str | None) -> ServedModel:
    """The served model a request names (see the module doc for the one-model rule).

    Raises:
        APIError: 404 for a name this server does not serve (several models), 400 for no name (several models).
    """
    if name is not None and name in engine.models:
        return engine.models[name]
    if len(engine.models) == 1:
        return next(iter(engine.models.values()))
    if name is None:
        raise APIError(400, f"'model' is required: this server serves {', '.join(map(repr, engine.models))}",
                       param="model", code="missing_model")
    raise unknown_model(name, engine.models)


def request_sampling(body: ChatCompletionRequest, served: ServedModel, cap: int) -> Sampling:
    """The request's generation parameters, defaults filled in.

    Raises:
        APIError: 400 for max_tokens above `cap` or too many stop strings.
    """
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if asked is not None and asked > cap:
        raise APIError(400, f"max_tokens is too large: {asked}; this server allows at most {cap} "
                       "(ServeConfig.max_tokens_cap)", param="max_tokens", code="max_tokens_too_large")
    temperature = served.default_temperature if body.temperature is None else body.temperature
    top_p = served.default_top_p if body.top_p is None else body.top_p
    if top_p == 0:  # nucleus of mass 0 = only the most likely token
        temperature, top_p = 0.0, 1.0
    return Sampling(max_new_tokens=asked or cap, temperature=float(temperature), top_p=float(top_p),
                    seed=body.seed, stop=stop_list(body.stop), explicit_max=asked is not None)


def create_app(engine: Engine, serve_cfg: ServeConfig) -> FastAPI:
    """Build the FastAPI app that serves `engine`'s models.

    Args:
        engine: any `Engine` (the app owns it from now on: it starts and stops with the app's lifespan).
        serve_cfg: api_key, max_tokens_cap and max_body_bytes are used here (the engine took its own
            limits, e.g. max_queue; host/port are for `run_server`).

    Returns:
        The app; ``app.state.engine`` is the engine.
    """
    cap = serve_cfg.max_tokens_cap

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="chattune", version="1", lifespan=lifespan,
                  description=f"OpenAI-compatible chat completions for {', '.join(engine.models)}")
    app.state.engine = engine
    app.add_middleware(Guard, api_key=serve_cfg.api_key, max_body_bytes=serve_cfg.max_body_bytes)
    # /metrics is open like /health (and vLLM's): scrapers carry no API key, and it shows counts and model
    # names only, never prompts or answers. Installed last: outermost, it also counts the guard's 401/413.
    app.state.metrics = metrics = ServeMetrics(engine.snapshot)
    metrics.install(app)

    @app.exception_handler(APIError)
    async def _api_error(_req, e: APIError):
        return _json_response(e.status, e.body())

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, e: RequestValidationError):
        err = validation_error(list(e.errors()))
        return _json_response(err.status, err.body())

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, e: StarletteHTTPException):
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return _json_response(e.status_code, error_body(str(e.detail), type=kind, code=code))

    @app.exception_handler(Exception)
    async def _crash(_req, e: Exception):
        log.exception("unhandled error")
        return _json_response(500, error_body(f"internal error: {type(e).__name__}", type="server_error"))

    def model_card(m: ServedModel) -> dict:
        return {"id": m.name, "object": "model", "created": m.created, "owned_by": "chattune"}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": next(iter(engine.models)), "models": list(engine.models),
                "engine": engine.kind, "caps": asdict(engine.caps), **engine.snapshot()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card(m) for m in engine.models.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        if model_id not in engine.models:
            raise unknown_model(model_id, engine.models)
        return model_card(engine.models[model_id])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_unsupported(body)
        served = pick_model(engine, body.model)
        use = tool_use(body, served.renderer)
        if use.tools and not engine.caps.tools:
            raise APIError(400, f"the {engine.kind} engine does not pass tools to the model; serve with an engine "
                           "that does (see /health caps) or leave tools out", param="tools", code="tools_unsupported")
        messages = served.renderer.with_system(to_messages(body))  # the run's system prompt, as trained
        job = Job(served.name, use.messages(messages), request_sampling(body, served, cap), bool(body.stream),
                  asyncio.get_running_loop(), asyncio.Queue(), tools=use.tools)
        track = metrics.track(request, served.name, job.stream, job.submitted)
        try:
            engine.submit(job)
        except QueueFull:
            raise APIError(429, f"the server is busy: {engine.max_queue} requests are already waiting; "
                           "retry shortly", type="rate_limit_error", code="queue_full") from None
        cid = new_id()
        if not job.stream:
            item = await _wait(job.out, request, job.cancel)
            if item is None:  # the client left; nobody reads this
                return _json_response(499, error_body("client closed the request", code="client_closed"))
            if isinstance(item, APIError):
                raise item
            c: Completion = item
            a = answer(c, use, served.renderer)
            track.done(c.prompt_tokens, c.completion_tokens, a.finish_reason, started=c.started,
                       first_token=c.first_token)
            return completion_body(cid, served.name, a.content if a.tool_calls else a.content or "", a.finish_reason,
                                   c.prompt_tokens, c.completion_tokens, reasoning=a.reasoning, tool_calls=a.tool_calls)
        # Streaming: wait until the engine accepted the prompt, so errors still get a proper status.
        first = await _wait(job.out, request, job.cancel)
        if first is None:
            return _json_response(499, error_body("client closed the request", code="client_closed"))
        if isinstance(first, APIError):
            raise first
        track.accepted(first.prompt_tokens)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_events(job, cid, served.name, include_usage, AnswerStream(use, served.renderer),
                                         track),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    return app


async def _events(job: Job, cid: str, model_name: str, include_usage: bool,
                  split: AnswerStream, track: Tracker) -> AsyncIterator[str]:
    """The SSE body of a streaming answer (OpenAI chunk shapes; see serve_schema.chunk_body); think-block
    text goes out as ``reasoning_content`` deltas, the answer as ``content``, tool calls as ``tool_calls``
    deltas (`serve_tools.AnswerStream`)."""
    created = int(time.time())

    def chunk(delta, finish=None):
        return sse(chunk_body(cid, created, model_name, delta, finish, with_usage_field=include_usage))

    ended = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            item = await job.out.get()
            if isinstance(item, str):
                track.delta()
                for delta in split.feed(item):
                    yield chunk(delta)
            elif isinstance(item, APIError):
                ended = True
                track.failed(item)
                # Headers are gone: report in-band, as OpenAI does; the client raises on "error".
                yield sse(item.body())
                return
            else:  # the final Completion
                ended = True
                deltas, finish_reason = split.finish(item)
                track.done(item.prompt_tokens, item.completion_tokens, finish_reason)
                for delta in deltas:
                    yield chunk(delta)
                yield chunk({}, finish_reason)
                if include_usage:
                    yield sse(chunk_body(cid, created, model_name, None, with_usage_field=True,
                                         usage_value=usage(item.prompt_tokens, item.completion_tokens)))
                yield sse("[DONE]")
                return
    finally:
        if not ended:  # the client went away (Starlette cancelled this generator): stop its generation
            job.cancel.set()


# --- running ---------------------------------------------------------------------------------------

class BackgroundServer:
    """uvicorn running `app` in a daemon thread on an already-bound socket (tests, benchmarks, demos).

    Use as a context manager; `url` is ``http://host:port``.
    """

    def __init__(self, app, sock: socket.socket, log_level: str = "warning"):
        import uvicorn

        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="chattune-serve", daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def run_server(paths: str | list[str], serve_cfg: ServeConfig, *, engine: str = "hf", device: str | None = None,
               dtype: str | None = None, log_level: str = "info") -> None:
    """Load `paths` into an engine and serve them until interrupted.

    Args:
        paths: one or several run dirs (or model folders / aliases); each is one served model, named
            after its folder.
        serve_cfg: host, port, api_key and the limits (see `create_app` and the engine).
        engine: "hf", "vllm" or "llamacpp" (`engines.build_engine`).
        device, dtype: where and how the engine loads the weights.
        log_level: uvicorn's log level.

    Raises:
        ConfigError: non-loopback host without an API key (checked before the model loads), the port
            cannot be bound, or the engine cannot serve these paths.
    """
    import uvicorn

    from .engines import build_engine

    serve_cfg = check_bind(serve_cfg)
    sock = bind_socket(serve_cfg.host, serve_cfg.port)  # fail fast on a busy port, before the slow load
    try:
        eng = build_engine(engine, [paths] if isinstance(paths, str) else list(paths), serve_cfg,
                           device=device, dtype=dtype)
        app = create_app(eng, serve_cfg)
        host, port = sock.getsockname()[:2]
        log.warning("serving %s with the %s engine on http://%s:%s (OpenAI base_url http://%s:%s/v1)%s",
                    ", ".join(eng.models), eng.kind, host, port, host, port,
                    "" if serve_cfg.api_key else " without an API key")
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5,
                                               access_log=False, log_config=uvicorn_log_config(log_level)))
        loop = eng.main_loop()
        if loop is None:
            server.run(sockets=[sock])
        else:
            _serve_beside(server, sock, loop, eng.stop)
    finally:
        sock.close()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _serve_beside(server, sock, loop: Callable[[], None], stop: Callable[[], None]) -> None:
    """uvicorn in a thread while the engine's `loop` runs in this, the main, thread (`Engine.main_loop`).

    SIGINT and SIGTERM end both, gracefully, as they end uvicorn alone: the loop stops, the server shuts
    down (its lifespan stops the engine, failing what is left with 503), and this returns. A server that
    ends by itself (or fails to start) stops the engine, so the loop returns too.
    """
    def http() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            stop()

    thread = threading.Thread(target=http, name="chattune-http", daemon=True)
    # Set, not inherited: a server started in the background may inherit SIGINT ignored.
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    thread.start()
    try:
        loop()
    except KeyboardInterrupt:
        log.warning("stopping")
    finally:
        server.should_exit = True
        thread.join(30)
        for s, handler in previous.items():
            signal.signal(s, handler)

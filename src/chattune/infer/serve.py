"""OpenAI-compatible HTTP API over `Generator`: ``chattune serve RUN_DIR``.

Endpoints: ``POST /v1/chat/completions`` (JSON, or server-sent events with ``stream: true``),
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health`` (no key; queue depth and counters).
The wire format and the request policy (what is honoured, rejected, ignored) live in `serve_schema`;
the model thread (bounded queue, batching, cancellation) in `serve_worker`.

A handler validates the body, queues a job and awaits what the worker hands back, so generation
never blocks the event loop. A full queue answers 429; a client that leaves cancels its job.

Decisions: max_tokens above `ServeConfig.max_tokens_cap` is a 400 (clamping would silently return
less than asked); an omitted max_tokens means "up to the cap", trimmed to the context window.
Omitted temperature/top_p take the model's generation_config when it samples, else OpenAI's 1.0.
The request's `model` may be any string (one model is served; answers name it).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from typing_extensions import Self

from .serve_bind import bind_socket, check_bind
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
from .reasoning import ReasoningStream
from .serve_worker import Job, QueueFull, Sampling, Worker

if TYPE_CHECKING:
    from ..config import ServeConfig
    from .generate import Completion, Generator

log = logging.getLogger("chattune.serve")
_DELTA_FIELD = {"reasoning": "reasoning_content", "content": "content"}
_POLL_S = 0.25  # how often a waiting non-streaming handler checks whether its client left


def _json_response(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


class _Guard:
    """ASGI middleware in front of everything: API key on /v1/*, then the request body size cap.

    Raw ASGI rather than a FastAPI dependency: dependencies run after the body is read and parsed, so
    an unauthenticated client could still make us buffer and parse a large body.
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"].startswith("/v1"):
            auth = headers.get(b"authorization", b"").decode("latin-1").strip()
            scheme, _, token = auth.partition(" ")
            if not auth:
                return await _send(send, 401, error_body(
                    "You didn't provide an API key: send it as 'Authorization: Bearer KEY'",
                    code="invalid_api_key"), {"www-authenticate": "Bearer"})
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return await _send(send, 401, error_body("Incorrect API key provided", code="invalid_api_key"),
                                   {"www-authenticate": "Bearer"})
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = APIError(413, f"request body is larger than the server's limit of {self.max_body} bytes",
                           code="request_too_large")
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_body:
                    return await _send(send, 413, too_big.body())
            except ValueError:
                return await _send(send, 400, error_body("invalid Content-Length header"))
        # Read the body here (chunked uploads carry no length) so the cap holds however it is sent.
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await _send(send, 413, too_big.body())
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: disconnect detection

        return await self.app(scope, replay, send)


async def _send(send, status: int, body: dict, headers: dict | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _default_sampling(generator: Generator) -> tuple[float, float]:
    gc = getattr(generator.model, "generation_config", None)
    if gc is not None and getattr(gc, "do_sample", False):
        return float(gc.temperature if gc.temperature is not None else 1.0), float(gc.top_p or 1.0)
    return 1.0, 1.0  # OpenAI's defaults


async def _wait(out: asyncio.Queue, request, cancel: threading.Event):
    """The next item from the worker; sets `cancel` and returns None if the client disconnects first."""
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


def create_app(generator: Generator, serve_cfg: ServeConfig) -> FastAPI:
    """Build the FastAPI app that serves `generator`.

    Args:
        generator: a loaded `Generator` (the app owns it from now on; see `Worker.model_lock`).
        serve_cfg: api_key, max_tokens_cap, max_queue, max_body_bytes, max_batch_size are used here
            (host/port are for `run_server`).

    Returns:
        The app; its worker thread starts and stops with the app's lifespan. ``app.state.worker`` is
        the `Worker` (queue counters, model lock).
    """
    worker = Worker(generator, serve_cfg.max_queue, serve_cfg.max_batch_size)
    model_name = generator.name
    created = int(time.time())
    default_temp, default_top_p = _default_sampling(generator)
    cap = serve_cfg.max_tokens_cap

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = FastAPI(title="chattune", version="1", lifespan=lifespan,
                  description=f"OpenAI-compatible chat completions for {model_name}")
    app.state.worker = worker
    app.add_middleware(_Guard, api_key=serve_cfg.api_key, max_body_bytes=serve_cfg.max_body_bytes)

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

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "chattune"}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, **worker.snapshot()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        if model_id != model_name:
            raise APIError(404, f"The model '{model_id}' does not exist; this server serves '{model_name}'",
                           param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_unsupported(body)
        messages = generator.with_system(to_messages(body))  # the run's system prompt, as trained
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if asked is not None and asked > cap:
            raise APIError(400, f"max_tokens is too large: {asked}; this server allows at most {cap} "
                           "(ServeConfig.max_tokens_cap)", param="max_tokens", code="max_tokens_too_large")
        temperature = default_temp if body.temperature is None else body.temperature
        top_p = default_top_p if body.top_p is None else body.top_p
        if top_p == 0:  # nucleus of mass 0 = only the most likely token
            temperature, top_p = 0.0, 1.0
        sampling = Sampling(max_new_tokens=asked or cap, temperature=float(temperature), top_p=float(top_p),
                            seed=body.seed, stop=stop_list(body.stop), explicit_max=asked is not None)
        job = Job(model_name, messages, sampling, bool(body.stream), asyncio.get_running_loop(), asyncio.Queue())
        try:
            worker.submit(job)
        except QueueFull:
            raise APIError(429, f"the server is busy: {worker.max_queue} requests are already waiting; "
                           "retry shortly", type="rate_limit_error", code="queue_full") from None
        cid = new_id()
        if not job.stream:
            item = await _wait(job.out, request, job.cancel)
            if item is None:  # the client left; nobody reads this
                return _json_response(499, error_body("client closed the request", code="client_closed"))
            if isinstance(item, APIError):
                raise item
            c: Completion = item
            return completion_body(cid, model_name, c.content, c.finish_reason, c.prompt_tokens, c.completion_tokens,
                                   reasoning=c.reasoning)
        # Streaming: wait until the worker accepted the prompt, so errors still get a proper status.
        first = await _wait(job.out, request, job.cancel)
        if first is None:
            return _json_response(499, error_body("client closed the request", code="client_closed"))
        if isinstance(first, APIError):
            raise first
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_events(job, cid, model_name, include_usage, generator.reasoning_stream()),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    return app


async def _events(job: Job, cid: str, model_name: str, include_usage: bool,
                  split: ReasoningStream) -> AsyncIterator[str]:
    """The SSE body of a streaming answer (OpenAI chunk shapes; see serve_schema.chunk_body); think-block
    text goes out as ``reasoning_content`` deltas, the answer as ``content``."""
    created = int(time.time())

    def chunk(delta, finish=None):
        return sse(chunk_body(cid, created, model_name, delta, finish, with_usage_field=include_usage))

    ended = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            item = await job.out.get()
            if isinstance(item, str):
                for kind, piece in split.feed(item):
                    yield chunk({_DELTA_FIELD[kind]: piece})
            elif isinstance(item, APIError):
                ended = True
                # Headers are gone: report in-band, as OpenAI does; the client raises on "error".
                yield sse(item.body())
                return
            else:  # the final Completion
                ended = True
                for kind, piece in split.finish(item.text):
                    yield chunk({_DELTA_FIELD[kind]: piece})
                yield chunk({}, item.finish_reason)
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


def run_server(path: str, serve_cfg: ServeConfig, *, device: str | None = None, dtype: str | None = None,
               log_level: str = "info") -> None:
    """Load `path` (run dir, merged dir, model folder or alias) and serve it until interrupted.

    Args:
        path: what `Generator.from_path` loads.
        serve_cfg: host, port, api_key and the limits (see `create_app`).
        device, dtype: passed to `Generator.from_path`.
        log_level: uvicorn's log level.

    Raises:
        ConfigError: non-loopback host without an API key (checked before the model loads), or the
            port cannot be bound.
    """
    import uvicorn

    from .generate import Generator

    serve_cfg = check_bind(serve_cfg)
    sock = bind_socket(serve_cfg.host, serve_cfg.port)  # fail fast on a busy port, before the slow load
    try:
        generator = Generator.from_path(path, device=device, dtype=dtype)
        app = create_app(generator, serve_cfg)
        host, port = sock.getsockname()[:2]
        log.warning("serving %s on http://%s:%s (OpenAI base_url http://%s:%s/v1)%s", generator.name, host, port,
                    host, port, "" if serve_cfg.api_key else " without an API key")
        uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)).run(sockets=[sock])
    finally:
        sock.close()

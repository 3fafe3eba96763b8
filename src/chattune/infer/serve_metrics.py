"""What `chattune serve` tells operators: ``GET /metrics`` (Prometheus text format) and one access-log line
per request on the ``chattune.access`` logger, as vLLM and TGI users expect.

Two sources feed them:

* `MetricsMiddleware` (pure ASGI, outermost) sees every response, including the 401/413 answered before
  routing: it counts it by method, path template and status, times it, counts error answers by status,
  type and code (read from the OpenAI error body), and writes the access line when the response ends
  (after a stream's last event).
* The chat handler, through a `Tracker` (``ServeMetrics.track``), reports what only it knows: the served
  model, prompt and completion tokens, when the first token came (a stream: its first text delta reached
  the handler; a plain request: the engine's own record of its first token, `Completion.first_token`, as
  the client hears nothing before the whole answer), and errors reported in-band after a stream's
  headers went out.

Queue depth and running jobs are read from the engine's ``snapshot()`` at scrape time, so the gauges
cannot drift from the engine's own counters.

Each app owns its `CollectorRegistry` (never prometheus_client's global one: tests build many apps in one
process and a second app would find its metric names already taken).
"""
from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

    from .serve_schema import APIError

access_log = logging.getLogger("chattune.access")

_SCOPE_KEY = "chattune.request"  # ASGI scope extension key: the `RequestRecord` the middleware put there
_ERROR_BODY_LIMIT = 65536        # error bodies are small JSON; a larger one is not read for its code
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "(unmatched)"       # path label for paths no route serves: scanners must not create series

# Bucket bounds span a tiny CPU model to a long answer on a loaded server.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0)
_TPS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)


@dataclass
class RequestRecord:
    """What the handler learned about one request, for its access line (None: not known / not a chat)."""

    model: str | None = None
    stream: bool | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_code: str | None = None  # an in-band stream error's code (the HTTP status was already 200)


class _QueueCollector(Collector):
    """Queue gauges read from the engine at scrape time."""

    def __init__(self, snapshot: Callable[[], dict]):
        self.snapshot = snapshot

    def _families(self, snap: dict | None) -> list[GaugeMetricFamily]:
        out = []
        for name, key, doc in (("chattune_num_requests_waiting", "queued", "Requests queued, not yet generating"),
                               ("chattune_num_requests_running", "running", "Requests generating now")):
            fam = GaugeMetricFamily(name, doc)
            if snap is not None:
                fam.add_metric([], float(snap[key]))
            out.append(fam)
        return out

    def describe(self) -> list[GaugeMetricFamily]:  # names only: registering must not query the engine
        return self._families(None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._families(self.snapshot())


class ServeMetrics:
    """The metrics of one app: its registry, the handler-facing `track`, the middleware's `response`.

    Args:
        snapshot: the engine's ``snapshot`` (a dict with at least ``queued`` and ``running``), called at
            each scrape.
    """

    def __init__(self, snapshot: Callable[[], dict]):
        self.registry = r = CollectorRegistry()
        self.http_requests = Counter("chattune_http_requests", "HTTP responses by method, path template and status",
                                     ["method", "path", "status"], registry=r)
        self.http_latency = Histogram("chattune_http_request_duration_seconds",
                                      "Time from request to the end of its response (a stream's last event)",
                                      ["method", "path"], buckets=_LATENCY_BUCKETS, registry=r)
        self.errors = Counter("chattune_errors", "Error answers by status, OpenAI error type and code, including "
                              "errors sent in-band after a stream's headers", ["status", "type", "code"], registry=r)
        self.ttft = Histogram("chattune_time_to_first_token_seconds",
                              "From submission to the engine until the first token (streams: its text reached the "
                              "server; plain requests: the engine produced it)",
                              ["model", "stream"], buckets=_TTFT_BUCKETS, registry=r)
        self.tokens_per_s = Histogram("chattune_generation_tokens_per_second",
                                      "Completed requests: completion tokens / generation time (the engine taking the "
                                      "prompt up to the last token)", ["model", "stream"], buckets=_TPS_BUCKETS,
                                      registry=r)
        self.e2e = Histogram("chattune_e2e_request_latency_seconds",
                             "Completed chat requests: from submission to the engine until the answer was complete",
                             ["model", "stream"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("chattune_prompt_tokens", "Prompt tokens of completed chat requests", ["model"],
                                     registry=r)
        self.completion_tokens = Counter("chattune_generation_tokens", "Completion tokens of completed chat requests",
                                         ["model"], registry=r)
        self.success = Counter("chattune_request_success", "Completed chat requests by finish reason",
                               ["model", "finish_reason"], registry=r)
        r.register(_QueueCollector(snapshot))

    def install(self, app: FastAPI) -> None:
        """Add ``GET /metrics`` and the counting middleware to `app`.

        Call it after every other middleware is added: Starlette runs the last added outermost, and this
        one must see the responses other middleware answer by itself (401, 413).
        """
        from starlette.responses import Response

        async def scrape(request: Request) -> Response:
            # The library picks the format the scraper asks for (Prometheus text, or OpenMetrics).
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
            return Response(encoder(self.registry), media_type=content_type)

        # A plain Starlette route: no FastAPI parameter parsing, not in the OpenAPI schema.
        app.add_route("/metrics", scrape, methods=["GET"], include_in_schema=False)
        app.add_middleware(MetricsMiddleware, metrics=self)

    def track(self, request: Request, model: str, stream: bool, submitted: float) -> Tracker:
        """A `Tracker` for one chat request the engine accepted.

        Args:
            request: the handler's request (its scope holds the middleware's `RequestRecord`).
            model: the served model's name (the label: bounded by what the server serves).
            stream: whether the client streams.
            submitted: the job's monotonic submission time (``Job.submitted``).
        """
        record = request.scope.get(_SCOPE_KEY)
        if record is None:  # an app without the middleware (a bare test app): metrics only, no access line
            record = RequestRecord()
        record.model, record.stream = model, stream
        return Tracker(self, record, model, stream, submitted)

    def response(self, scope: dict, record: RequestRecord, status: int, error: dict | None, seconds: float) -> None:
        """Count one finished HTTP response and write its access line (called by `MetricsMiddleware`)."""
        method = scope["method"] if scope["method"] in _METHODS else "other"  # clients choose methods: bound them
        path = _path_template(scope)
        self.http_requests.labels(method, path, str(status)).inc()
        self.http_latency.labels(method, path).observe(seconds)
        err = record.error_code
        if status >= 400:
            kind, code = (str(error.get("type") or ""), str(error.get("code") or "")) if error else ("", "")
            self.errors.labels(str(status), kind, code).inc()
            err = code or kind or None
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        access_log.info('%s "%s %s" %d %.1fms model=%s stream=%s prompt_tokens=%s completion_tokens=%s%s',
                        where, scope["method"], scope["path"], status, seconds * 1000, record.model or "-",
                        _or_dash(None if record.stream is None else str(record.stream).lower()),
                        _or_dash(record.prompt_tokens), _or_dash(record.completion_tokens),
                        f" error={err}" if err else "",
                        extra={"http_method": scope["method"], "http_path": scope["path"], "http_status": status,
                               "latency_ms": seconds * 1000, "model": record.model, "stream": record.stream,
                               "prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
                               "error_code": err})


class Tracker:
    """One accepted chat request, as the handler reports it (see `ServeMetrics.track`)."""

    def __init__(self, metrics: ServeMetrics, record: RequestRecord, model: str, stream: bool, submitted: float):
        self.m, self.record, self.model, self.stream, self.submitted = metrics, record, model, stream, submitted
        self.started: float | None = None
        self.first: float | None = None

    def accepted(self, prompt_tokens: int) -> None:
        """A stream's engine accepted the prompt (`Started`): generation time is measured from here."""
        self.started = time.monotonic()
        self.record.prompt_tokens = prompt_tokens

    def delta(self) -> None:
        """A stream's text delta arrived; the first one sets time-to-first-token."""
        if self.first is None:
            self.first = time.monotonic()
            self.m.ttft.labels(self.model, "true").observe(self.first - self.submitted)

    def done(self, prompt_tokens: int, completion_tokens: int, finish_reason: str, *, started: float | None = None,
             first_token: float | None = None) -> None:
        """The answer is complete (the engine's `Completion`).

        Args:
            started, first_token: a plain request's `Completion.started` / `.first_token` (when the engine took
                it up and produced its first token; None: unknown). A stream measured both itself.
        """
        now = time.monotonic()
        if self.started is None:
            self.started = started
        if self.first is None and first_token is not None and not self.stream:
            self.first = first_token
            self.m.ttft.labels(self.model, "false").observe(max(0.0, first_token - self.submitted))
        self.record.prompt_tokens, self.record.completion_tokens = prompt_tokens, completion_tokens
        self.m.prompt_tokens.labels(self.model).inc(prompt_tokens)
        self.m.completion_tokens.labels(self.model).inc(completion_tokens)
        self.m.success.labels(self.model, finish_reason).inc()
        self.m.e2e.labels(self.model, str(self.stream).lower()).observe(now - self.submitted)
        # a zero-length interval (a clock tick) would be an infinite rate, so it is left out.
        if self.started is not None and now > self.started:
            self.m.tokens_per_s.labels(self.model, str(self.stream).lower()).observe(
                completion_tokens / (now - self.started))

    def failed(self, error: APIError) -> None:
        """An error sent in-band, after the stream's headers (200) went out: counted here, not by status."""
        self.record.error_code = error.code or error.type
        self.m.errors.labels(str(error.status), error.type, error.code or "").inc()


def uvicorn_log_config(log_level: str) -> dict:
    """uvicorn's logging config with ``chattune.access`` lines in uvicorn's format, at `log_level`.

    Pass it with ``access_log=False``: the chattune line replaces uvicorn's own access line (which knows no
    model or tokens), so each request is logged once.
    """
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"][access_log.name] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    return cfg


def _or_dash(v: Any) -> str:
    return "-" if v is None else str(v)


def _path_template(scope: dict) -> str:
    """The route's path template (``/v1/models/{model_id:path}``), so ids in paths do not make series."""
    route = scope.get("route")
    if route is None:  # answered before routing (401, 413): find the route it would have reached
        from starlette.routing import Match

        app = scope.get("app")
        route = next((rt for rt in getattr(app, "routes", ()) if rt.matches(scope)[0] is not Match.NONE), None)
    return getattr(route, "path", None) or _UNMATCHED


class MetricsMiddleware:
    """Pure ASGI: counts and times every HTTP response and writes its access line when it ends.

    Pure ASGI (not Starlette's BaseHTTPMiddleware, which runs the endpoint in another task and re-wraps
    stream bodies): it sees the exact messages, so a stream's line is written after its last event.
    """

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.monotonic()
        record = scope[_SCOPE_KEY] = RequestRecord()
        status: int | None = None
        error: dict | None = None
        body: list[bytes] = []
        size = 0

        async def counting_send(message):
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status is not None and status >= 400:
                size += len(message.get("body", b""))
                if size <= _ERROR_BODY_LIMIT:
                    body.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if status is None:  # Starlette's outermost error middleware answers 500 for it
                status, error = 500, {"type": "server_error", "code": None}
            raise
        finally:
            # Nothing sent and nothing raised: the client left before an answer; 499 as nginx logs it.
            final = 499 if status is None else status
            if final >= 400 and error is None:
                error = _error_object(b"".join(body))
            self.metrics.response(scope, record, final, error, time.monotonic() - t0)


def _error_object(body: bytes) -> dict | None:
    """The ``error`` object of an OpenAI error body, or None when the body is not one."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return err if isinstance(err, dict) else None

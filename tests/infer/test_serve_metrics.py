"""`/metrics` and the access log.

Unit part: `ServeMetrics` on a minimal FastAPI app (in-process), so every branch of the middleware is reached
exactly: routed and unrouted answers, answers made before routing, a crash, a stream, an in-band error.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from chattune.infer.serve_metrics import ServeMetrics
from chattune.infer.serve_schema import APIError, error_body

ACCESS = "chattune.access"


def scrape(client) -> dict[str, dict[tuple, float]]:
    """/metrics parsed by prometheus_client's own parser: {sample name: {sorted label items: value}}."""
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(resp.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    """One sample's value; 0 when the series does not exist (never incremented)."""
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def access_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS]


class Refuse:
    """Answers /v1/* without a key with a 401 before routing (as serve's guard does)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1") and not any(
                k == b"authorization" for k, _ in scope["headers"]):
            resp = JSONResponse(error_body("no key", code="invalid_api_key"), status_code=401)
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


@pytest.fixture
def mini():
    """A minimal app: a fake engine snapshot, a chat-like route reporting through a Tracker."""
    snap = {"queued": 3, "running": 2}
    metrics = ServeMetrics(lambda: dict(snap))
    app = FastAPI()
    app.add_middleware(Refuse)

    @app.exception_handler(APIError)
    async def _api_error(_req, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.get("/v1/items/{item_id}")
    async def item(item_id: str):
        if item_id == "missing":
            raise APIError(404, "no such item", code="item_not_found")
        return {"id": item_id}

    @app.post("/v1/chat")
    async def chat(request: Request, stream: bool = False, fail: bool = False):
        t0 = time.monotonic() - 0.01
        track = metrics.track(request, "m1", stream, submitted=t0)
        if not stream:  # the engine's record of when it took the job up and produced the first token
            track.done(prompt_tokens=7, completion_tokens=3, finish_reason="stop", started=t0 + 0.001,
                       first_token=t0 + 0.002)
            return {"ok": True}
        track.accepted(prompt_tokens=5)

        async def events():
            for piece in ("a", "b"):
                track.delta()
                yield f"data: {piece}\n\n"
            if fail:
                track.failed(APIError(500, "engine died", code="engine_error"))
                yield "data: error\n\n"
                return
            track.done(prompt_tokens=5, completion_tokens=2, finish_reason="length")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/boom")
    async def boom():
        raise RuntimeError("bug")

    metrics.install(app)  # last: outermost, sees the guard's 401s
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, snap


AUTH = {"Authorization": "Bearer k"}


def test_every_response_counted_by_path_template_status_and_error_code(mini, caplog):
    client, _ = mini
    caplog.set_level(logging.INFO, logger=ACCESS)
    sent = [("/v1/items/a", AUTH, 200), ("/v1/items/b", AUTH, 200), ("/v1/items/missing", AUTH, 404),
            ("/v1/items/a", {}, 401), ("/nowhere/1", {}, 404), ("/nowhere/2", {}, 404), ("/boom", {}, 500)]
    for path, headers, status in sent:
        assert client.get(path, headers=headers).status_code == status, path
    lines = access_records(caplog)
    m = scrape(client)

    item, lost = "/v1/items/{item_id}", "(unmatched)"
    assert value(m, "chattune_http_requests_total", method="GET", path=item, status="200") == 2
    assert value(m, "chattune_http_requests_total", method="GET", path=item, status="404") == 1
    assert value(m, "chattune_http_requests_total", method="GET", path=item, status="401") == 1  # before routing
    assert value(m, "chattune_http_requests_total", method="GET", path=lost, status="404") == 2  # no series per path
    assert value(m, "chattune_http_requests_total", method="GET", path="/boom", status="500") == 1
    assert value(m, "chattune_http_request_duration_seconds_count", method="GET", path=item) == 4
    assert value(m, "chattune_errors_total", status="404", type="invalid_request_error", code="item_not_found") == 1
    assert value(m, "chattune_errors_total", status="401", type="invalid_request_error", code="invalid_api_key") == 1
    assert value(m, "chattune_errors_total", status="500", type="server_error", code="") == 1
    assert value(m, "chattune_errors_total", status="404", type="", code="") == 2  # Starlette's plain-text 404
    assert sum(m["chattune_errors_total"].values()) == 5
    # one access line per request, in order, with its status and path; no chat fields on plain routes
    assert [(r.http_path, r.http_status) for r in lines] == [(p, s) for p, _, s in sent]
    assert all(r.model is None and r.prompt_tokens is None and "model=- " in r.getMessage() for r in lines)
    assert '"GET /v1/items/missing" 404' in lines[2].getMessage() and "error=item_not_found" in lines[2].getMessage()


def test_chat_requests_tokens_ttft_and_in_band_errors(mini, caplog):
    client, _ = mini
    caplog.set_level(logging.INFO, logger=ACCESS)
    for params in ({}, {}, {"stream": "true"}, {"stream": "true", "fail": "true"}):
        assert client.post("/v1/chat", params=params, headers=AUTH).status_code == 200
    lines = access_records(caplog)
    m = scrape(client)

    assert value(m, "chattune_http_requests_total", method="POST", path="/v1/chat", status="200") == 4
    assert value(m, "chattune_prompt_tokens_total", model="m1") == 7 + 7 + 5
    assert value(m, "chattune_generation_tokens_total", model="m1") == 3 + 3 + 2
    assert value(m, "chattune_request_success_total", model="m1", finish_reason="stop") == 2
    assert value(m, "chattune_request_success_total", model="m1", finish_reason="length") == 1
    assert value(m, "chattune_time_to_first_token_seconds_count", model="m1", stream="true") == 2  # both got a token
    assert value(m, "chattune_generation_tokens_per_second_count", model="m1", stream="true") == 1  # the completed one
    # plain requests: the engine's first-token time, not the whole answer's
    assert value(m, "chattune_time_to_first_token_seconds_count", model="m1", stream="false") == 2
    assert value(m, "chattune_time_to_first_token_seconds_sum", model="m1", stream="false") == pytest.approx(0.004)
    assert value(m, "chattune_generation_tokens_per_second_count", model="m1", stream="false") == 2
    assert value(m, "chattune_e2e_request_latency_seconds_count", model="m1", stream="false") == 2
    assert value(m, "chattune_e2e_request_latency_seconds_count", model="m1", stream="true") == 1
    assert value(m, "chattune_errors_total", status="500", type="server_error", code="engine_error") == 1

    assert [(r.http_status, r.model, r.stream, r.prompt_tokens, r.completion_tokens, r.error_code) for r in lines] == [
        (200, "m1", False, 7, 3, None), (200, "m1", False, 7, 3, None),
        (200, "m1", True, 5, 2, None), (200, "m1", True, 5, None, "engine_error")]
    msg = lines[2].getMessage()
    assert '"POST /v1/chat" 200 ' in msg and "model=m1 stream=true prompt_tokens=5 completion_tokens=2" in msg


def test_queue_gauges_are_read_at_scrape_time_and_registries_are_per_app(mini):
    client, snap = mini
    m = scrape(client)
    assert value(m, "chattune_num_requests_waiting") == 3 and value(m, "chattune_num_requests_running") == 2
    snap.update(queued=0, running=5)
    m = scrape(client)
    assert value(m, "chattune_num_requests_waiting") == 0 and value(m, "chattune_num_requests_running") == 5
    # a second app in the same process gets fresh metrics (the global registry would refuse the names)
    other = ServeMetrics(lambda: {"queued": 1, "running": 0})
    other.errors.labels("400", "invalid_request_error", "x").inc()
    assert value(scrape(client), "chattune_errors_total", status="400", type="invalid_request_error", code="x") == 0


@pytest.mark.parametrize("level,shown", [("info", True), ("warning", False)])
def test_uvicorn_log_config_prints_access_lines_at_info(level, shown):
    # a subprocess: applying a logging config changes the whole process
    code = ("import logging, logging.config; from chattune.infer.serve_metrics import uvicorn_log_config; "
            f"logging.config.dictConfig(uvicorn_log_config({level!r})); "
            "logging.getLogger('chattune.access').info('one access line')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert ("one access line" in p.stderr) is shown, p.stderr


# --- through the real server -----------------------------------------------------------------------
# uvicorn on a loopback port over the tiny random Qwen3, driven by the official openai client.

KEY = "sk-metrics-key"
CAP = 64
MSGS = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def served(tiny_qwen3_dir):
    from chattune.config import ServeConfig
    from chattune.infer.engines import build_engine
    from chattune.infer.serve import BackgroundServer, create_app
    from chattune.infer.serve_bind import bind_socket

    cfg = ServeConfig(api_key=KEY, max_tokens_cap=CAP)
    app = create_app(build_engine("hf", [str(tiny_qwen3_dir)], cfg), cfg)
    with BackgroundServer(app, bind_socket("127.0.0.1", 0)) as srv:
        yield srv


def settled(url: str, method: str, path: str, want: int) -> dict:
    """/metrics once `want` responses to `path` are counted: the middleware counts a response after its
    last byte went out, so the client can read the answer a moment before it is counted."""
    import httpx

    deadline = time.monotonic() + 30
    while True:
        with httpx.Client(base_url=url) as c:
            m = scrape(c)
        got = sum(v for k, v in m.get("chattune_http_requests_total", {}).items()
                  if ("method", method) in k and ("path", path) in k)
        if got >= want or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def test_metrics_and_access_lines_match_what_the_client_saw(served, caplog):
    import openai

    caplog.set_level(logging.INFO, logger=ACCESS)
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    seen = []  # (stream, prompt_tokens, completion_tokens) as the client got them
    for max_tokens in (3, 5):
        r = client.chat.completions.create(model=model, messages=MSGS, temperature=0, max_tokens=max_tokens)
        seen.append((False, r.usage.prompt_tokens, r.usage.completion_tokens))
    for max_tokens in (4, 6):
        chunks = list(client.chat.completions.create(model=model, messages=MSGS, temperature=0, max_tokens=max_tokens,
                                                     stream=True, stream_options={"include_usage": True}))
        seen.append((True, chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=MSGS, max_tokens=CAP + 1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model=model, messages=MSGS, max_tokens=2)

    chat = "/v1/chat/completions"
    m = settled(served.url, "POST", chat, 6)
    lines = [r for r in access_records(caplog) if r.http_path == chat]
    assert value(m, "chattune_http_requests_total", method="POST", path=chat, status="200") == 4
    assert value(m, "chattune_http_requests_total", method="POST", path=chat, status="400") == 1
    assert value(m, "chattune_http_requests_total", method="POST", path=chat, status="401") == 1
    assert value(m, "chattune_http_requests_total", method="GET", path="/v1/models", status="200") == 1
    assert value(m, "chattune_http_request_duration_seconds_count", method="POST", path=chat) == 6
    assert value(m, "chattune_errors_total", status="400", type="invalid_request_error",
                 code="max_tokens_too_large") == 1
    assert value(m, "chattune_errors_total", status="401", type="invalid_request_error", code="invalid_api_key") == 1
    assert sum(m["chattune_errors_total"].values()) == 2
    for stream in ("true", "false"):  # plain requests count too, with the engine's own first-token time
        assert value(m, "chattune_time_to_first_token_seconds_count", model=model, stream=stream) == 2
        assert value(m, "chattune_generation_tokens_per_second_count", model=model, stream=stream) == 2
    first = value(m, "chattune_time_to_first_token_seconds_sum", model=model, stream="false")
    assert 0 < first < value(m, "chattune_e2e_request_latency_seconds_sum", model=model, stream="false")
    assert value(m, "chattune_e2e_request_latency_seconds_count", model=model, stream="false") == 2
    assert value(m, "chattune_e2e_request_latency_seconds_count", model=model, stream="true") == 2
    assert value(m, "chattune_prompt_tokens_total", model=model) == sum(p for _, p, _ in seen)
    assert value(m, "chattune_generation_tokens_total", model=model) == sum(c for _, _, c in seen) > 0
    assert sum(m["chattune_request_success_total"].values()) == 4
    assert value(m, "chattune_num_requests_waiting") == 0 and value(m, "chattune_num_requests_running") == 0

    # one access line per chat request, in order, with its status and the tokens the client saw
    assert [(r.http_status, r.model, r.stream, r.prompt_tokens, r.completion_tokens) for r in lines] == [
        (200, model, s, p, c) for s, p, c in seen] + [(400, None, None, None, None), (401, None, None, None, None)]
    assert "error=max_tokens_too_large" in lines[4].getMessage()
    assert "error=invalid_api_key" in lines[5].getMessage()

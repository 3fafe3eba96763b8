"""The OpenAI-compatible server, started for real (uvicorn on a free loopback port) over the real
`Generator` on the tiny random Qwen3, driven with the official `openai` client (httpx for raw bodies).

Deterministic concurrency: tests that need "the model is busy" hold `engine.model_lock` (the lock the
engine takes for every model call), so queue states are reached exactly, not by timing.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from chattune.config import ServeConfig
from chattune.errors import ConfigError
from chattune.infer.engine_hf import HfEngine
from chattune.infer.generate import Generator
from chattune.infer.serve import BackgroundServer, create_app, run_server
from chattune.infer.serve_bind import bind_socket, check_bind, is_loopback

KEY = "sk-test-key"
CAP = 1500          # large enough that an uncancelled stream would run for seconds
MAX_QUEUE = 4
MSGS = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"}]


@pytest.fixture(scope="module")
def gen(tiny_qwen3_dir) -> Generator:
    return Generator.from_path(tiny_qwen3_dir)


@pytest.fixture(scope="module")
def server(gen):
    cfg = ServeConfig(api_key=KEY, max_tokens_cap=CAP, max_queue=MAX_QUEUE, max_batch_size=8, max_body_bytes=4096)
    app = create_app(HfEngine([gen], cfg), cfg)
    with BackgroundServer(app, bind_socket("127.0.0.1", 0)) as srv:
        srv.engine = app.state.engine
        yield srv
    assert not srv.thread.is_alive()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def direct(server, gen, messages, **kw):
    """Generator.generate on the same model, serialised with the server's engine."""
    with server.engine.model_lock:
        return gen.generate([messages], **kw)[0]


def health(server) -> dict:
    return httpx.get(server.url + "/health", timeout=10).json()


def wait_for(server, pred, what: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(server)
        if pred(h):
            return h
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last /health: {h}")


@contextlib.contextmanager
def model_busy(server):
    """Hold the model so queued requests stay queued; always released."""
    server.engine.model_lock.acquire()
    try:
        yield
    finally:
        server.engine.model_lock.release()


def post(server, body, key=KEY, timeout=30) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = {"json": body} if isinstance(body, (dict, list)) else {"content": body}
    return httpx.post(server.url + "/v1/chat/completions", headers=headers, timeout=timeout, **data)


def assert_error(resp: httpx.Response, status: int, param=None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


# --- answers ---------------------------------------------------------------------------------------

def test_greedy_answer_equals_generator(server, client, gen):
    r = client.chat.completions.create(model=gen.name, messages=MSGS, temperature=0, max_tokens=24)
    want = direct(server, gen, MSGS, max_new_tokens=24)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == gen.name
    assert len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text and want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == want.prompt_tokens == len(gen.prompt_ids(MSGS))
    assert r.usage.completion_tokens == want.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 24


def test_stream_reassembles_to_the_greedy_answer(client, gen):
    kw = {"model": "anything-goes", "messages": MSGS, "temperature": 0, "max_tokens": 20}
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in with_choices][-1] == full.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    def counts(u):
        return u.prompt_tokens, u.completion_tokens, u.total_tokens

    assert counts(last.usage) == counts(full.usage)
    assert all(c.usage is None for c in chunks[:-1])
    # Without include_usage there is no usage chunk at all.
    plain = list(client.chat.completions.create(**kw, stream=True))
    assert all(c.choices for c in plain) and "".join(c.choices[0].delta.content or "" for c in plain) == text


def test_raw_sse_format(server):
    body = {"model": "m", "messages": MSGS[:2], "temperature": 0, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    first = json.loads(events[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_text_parts_and_developer_role_render_like_strings(client):
    as_parts = [{"role": "developer", "content": [{"type": "text", "text": "You are "}, {"type": "text", "text": "terse."}]},
                {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]
    a = client.chat.completions.create(model="m", messages=as_parts, temperature=0, max_tokens=12)
    b = client.chat.completions.create(model="m", messages=MSGS[:2], temperature=0, max_tokens=12)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_stop_strings(server, client, gen):
    base = direct(server, gen, MSGS, max_new_tokens=30)
    # A stop string from the middle of the greedy answer: the answer must end right before it.
    # (Skipping windows with U+FFFD: a random model can emit half a UTF-8 character.)
    k = next(i for i in range(len(base.text) // 2, len(base.text) - 3) if "\ufffd" not in base.text[i:i + 3])
    stop = base.text[k:k + 3]
    want = base.text[:base.text.find(stop)]
    r = client.chat.completions.create(model="m", messages=MSGS, temperature=0, max_tokens=30, stop=[stop, "§never§"])
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 30
    s = client.chat.completions.create(model="m", messages=MSGS, temperature=0, max_tokens=30, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in s if c.choices) == want


def test_seeded_sampling_is_reproducible(client):
    kw = {"model": "m", "messages": MSGS, "temperature": 1.0, "top_p": 0.9, "seed": 7, "max_tokens": 12}
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_models_and_health(server, client, gen):
    assert [m.id for m in client.models.list().data] == [gen.name]
    assert client.models.retrieve(gen.name).id == gen.name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    h = health(server)  # /health needs no key
    assert h["status"] == "ok" and h["model"] == gen.name


# --- rejections --------------------------------------------------------------------------------------

def test_auth(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="m", messages=MSGS, max_tokens=2)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    # The official client refuses to send no key at all, so the missing-key case goes through httpx.
    assert_error(post(server, {"messages": MSGS}, key=None), 401)
    assert_error(post(server, {"messages": MSGS}, key="wrong"), 401)
    r = httpx.get(server.url + "/v1/models", timeout=10)
    assert_error(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"", None),
    (b"[1, 2]", None),
    ({"model": "m"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": MSGS, "max_tokens": "ten"}, "max_tokens"),
    ({"messages": MSGS, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSGS, "max_tokens": CAP + 1}, "max_tokens"),
    ({"messages": MSGS, "max_completion_tokens": CAP + 1}, "max_tokens"),
    ({"messages": MSGS, "temperature": 3}, "temperature"),
    ({"messages": MSGS, "stream": "yes"}, "stream"),
    ({"messages": MSGS, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": MSGS, "logprobs": True}, "logprobs"),
    ({"messages": MSGS, "response_format": {"type": "json_object"}}, "response_format.type"),
    ({"messages": MSGS, "functions": [{"name": "f"}]}, "functions"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
      "max_tokens": 2}, "messages.0.content.0.type"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "t"}], "max_tokens": 2}, "messages.0.tool_call_id"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]}]},
     "messages.0.tool_calls.0.function"),
    ({"messages": MSGS, "seed": 2**64}, "seed"),
    ({"messages": MSGS, "stop": [1]}, "stop"),
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages.0.content"),
])
def test_bad_bodies_get_openai_400(server, body, param):
    err = assert_error(post(server, body), 400, param)
    assert err["type"] == "invalid_request_error"


def test_n_above_one_rejected_by_official_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=MSGS, n=2, max_tokens=2)
    assert e.value.status_code == 400 and e.value.param == "n"


def test_unknown_and_ignored_fields_are_accepted(client):
    r = client.chat.completions.create(model="whatever", messages=MSGS, max_tokens=3, temperature=0, n=1, user="u",
                                       presence_penalty=0, frequency_penalty=0.0, logit_bias={}, tool_choice="none",
                                       tools=[{"type": "function", "function": {"name": "f"}}],
                                       response_format={"type": "text"},
                                       extra_body={"not_an_openai_field": 1, "top_k": -1, "repetition_penalty": 1})
    assert r.choices[0].message.content is not None


@pytest.mark.parametrize("kw", [{"presence_penalty": 0.5}, {"frequency_penalty": -1}, {"logit_bias": {"13": 5}},
                                {"extra_body": {"top_k": 20}}, {"extra_body": {"repetition_penalty": 1.3}},
                                {"extra_body": {"min_p": 0.1}}])
def test_sampling_fields_chat_does_not_take_per_request_are_refused_by_name(client, kw):
    """Ignored, they would answer otherwise than asked: a 400 naming the field and where such settings go."""
    name = next(iter(kw.get("extra_body", kw)))
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=MSGS, max_tokens=2, **kw)
    assert e.value.status_code == 400 and e.value.param == name and e.value.code == "unsupported_parameter"
    assert "generation_config.json" in e.value.message


def test_body_size_and_context_limits(server, gen):
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}  # over max_body_bytes=4096
    assert_error(post(server, big), 413)
    # Same size, sent chunked (no Content-Length): the cap still holds.
    chunked = post(server, iter([json.dumps(big).encode()[i:i + 1000] for i in range(0, 6000, 1000)]))
    assert_error(chunked, 413)
    # Prompt + max_tokens beyond the 2048-token context: 400; without max_tokens it is trimmed instead.
    long_msgs = [{"role": "user", "content": "1234567890" * 70}]  # one token per digit
    assert len(gen.prompt_ids(long_msgs)) + CAP > 2048
    err = assert_error(post(server, {"messages": long_msgs, "max_tokens": CAP}), 400, "max_tokens")
    assert err["code"] == "context_length_exceeded"


def test_generation_errors_map_to_openai_statuses():
    import jinja2

    from chattune.errors import TemplateError
    from chattune.infer.engine import as_api_error

    assert as_api_error(jinja2.TemplateError("Conversation roles must alternate")).status == 400
    assert as_api_error(TemplateError("no chat template")).status == 400
    crash = as_api_error(RuntimeError("boom"))
    assert crash.status == 500 and crash.body()["error"]["type"] == "server_error"


def test_unknown_route_is_a_json_error(server):
    assert_error(httpx.get(server.url + "/v2/nothing", timeout=10), 404)
    assert_error(httpx.get(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                           timeout=10), 405)


# --- concurrency -------------------------------------------------------------------------------------

def test_queue_full_is_429_and_queued_requests_are_batched(server, client, gen):
    single = direct(server, gen, MSGS, max_new_tokens=8).text
    before = health(server)
    with cf.ThreadPoolExecutor(MAX_QUEUE + 1) as pool:
        def ask():
            return client.chat.completions.create(model="m", messages=MSGS, temperature=0, max_tokens=8)

        with model_busy(server):
            futures = [pool.submit(ask)]
            wait_for(server, lambda h: h["running"] == 1 and h["queued"] == 0, "the first request to be taken")
            futures += [pool.submit(ask) for _ in range(MAX_QUEUE)]
            wait_for(server, lambda h: h["queued"] == MAX_QUEUE, "a full queue")
            with pytest.raises(openai.RateLimitError) as e:
                ask()
            assert e.value.status_code == 429 and e.value.code == "queue_full"
            assert e.value.body["type"] == "rate_limit_error"
        answers = [f.result(timeout=60).choices[0].message.content for f in futures]
    assert answers == [single] * (MAX_QUEUE + 1)
    after = health(server)
    # The first request was taken before the others arrived; once the model was free every queued request
    # joined its running batch.
    assert after["largest_batch"] == MAX_QUEUE + 1
    assert after["rejected"] == before["rejected"] + 1


def test_client_that_left_is_skipped_while_queued(server, client):
    before = health(server)
    with cf.ThreadPoolExecutor(1) as pool:
        with model_busy(server):
            running = pool.submit(client.chat.completions.create, model="m", messages=MSGS, max_tokens=2,
                                  temperature=0)
            wait_for(server, lambda h: h["running"] == 1, "the first request to be taken")
            with pytest.raises(httpx.ReadTimeout):  # this client gives up while its request is queued
                post(server, {"messages": MSGS, "max_tokens": 2, "temperature": 0.5, "seed": 1},
                     timeout=httpx.Timeout(30, read=1.0))
            time.sleep(3 * 0.25)  # the handler polls for disconnects every 0.25 s
        running.result(timeout=60)
    h = wait_for(server, lambda h: h["skipped"] == before["skipped"] + 1 and h["queued"] == 0,
                 "the abandoned request to be skipped")
    assert h["completed"] == before["completed"] + 1


def test_stream_disconnect_cancels_generation(server):
    before = health(server)
    body = {"messages": MSGS, "max_tokens": CAP, "temperature": 0, "stream": True}
    t0 = time.monotonic()
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"role"' not in line:
                break  # one real token arrived; now hang up
    h = wait_for(server, lambda h: h["cancelled"] == before["cancelled"] + 1 and h["running"] == 0,
                 "the stream to be cancelled")
    assert h["completed"] == before["completed"]
    assert time.monotonic() - t0 < 20


def _stream_text(client, messages, **kw) -> tuple[str, object]:
    chunks = list(client.chat.completions.create(model="m", messages=messages, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}, **kw))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage


def test_queued_streams_join_the_running_batch_and_match_generate_alone(server, client, gen):
    convs = [MSGS, MSGS[:2], [{"role": "user", "content": "Count to three, please."}]]  # different lengths
    base = direct(server, gen, convs[0], max_new_tokens=16).text
    k = next(i for i in range(len(base) // 2, len(base) - 3) if "\ufffd" not in base[i:i + 3])
    stop = base[k:k + 3]
    for kw in ({}, {"stop": [stop]}):
        want = [direct(server, gen, c, max_new_tokens=16, **kw) for c in convs]  # each alone
        before = health(server)
        with cf.ThreadPoolExecutor(len(convs)) as pool, model_busy(server):
            futures = [pool.submit(_stream_text, client, convs[0], max_tokens=16, **kw)]
            wait_for(server, lambda h: h["running"] == 1 and h["queued"] == 0, "the first stream to be taken")
            futures += [pool.submit(_stream_text, client, c, max_tokens=16, **kw) for c in convs[1:]]
            wait_for(server, lambda h: h["queued"] == len(convs) - 1, "the other streams to queue")
        got = [f.result(timeout=60) for f in futures]
        after = health(server)
        # The first stream was prefilled alone; the two that queued meanwhile were prefilled as one group and
        # joined its running batch (three rows decoding together).
        assert after["prefills"] == before["prefills"] + 2
        assert after["completed"] == before["completed"] + 3
        for (text, use), w in zip(got, want):
            assert text == w.text
            assert (use.prompt_tokens, use.completion_tokens) == (w.prompt_tokens, w.completion_tokens)
    assert want[0].finish_reason == "stop" and want[0].text == base[:base.find(stop)]


def test_cancelling_one_batched_stream_leaves_the_others_intact(server, client, gen):
    convs = [MSGS, MSGS[:2]]
    want = direct(server, gen, convs[0], max_new_tokens=200)
    before = health(server)

    def leave_early():
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                          json={"messages": convs[1], "max_tokens": 200, "temperature": 0, "stream": True},
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            for line in r.iter_lines():
                if '"content":"' in line and '"role"' not in line:
                    return

    with cf.ThreadPoolExecutor(2) as pool:
        with model_busy(server):
            full = pool.submit(_stream_text, client, convs[0], max_tokens=200)
            wait_for(server, lambda h: h["running"] == 1 and h["queued"] == 0, "the first stream to be taken")
            gone = pool.submit(leave_early)
            wait_for(server, lambda h: h["queued"] == 1, "the second stream to queue")
        gone.result(timeout=60)
        text, use = full.result(timeout=120)
    assert text == want.text and use.completion_tokens == want.completion_tokens
    h = wait_for(server, lambda h: h["running"] == 0, "the batch to end")
    assert h["cancelled"] == before["cancelled"] + 1 and h["completed"] == before["completed"] + 1


def test_a_burst_of_1000_requests_gets_429_beyond_the_queue_and_leaves_nothing_behind(server):
    import asyncio
    import gc

    from chattune.infer.engine import Job

    def jobs_alive() -> int:
        gc.collect()
        return sum(type(o) is Job for o in gc.get_objects())

    baseline = jobs_alive()
    body = {"messages": MSGS, "max_tokens": 2, "temperature": 0}

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120,
                                     headers={"Authorization": f"Bearer {KEY}"}) as c:
            async def one() -> int:
                return (await c.post("/v1/chat/completions", json=body)).status_code

            with model_busy(server):  # nothing finishes during the burst: the queue fills, the rest is refused
                tasks = [asyncio.ensure_future(one()) for _ in range(1000)]
                done = 0
                while done < 1000 - (8 + MAX_QUEUE):  # 8 = max_batch_size taken into the batch at most
                    await asyncio.sleep(0.2)
                    done = sum(t.done() for t in tasks)
            return list(await asyncio.gather(*tasks))

    before = health(server)
    codes = asyncio.run(burst())
    assert set(codes) <= {200, 429} and codes.count(200) >= 1 + MAX_QUEUE
    assert codes.count(200) <= 8 + MAX_QUEUE
    h = wait_for(server, lambda h: h["running"] == 0 and h["queued"] == 0, "the accepted requests to finish")
    assert h["rejected"] - before["rejected"] == codes.count(429)
    assert h["completed"] - before["completed"] == codes.count(200)
    assert jobs_alive() <= baseline  # no request is held anywhere once answered
    assert server.engine.snapshot()["running"] == 0


# --- binding -----------------------------------------------------------------------------------------

def test_refuses_open_bind_without_key(monkeypatch, tmp_path):
    monkeypatch.delenv("CHATTUNE_API_KEY", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    with pytest.raises(ConfigError, match="--api-key"):
        run_server(str(tmp_path / "not-loaded"), ServeConfig(host="0.0.0.0"))  # refused before loading
    assert check_bind(ServeConfig()).api_key is None  # loopback: no key needed
    monkeypatch.setenv("CHATTUNE_API_KEY", "from-env")
    assert check_bind(ServeConfig(host="0.0.0.0")).api_key == "from-env"


def test_cli_refuses_open_bind_without_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CHATTUNE_API_KEY"}
    exe = Path(sys.executable).with_name("chattune")
    p = subprocess.run([str(exe), "serve", str(tmp_path), "--host", "0.0.0.0"], capture_output=True, text=True,
                       env=env, timeout=120, check=False)
    assert p.returncode == 2 and "api-key" in p.stderr.replace("\n", " ")


def cli_server(model_dir, *args: str, preexec_fn=None) -> tuple[subprocess.Popen, str]:
    """`chattune serve MODEL_DIR ARGS` on a free port, once /health answers: (the process, its base url)."""
    with bind_socket("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    env = {**os.environ, "CHATTUNE_API_KEY": KEY}
    exe = Path(sys.executable).with_name("chattune")
    proc = subprocess.Popen([str(exe), "serve", str(model_dir), "--port", str(port), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=preexec_fn)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        time.sleep(0.2)
    if proc.poll() is not None:
        raise AssertionError(proc.communicate()[0])
    return proc, url


def stop(proc: subprocess.Popen, sig: int) -> str:
    """Send `sig` and return the server's output once it exits (killed after 30 s)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def test_cli_serves_a_model_dir(tiny_qwen3_dir):
    """`chattune serve DIR --port P` end to end: loads, answers the official client, stops on SIGINT."""
    proc, url = cli_server(tiny_qwen3_dir, "--max-tokens-cap", "16")
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        r = c.chat.completions.create(model="m", messages=MSGS, temperature=0, max_tokens=4)
        assert r.model == Path(tiny_qwen3_dir).name and r.usage.completion_tokens <= 4
        with pytest.raises(openai.BadRequestError):  # --max-tokens-cap reached the server
            c.chat.completions.create(model="m", messages=MSGS, max_tokens=17)
    finally:
        out = stop(proc, signal.SIGINT)
    assert proc.returncode == 0 and "Application shutdown complete" in out, out


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT inherited ignored"])
def test_cli_server_stops_gracefully_on_sigterm_and_on_sigint_a_background_shell_ignored(tiny_qwen3_dir, how):
    # The hf engine's loop runs in the main thread and uvicorn in another, so the server sets its own
    # handlers: SIGTERM (what service managers send) and SIGINT even when a non-interactive shell started
    # it with SIGINT ignored (as CI runners and `nohup` do) end it like Ctrl-C does.
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if how.startswith("SIGINT") else None
    proc, url = cli_server(tiny_qwen3_dir, preexec_fn=ignore)
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        assert c.chat.completions.create(model="m", messages=MSGS, temperature=0, max_tokens=2).choices
    finally:
        out = stop(proc, signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
    assert proc.returncode == 0 and "Application shutdown complete" in out, out


def test_unknown_or_unavailable_engine_is_a_clear_error():
    from chattune.infer.engines import build_engine

    with pytest.raises(ConfigError, match="unknown engine 'tgi'; expected one of hf, vllm, llamacpp"):
        build_engine("tgi", ["runs/x"], ServeConfig())
    with pytest.raises(ConfigError, match="nothing to serve"):
        build_engine("hf", [], ServeConfig())

"""Tool calling through the OpenAI-compatible server, driven with the official `openai` client.

A tiny random model never writes a tool call, so the model here is the scripted Qwen3 of test_generate
with the real Qwen3 tokenizer and template: the first trigger word in the conversation picks the token
chain it answers with (theta: prose + a tool call, omega: a tool call with broken JSON, alpha: prose),
and after the forced opening of a get_weather call it writes the call's arguments.
"""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from chattune.config import ServeConfig
from chattune.infer.engine_hf import HfEngine
from chattune.infer.generate import Generator
from chattune.infer.serve import BackgroundServer, create_app
from chattune.infer.serve_bind import bind_socket
from tests.infer.test_generate import SCRIPTS, build_scripted_qwen3
from tests.infer.test_tool_calls import CHATML

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Forecast for a city over some days",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "array", "items": {"type": "integer"}}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
CALL = 'Checking.\n<tool_call>\n{"name":"get_weather","arguments":{"days":[3]}}\n</tool_call>'
BROKEN = '<tool_call>\n{"name":"get_weather","arguments":{"city"\n</tool_call>'
THOUGHT_CALL = '<think>Weather needs a tool.</think>\n\n<tool_call>{"name":"get_weather","arguments":{"days":[3]}}</tool_call>'
FORCED_ARGS = ' {"days":[3]}}\n</tool_call>'  # what the model writes after a forced get_weather opening
ASK = [{"role": "user", "content": "theta: what is the weather in Paris?"}]  # answers CALL
NO_TRIGGER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def gen(qwen3_tokenizer_dir) -> Generator:
    from chattune.infer.tool_calls import HermesFormat

    model, tok = build_scripted_qwen3(None, qwen3_tokenizer_dir, {"alpha": SCRIPTS["alpha"], "theta": CALL,
                                                                  "omega": BROKEN},
                                      {HermesFormat().opening("get_weather"): FORCED_ARGS})
    return Generator(model, tok, name="scripted-tools")


def serve(gen: Generator):
    cfg = ServeConfig(max_tokens_cap=64)
    return BackgroundServer(create_app(HfEngine([gen], cfg), cfg), bind_socket("127.0.0.1", 0))


@pytest.fixture(scope="module")
def client(gen):
    with serve(gen) as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)


def ask(client, messages, stream=False, **kw):
    """The answer as (content, reasoning, tool calls as dicts, finish_reason, usage, raw stream deltas)."""
    if not stream:
        r = client.chat.completions.create(model="m", messages=messages, temperature=0, **kw)
        m = r.choices[0].message
        calls = [c.model_dump() for c in m.tool_calls or []]
        return m.content, getattr(m, "reasoning_content", None), calls, r.choices[0].finish_reason, r.usage, None
    deltas, finish, used = [], None, None
    for chunk in client.chat.completions.create(model="m", messages=messages, temperature=0, stream=True,
                                                stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            used = chunk.usage
        for ch in chunk.choices:
            deltas.append(ch.delta.model_dump(exclude_none=True))
            finish = ch.finish_reason or finish
    content = "".join(d.get("content") or "" for d in deltas)
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:  # accumulate as OpenAI's docs tell clients to
        for tc in d.get("tool_calls", []):
            c = calls.setdefault(tc["index"], {"id": None, "type": None, "function": {"name": "", "arguments": ""}})
            c["id"] = tc.get("id") or c["id"]
            c["type"] = tc.get("type") or c["type"]
            c["function"]["name"] += tc.get("function", {}).get("name") or ""
            c["function"]["arguments"] += tc.get("function", {}).get("arguments") or ""
    return content or None, reasoning or None, [calls[i] for i in sorted(calls)], finish, used, deltas


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_tool_call_comes_back_as_openai_tool_calls(client, gen, stream):
    content, _, calls, finish, used, deltas = ask(client, ASK, stream, tools=TOOLS)
    assert finish == "tool_calls" and content == "Checking."
    assert len(calls) == 1 and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"days": [3]}
    # The tools were rendered into the prompt, through the served model's template.
    assert used.prompt_tokens == len(gen.prompt_ids(ASK, TOOLS)) > len(gen.prompt_ids(ASK))
    if stream:  # content first (never the call's markup), then the call as OpenAI streams it
        kinds = [("tool_calls" if "tool_calls" in d else "content" if d.get("content") else "") for d in deltas]
        assert kinds.index("tool_calls") > max(i for i, k in enumerate(kinds) if k == "content")
        assert not any("<tool_call>" in (d.get("content") or "") for d in deltas)
        first, *rest = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
        assert first["index"] == 0 and first["type"] == "function" and first["function"] == {
            "name": "get_weather", "arguments": ""}
        assert rest and all(set(r) == {"index", "function"} and set(r["function"]) == {"arguments"} for r in rest)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_named_tool_choice_makes_the_model_call_that_function(client, stream):
    # Without a trigger the model writes no call; naming the function forces its opening.
    free = ask(client, NO_TRIGGER, stream, tools=TOOLS, max_tokens=5)
    assert free[2] == [] and free[3] == "length"
    content, _, calls, finish, _, _ = ask(client, NO_TRIGGER, stream, tools=TOOLS, tool_choice=WEATHER)
    assert finish == "tool_calls" and content is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"days": [3]})]


def test_required_with_one_function_forces_it(client):
    tools = TOOLS[:1]
    _, _, calls, finish, _, _ = ask(client, NO_TRIGGER, tools=tools, tool_choice="required")
    assert finish == "tool_calls" and calls[0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_malformed_tool_json_comes_back_as_content_with_stop(client, stream):
    messages = [{"role": "user", "content": "omega: weather?"}]
    content, _, calls, finish, _, _ = ask(client, messages, stream, tools=TOOLS)
    assert (content, calls, finish) == (BROKEN, [], "stop")


def test_tool_choice_none_renders_no_tools_and_parses_nothing(client, gen):
    content, _, calls, finish, used, _ = ask(client, ASK, tools=TOOLS, tool_choice="none")
    assert (content, calls, finish) == (CALL, [], "stop")
    assert used.prompt_tokens == len(gen.prompt_ids(ASK))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_follow_up_with_tool_results_continues_the_conversation(client, gen, stream):
    m = client.chat.completions.create(model="m", messages=NO_TRIGGER, tools=TOOLS, tool_choice=WEATHER,
                                       temperature=0).choices[0].message
    # The client's own message object goes back as is (as the README shows).
    history = [*NO_TRIGGER, m, {"role": "tool", "tool_call_id": m.tool_calls[0].id, "content": "alpha: 21 C and sunny"}]
    content, _, more, finish, used, _ = ask(client, history, stream, tools=TOOLS)
    assert (content, more, finish) == (SCRIPTS["alpha"], [], "stop")  # the model read the tool's answer
    rendered = [*NO_TRIGGER, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"days": [3]}}}]},
        {"role": "tool", "content": "alpha: 21 C and sunny", "name": "get_weather"}]
    assert used.prompt_tokens == len(gen.prompt_ids(rendered, TOOLS))
    text = gen.tokenizer.decode(gen.prompt_ids(rendered, TOOLS))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"days": [3]}}' in text
    assert "<tool_response>\nalpha: 21 C and sunny\n</tool_response>" in text


@pytest.mark.parametrize(("kw", "param"), [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"messages": [*NO_TRIGGER, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]}, "messages.1.tool_call_id"),
    ({"messages": [*NO_TRIGGER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages.1.tool_calls.0.function.arguments"),
])
def test_bad_tool_requests_get_400_naming_the_field(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", **{"messages": NO_TRIGGER, **kw})
    assert e.value.status_code == 400 and e.value.param == param


@pytest.fixture(scope="module")
def thinking_client(qwen3_tokenizer_dir):
    # With thinking on, Qwen3's generation prompt ends "<|im_start|>assistant\n"; the model thinks, then calls.
    model, tok = build_scripted_qwen3(None, qwen3_tokenizer_dir, {"alpha": SCRIPTS["alpha"]},
                                      {"<|im_start|>assistant\n": THOUGHT_CALL})
    with serve(Generator(model, tok, name="thinking").with_thinking("keep")) as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_thinking_run_returns_the_reasoning_apart_and_the_call_parsed(thinking_client, stream):
    # The call is parsed from the answer after the think block, never from the reasoning (vllm#19513).
    content, reasoning, calls, finish, _, _ = ask(thinking_client, NO_TRIGGER, stream, tools=TOOLS)
    assert (content, reasoning, finish) == (None, "Weather needs a tool.", "tool_calls")
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"days": [3]})]


def test_tools_on_a_template_without_tool_support_get_400(gen):
    import copy

    tok = copy.deepcopy(gen.tokenizer)
    tok.chat_template = CHATML
    with serve(Generator(gen.model, tok, name="no-tools")) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": NO_TRIGGER, "tools": TOOLS}, timeout=30)
        assert r.status_code == 400
        err = r.json()["error"]
        assert (err["param"], err["code"]) == ("tools", "tools_unsupported") and "no tool support" in err["message"]
        r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": NO_TRIGGER, "tools": TOOLS,
                                                               "tool_choice": "none", "max_tokens": 2}, timeout=30)
        assert r.status_code == 200

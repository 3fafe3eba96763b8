"""Tool-calling rows → the one conversation shape (OpenAI messages and LLaMA-Factory ShareGPT), and what
`data check` finds wrong with them (file and line named)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from chattune.config import DataConfig, DataSource
from chattune.data.formats import load_conversations
from chattune.data.tools import pair_calls, parse_tools, tool_problems
from chattune.errors import DataError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WEATHER_FN = {"name": "get_weather", "description": "Weather for a city.",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "date": {"type": "string"}},
                             "required": ["city"]}}
WEATHER = {"type": "function", "function": WEATHER_FN}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _load(path: Path, **source) -> list:
    return load_conversations([DataSource(path=str(path), **source)], DataConfig())[0]


def test_openai_rows_become_the_one_shape(tmp_path):
    rows = [
        {"tools": [WEATHER], "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": {"temp_c": 21}},
            {"role": "tool", "content": [{"type": "text", "text": "parts "}, {"type": "text", "text": "joined"}]},
            {"role": "assistant", "content": "21°C."}]},
        # arguments as an object, no id, no content key; a trailing call is a training target of its own
        {"messages": [{"role": "user", "content": "Rome?"},
                      {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                          "name": "get_weather", "arguments": {"city": "Rome"}}}]}]},
    ]
    a, b = _load(_jsonl(tmp_path / "t.jsonl", rows))
    assert a.tools == [WEATHER] and b.tools is None
    assert a.messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "call_1"}]}
    assert a.messages[2] == {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "call_1",
                             "name": "get_weather"}  # name filled from the call it answers
    assert a.messages[3]["content"] == "parts joined"  # OpenAI text parts, as for any message
    assert b.messages[-1]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}
    # per-dataset tools: the source's list, unless the row declares its own
    a2, b2 = _load(tmp_path / "t.jsonl", tools=[{"type": "function", "function": {"name": "other"}}])
    assert a2.tools == [WEATHER] and b2.tools[0]["function"]["name"] == "other"


def test_llamafactory_sharegpt_function_call_and_observation(tmp_path):
    rows = [{"conversations": [
        {"from": "human", "value": "What's the weather in Oslo tomorrow?"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo", "date": "tomorrow"}}'},
        {"from": "observation", "value": '{"temp_c": 4}'},
        {"from": "gpt", "value": "4°C in Oslo tomorrow."}],
        "system": "You are a weather bot.", "tools": json.dumps([WEATHER_FN])}]
    (c,) = _load(_jsonl(tmp_path / "s.jsonl", rows))
    assert c.tools == [WEATHER]  # LLaMA-Factory's bare function, wrapped in the OpenAI shape
    assert [m["role"] for m in c.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert c.messages[0]["content"] == "You are a weather bot."
    assert c.messages[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "date": "tomorrow"}}}]}
    assert c.messages[3] == {"role": "tool", "content": '{"temp_c": 4}', "name": "get_weather"}
    assert tool_problems(c.messages, c.tools) == []


@pytest.mark.parametrize(("row", "match"), [
    ({"tools": "[{oops", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     r"line 1, field 'tools': tools is not valid JSON"),
    ({"tools": [{"description": "no name"}], "messages": [{"role": "user", "content": "q"},
                                                          {"role": "assistant", "content": "a"}]},
     r"field 'tools': tools \[0\] .*expected a function with a name"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {}}]}]},
     r"messages\[1\]\.tool_calls\[0\] is .*expected a call"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "get_weather(Paris)"}]},
     r"conversations\[1\]\.value is 'get_weather\(Paris\)'; expected the call as JSON"),
])
def test_unreadable_tool_fields_name_file_line_and_field(tmp_path, row, match):
    with pytest.raises(DataError, match=match):
        _load(_jsonl(tmp_path / "bad.jsonl", [row]))


def test_tool_problems_errors_and_warnings():
    tools = parse_tools([WEATHER])
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get_weather", "arguments": {"date": "x", "unit": "C"}}},
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{city: Paris"}}]},
            {"role": "tool", "content": "1", "name": "get_weather"},
            {"role": "tool", "content": "2", "tool_call_id": "nope"},
            {"role": "assistant", "content": "ok"}]
    got = [(p.level, p.message, p.text) for p in tool_problems(msgs, tools)]
    texts = "\n".join(f"{lv} {k} {t}" for lv, k, t in got)
    assert ("error", 2, "call to 'get_weather' lacks required argument(s) ['city'] (declared required: ['city'])") in got
    assert "warning 2 call to 'get_weather' passes argument(s) ['unit'] that its schema does not declare" in texts
    assert "error 2 calls 'get_time', which the row's tools do not declare (declared: ['get_weather'])" in texts
    assert "error 2 arguments of the call to 'get_time' are not valid JSON: '{city: Paris'" in texts
    assert "error 4 tool result (tool_call_id 'nope') answers no call" in texts
    assert "warning 2 the call to 'get_time' is never answered" in texts
    assert len(got) == 6
    # no tools declared: one warning; a conversation that ends with its call is not "unanswered"
    ends = [msgs[0], {**msgs[1], "tool_calls": msgs[1]["tool_calls"][:1]}]
    found = tool_problems(ends, None)
    assert [p.level for p in found] == ["warning"] and found[0].text.startswith("the row calls functions but declares "
                                                                                  "no tools")
    assert pair_calls(ends).unanswered == []


def test_duplicates_differ_by_tools(tmp_path):
    conv = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    convs, rep = load_conversations([DataSource(path=str(_jsonl(tmp_path / "d.jsonl", [
        conv, {**conv, "tools": [WEATHER]}, {**conv, "tools": [WEATHER]}])))], DataConfig())
    assert len(convs) == 2 and rep["duplicates_removed"] == 1


def test_one_observation_for_parallel_calls_becomes_one_result_per_call(tmp_path):
    """LLaMA-Factory writes a turn of parallel calls as a JSON list and answers it with one observation holding a
    list of as many results."""
    rows = [{"conversations": [
        {"from": "human", "value": "Colder in Helsinki or Tallinn?"},
        {"from": "function_call", "value": json.dumps([{"name": "get_weather", "arguments": {"city": "Helsinki"}},
                                                       {"name": "get_weather", "arguments": {"city": "Tallinn"}}])},
        {"from": "observation", "value": '[{"temp_c": -6}, {"temp_c": -3}]'},
        {"from": "gpt", "value": "Helsinki."}], "tools": json.dumps([WEATHER_FN])}]
    (c,) = _load(_jsonl(tmp_path / "p.jsonl", rows))
    assert [m["role"] for m in c.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [m["content"] for m in c.messages[2:4]] == ['{"temp_c": -6}', '{"temp_c": -3}']
    assert tool_problems(c.messages, c.tools) == []


def test_convert_keeps_tools_and_refuses_shapes_that_cannot_hold_them(tmp_path):
    from chattune.data.convert import convert_file

    src = EXAMPLES / "tools_sharegpt.json"
    out = tmp_path / "messages.jsonl"
    assert convert_file(src, out, to="messages") == 6
    before, after = _load(src), _load(out)
    assert [(c.messages, c.tools) for c in after] == [(c.messages, c.tools) for c in before]
    with pytest.raises(DataError, match=r"tools_sharegpt\.json.*declares tools, which the alpaca shape cannot hold"):
        convert_file(src, tmp_path / "a.json", to="alpaca")


def test_results_pair_by_id_then_name_then_order():
    calls = [{"type": "function", "function": {"name": n, "arguments": {}}} for n in ("a", "b")]
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "tool", "content": "1", "tool_call_id": "call_x", "name": "b"},  # calls carry no ids: by name
            {"role": "tool", "content": "2"}]                                          # the one still open
    assert pair_calls(msgs).answers == {2: (1, 1), 3: (1, 0)}
    with_ids = [{**c, "id": f"id{i}"} for i, c in enumerate(calls)]
    msgs[1] = {**msgs[1], "tool_calls": with_ids}
    assert pair_calls(msgs).answers == {2: None, 3: (1, 0)}  # ids given and none matches: a wrong answer

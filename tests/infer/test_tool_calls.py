"""Tool-call parsing against what the real chat templates render for a tool call.

Each round trip renders an assistant tool-call turn through the tokenizer's own template, takes the
assistant part as a model would write it (tokens decoded with special tokens dropped) and parses it back.
"""
from __future__ import annotations

import copy
import json
from functools import cache

import pytest

from chattune.errors import TemplateError
from chattune.infer.reasoning import split_reasoning
from chattune.infer.tool_calls import ParsedTools, ToolCallStream, parse_tool_calls, tool_call_format
from tests.conftest import real_tokenizer_dir

WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}
TIME = {"name": "get_time", "arguments": {"tz": "Europe/Paris", "24h": True, "note": "a \"quoted\" {brace}"}}
USER = {"role": "user", "content": "Weather and time in Paris?"}
# ChatML without tools (SmolLM2's shape): it would drop tools and calls silently.
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@cache
def tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_tokenizer_dir(name))


def call_turn(calls: list[dict], content: str | None = "", string_args: bool = False) -> dict:
    return {"role": "assistant", "content": content, "tool_calls": [
        {"type": "function", "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])
                                          if string_args else c["arguments"]}} for c in calls]}


def render(tok, conv: list[dict], gen: bool) -> str:
    try:
        return tok.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False)
    except Exception:  # noqa: BLE001 — DeepSeek-V3 (see below)
        # transformers drops None-valued keys, and DeepSeek-V3's template needs content None on a
        # tool-call turn: render its Jinja directly, as tool_call_format's probe does.
        from transformers.utils.chat_template_utils import render_jinja_template

        texts, _ = render_jinja_template([conv], chat_template=tok.chat_template, add_generation_prompt=gen,
                                         **tok.special_tokens_map)
        return texts[0]


def assistant_ids(tok, turn: dict) -> list[int]:
    """The token ids of `turn` as the template renders it after the generation prompt."""
    prompt, full = render(tok, [USER], True), render(tok, [USER, turn], False)
    assert full.startswith(prompt)
    return tok(full[len(prompt):], add_special_tokens=False)["input_ids"]


def decoded(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


# (tokenizer, turn, content the parse should leave): each template in the message shape it renders.
ROUND_TRIPS = {
    "qwen3-one": ("qwen3", call_turn([WEATHER]), ""),
    "qwen3-two-with-text": ("qwen3", call_turn([WEATHER, TIME], "Let me check both."), "Let me check both."),
    "qwen3-string-args": ("qwen3", call_turn([TIME], string_args=True), ""),
    "llama3_1": ("llama3_1", call_turn([TIME]), ""),
    "deepseek_v3-one": ("deepseek_v3", call_turn([WEATHER], None, string_args=True), ""),
    "deepseek_v3-two": ("deepseek_v3", call_turn([WEATHER, TIME], None, string_args=True), ""),
}


@pytest.mark.parametrize("case", ROUND_TRIPS)
def test_a_rendered_tool_call_parses_back(case):
    name, turn, content = ROUND_TRIPS[case]
    tok = tokenizer(name)
    fmt = tool_call_format(tok)
    text = split_reasoning(decoded(tok, assistant_ids(tok, turn))).content
    parsed = parse_tool_calls(text, fmt)
    want = [(c["function"]["name"], c["function"]["arguments"]) for c in turn["tool_calls"]]
    want = [(n, json.loads(a) if isinstance(a, str) else a) for n, a in want]
    assert [(c.name, c.arguments) for c in parsed.calls] == want
    assert not parsed.malformed and parsed.content == content
    assert all(c.raw and c.name in c.raw for c in parsed.calls)


@pytest.mark.parametrize("case", ROUND_TRIPS)
def test_streamed_token_by_token_equals_the_whole_parse(case):
    name, turn, _ = ROUND_TRIPS[case]
    tok = tokenizer(name)
    fmt = tool_call_format(tok)
    ids = assistant_ids(tok, turn)
    whole = parse_tool_calls(split_reasoning(decoded(tok, ids)).content, fmt)
    stream, sent, prev = ToolCallStream(fmt), [], ""
    for k in range(1, len(ids) + 1):  # deltas as an engine sends them: diffs of the full decode
        now = split_reasoning(decoded(tok, ids[:k]), final=False).content
        sent.append(stream.feed(now[len(prev):]))
        prev = now
    before = "".join(sent)
    rest, parsed = stream.finish()
    assert before + rest == whole.content and parsed == whole
    assert "<" not in before and "{" not in before  # no call markup ever goes out as content


@pytest.mark.parametrize("name", ["gemma3", "llama3"])
def test_a_template_without_tool_support_is_refused_by_name(name):
    with pytest.raises(TemplateError, match=rf"chat template of '.*{name}' has no tool support"):
        tool_call_format(tokenizer(name))


def test_a_template_that_only_mentions_the_markup_is_refused():
    tok = copy.deepcopy(tokenizer("qwen3"))
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if tools %}Call tools as <tool_call>{...}</tool_call>{% endif %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(TemplateError, match="looks like the hermes tool-call format, but a tool call it renders"):
        tool_call_format(tok)


def test_named_templates_are_probed_with_the_one_tools_select():
    # Hermes-style repos ship {"default": ..., "tool_use": ...}; transformers renders with "tool_use" when
    # tools are given, so the probe must declare tools as inference does.
    tok = copy.deepcopy(tokenizer("qwen3"))
    tok.chat_template = {"default": CHATML, "tool_use": tokenizer("qwen3").chat_template}
    assert tool_call_format(tok).name == "hermes"


@pytest.mark.parametrize("name", ["qwen3", "llama3_1"])
@pytest.mark.parametrize("fn", [WEATHER["name"], None])
def test_a_forced_call_opening_is_a_token_prefix_of_the_rendered_call(name, fn):
    # The server forces a call by ending the prompt with the call's opening (a PREFIX message): the model
    # must see the tokens training showed it, so the prompt must be a token prefix of the rendered call.
    from chattune.infer.prompt import PREFIX, PromptRenderer

    tok = tokenizer(name)
    renderer = PromptRenderer(tok, name, (tok.eos_token_id,))
    opening = renderer.tool_format().opening(fn)
    full = tok.apply_chat_template([USER, call_turn([WEATHER])], tokenize=True, return_dict=False)
    forced = renderer.prompt_ids([USER, {"role": "assistant", "content": opening, PREFIX: True}])
    assert len(forced) > len(renderer.prompt_ids([USER])) and full[:len(forced)] == forced


@pytest.mark.parametrize(("name", "why"), [("gemma3", "no tool support"),
                                           ("deepseek_v3", "ignores `tools`")])
def test_the_renderer_refuses_tools_for_a_template_without_them_every_time(name, why):
    # DeepSeek-V3's calls parse (above), but its template never shows the model the declared tools.
    from chattune.infer.prompt import PromptRenderer

    tok = tokenizer(name)
    renderer = PromptRenderer(tok, name, (tok.eos_token_id,))
    for _ in range(2):  # the decision is cached, the error too
        with pytest.raises(TemplateError, match=why):
            renderer.tool_format()


def hermes() -> object:
    return tool_call_format(tokenizer("qwen3"))


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\n</tool_call>',  # bad JSON
    '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',  # no name
    '<tool_call>\n{"name": "get_weather", "arguments": [1, 2]}\n</tool_call>',  # arguments not an object
    '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": ',  # 2nd one cut off
])
def test_a_malformed_hermes_call_makes_the_whole_text_content(text):
    parsed = parse_tool_calls("  " + text + "\n", hermes())
    assert parsed == ParsedTools(text.strip(), (), malformed=True)


def test_hermes_reads_an_unclosed_last_block_and_prose_around_calls():
    parsed = parse_tool_calls('Sure.\n<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>\n'
                              'and\n<tool_call>{"name": "g"}', hermes())
    assert [(c.name, c.arguments) for c in parsed.calls] == [("f", {"x": 1}), ("g", {})]
    assert parsed.content == "Sure.\n\nand" and not parsed.malformed
    assert parse_tool_calls("No tools needed: 4.", hermes()) == ParsedTools("No tools needed: 4.", ())


def test_llama_json_answers_that_are_not_calls_stay_content():
    fmt = tool_call_format(tokenizer("llama3_1"))
    assert parse_tool_calls('{"city": "Paris"}', fmt) == ParsedTools('{"city": "Paris"}', ())
    assert parse_tool_calls('{"name": "f", "parameters": {"x": ', fmt).malformed
    two = parse_tool_calls('<|python_tag|>{"name": "f", "parameters": {"x": 1}}; {"name": "g", "arguments": {}}', fmt)
    assert [(c.name, c.arguments) for c in two.calls] == [("f", {"x": 1}), ("g", {})]


def test_deepseek_bad_arguments_are_malformed():
    fmt = tool_call_format(tokenizer("deepseek_v3"))
    text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{x}\n```<｜tool▁call▁end｜>"
    assert parse_tool_calls(text, fmt) == ParsedTools(text, (), malformed=True)


def test_a_malformed_call_streams_back_as_content():
    text = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city"\n</tool_call>'
    stream = ToolCallStream(hermes())
    sent = "".join(stream.feed(text[i:i + 3]) for i in range(0, len(text), 3))
    rest, parsed = stream.finish()
    assert sent == "Checking." and parsed.malformed and sent + rest == text

"""The loss-mask guarantee on tool-calling conversations and the thinking modes, asserted literally against each
real tokenizer's own ``apply_chat_template(..., tools=...)``: every trained assistant turn (a call, or an answer
after a result) starts where inference's generation prompt ends and ends with the end-of-turn token; tool results
are never trained; a template that would drop tools is refused, naming it."""
from __future__ import annotations

import json

import pytest
from tests.conftest import real_tokenizer_dir, smollm2_tokenizer
from transformers import AutoTokenizer

from chattune.data.render import (
    IGNORE,
    Rendered,
    inference_thinking,
    prompt_ids,
    render_batch,
    render_conversation,
    template_kwargs,
)
from chattune.errors import TemplateError

EOT = {"qwen3": "<|im_end|>", "llama3_1": "<|eot_id|>", "smollm2_tools": "<|im_end|>"}
# real tokenizers' own templates, and SmolLM2 with the template chattune ships for it (model.chat_template)
FAMILIES = ["qwen3", "llama3_1", "smollm2_tools"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city on a date.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "date": {"type": "string"}},
                   "required": ["city"]}}}
CALC = {"type": "function", "function": {
    "name": "calculate", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
TOOLS = [WEATHER, CALC]


def call(name: str, **args) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": args}}


# one call → result → answer, then a second round (a new user question answered by a call and an answer)
ROUND_TRIP = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What's the weather in Paris on 2024-06-02?"},
    {"role": "assistant", "content": "", "tool_calls": [call("get_weather", city="Paris", date="2024-06-02")]},
    {"role": "tool", "content": '{"temp_c": 21, "sky": "sunny"}', "name": "get_weather"},
    {"role": "assistant", "content": "Sunny and 21°C in Paris on June 2."},
    {"role": "user", "content": "And 17 * 23?"},
    {"role": "assistant", "content": "", "tool_calls": [call("calculate", expression="17 * 23")]},
    {"role": "tool", "content": '{"value": 391}', "name": "calculate"},
    {"role": "assistant", "content": "17 × 23 = 391."}]
# Qwen3 only: parallel calls in one turn, text beside a call, reasoning on the call turn
PARALLEL = [
    {"role": "user", "content": "Weather in Oslo and Rome today?"},
    {"role": "assistant", "content": "Let me look both up.",
     "tool_calls": [call("get_weather", city="Oslo"), call("get_weather", city="Rome")]},
    {"role": "tool", "content": '{"temp_c": 4}', "name": "get_weather"},
    {"role": "tool", "content": '{"temp_c": 19}', "name": "get_weather"},
    {"role": "assistant", "content": "Oslo 4°C, Rome 19°C."}]
THINK_CALL = [
    {"role": "user", "content": "Is it warm in Lima?"},
    {"role": "assistant", "content": "", "reasoning_content": "I need the weather for Lima.",
     "tool_calls": [call("get_weather", city="Lima")]},
    {"role": "tool", "content": '{"temp_c": 24}', "name": "get_weather"},
    {"role": "assistant", "content": "Yes, 24°C.", "reasoning_content": "24 is warm."}]


@pytest.fixture(scope="module")
def toks() -> dict:
    out = {name: AutoTokenizer.from_pretrained(real_tokenizer_dir(name)) for name in ("qwen3", "llama3_1", "deepseek_v3")}
    out["smollm2_tools"] = smollm2_tokenizer("smollm2-tools")
    return out


def chat(tok, messages, tools, thinking="off", gen=False) -> list[int]:
    """The template's own tokens, called exactly as inference does."""
    return list(tok.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, tokenize=True,
                                        return_dict=False, **template_kwargs(tok, thinking)))


def runs(r: Rendered) -> list[tuple[int, int]]:
    out, start = [], None
    for i, lab in enumerate(r.labels + [IGNORE]):
        if lab != IGNORE and start is None:
            start = i
        elif lab == IGNORE and start is not None:
            out.append((start, i))
            start = None
    return out


def assert_tool_guarantee(tok, family, messages, tools, seqs: list[Rendered], thinking="off") -> None:
    eot = tok.convert_tokens_to_ids(EOT[family])
    for r in seqs:
        assert r.input_ids == chat(tok, messages[:r.n_messages], tools, thinking), "(b) sequence != template"
        spans = runs(r)
        assert len(spans) == len(r.trained_turns) >= 1
        for (s, e), k in zip(spans, r.trained_turns):
            assert messages[k]["role"] == "assistant"
            assert r.input_ids[:s] == chat(tok, messages[:k], tools, thinking, gen=True), "(a) != inference prompt"
            assert r.input_ids[e - 1] == eot, "(c) a trained turn ends with the end-of-turn token"
            text = tok.decode(r.input_ids[s:e])
            for c in messages[k].get("tool_calls") or []:  # the call itself is what is trained
                assert c["function"]["name"] in text
                assert all(json.dumps(v, ensure_ascii=False) in text for v in c["function"]["arguments"].values())
        assert all(lab == IGNORE for lab in r.labels[spans[-1][1]:])
        trained = tok.decode([t for t, lab in zip(r.input_ids, r.labels) if lab != IGNORE])
        full = tok.decode(r.input_ids)
        for m in messages[:r.n_messages]:  # (d) tool results are prompt, never trained (Llama-3.1 JSON-quotes them)
            if m["role"] == "tool":
                assert all(key in full and key not in trained for key in json.loads(m["content"]))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tools", [TOOLS, None], ids=["declared", "undeclared"])
def test_guarantee_on_tool_round_trips(toks, family, tools):
    tok = toks[family]
    seqs = render_conversation(ROUND_TRIP, tok, tools=tools)
    assert_tool_guarantee(tok, family, ROUND_TRIP, tools, seqs)
    # every assistant turn is trained once: both calls and both answers
    assert sorted(k for r in seqs for k in r.trained_turns) == [2, 4, 6, 8]
    if tools:
        assert "get_weather" in tok.decode(seqs[0].input_ids[:runs(seqs[0])[0][0]])  # declared in the prompt


@pytest.mark.parametrize("family", ["qwen3", "smollm2_tools"])
def test_parallel_calls_and_text_beside_a_call(toks, family):
    tok = toks[family]
    seqs = render_conversation(PARALLEL, tok, tools=TOOLS)
    assert_tool_guarantee(tok, family, PARALLEL, TOOLS, seqs)
    first = tok.decode([t for t, lab in zip(seqs[0].input_ids, seqs[0].labels) if lab != IGNORE])
    assert first.startswith("Let me look both up.\n<tool_call>") and first.count("<tool_call>") == 2


def test_qwen3_thinking_on_a_call_turn(toks):
    tok = toks["qwen3"]
    keep = render_conversation(THINK_CALL, tok, tools=TOOLS, thinking="keep")
    assert_tool_guarantee(tok, "qwen3", THINK_CALL, TOOLS, keep, thinking="keep")
    call_span = tok.decode([t for t, lab in zip(keep[0].input_ids, keep[0].labels) if lab != IGNORE])
    assert call_span.startswith("<think>\nI need the weather for Lima.\n</think>\n\n<tool_call>")


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_equals_reference_path_on_tool_conversations(toks, family, monkeypatch):
    from chattune.data import render

    tok = toks[family]
    convs = [ROUND_TRIP, ROUND_TRIP[:5], ROUND_TRIP] + ([PARALLEL] if family != "llama3_1" else [])
    tools = [TOOLS, TOOLS, [CALC, WEATHER], TOOLS][:len(convs)]
    reference = render_batch(convs, tok, tools=tools, fast=False)
    with monkeypatch.context() as m:
        m.setattr(render, "assemble_exact", lambda *a, **k: pytest.fail("fast path fell back"))
        fast = render_batch(convs, tok, tools=tools)
    assert [r.sequences for r in fast] == [r.sequences for r in reference]
    # each row is rendered with its own tools: the declaration order shows in the prompt
    assert fast[0].sequences[0].input_ids != fast[2].sequences[0].input_ids
    assert fast[0].sequences == render_conversation(ROUND_TRIP, tok, tools=TOOLS)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_ids_with_tools_is_the_training_prefix(toks, family):
    tok = toks[family]
    seqs = render_conversation(ROUND_TRIP, tok, tools=TOOLS)
    for k in (2, 4):  # the call turn (after a user message) and the answer (after a tool result)
        prompt = prompt_ids(tok, ROUND_TRIP[:k], tools=TOOLS)
        assert prompt == chat(tok, ROUND_TRIP[:k], TOOLS, gen=True)
        seq = next(r for r in seqs if k in r.trained_turns)
        assert seq.input_ids[:len(prompt)] == prompt
    # an OpenAI client sends arguments as JSON text, with ids: the same prompt (no double-encoded JSON)
    openai = [dict(m) for m in ROUND_TRIP[:4]]
    openai[2] = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "date": "2024-06-02"}'}}]}
    openai[3] = {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "sunny"}'}
    assert tok.decode(prompt_ids(tok, openai, tools=TOOLS)) == tok.decode(prompt_ids(tok, ROUND_TRIP[:4], tools=TOOLS))


def test_templates_that_would_drop_tools_are_refused_by_name(toks):
    ds = toks["deepseek_v3"]
    # DeepSeek-V3's template ignores `tools` and renders calls only when content is None, a key transformers drops
    with pytest.raises(TemplateError, match=r"chat template of '.*deepseek_v3' ignores `tools`"):
        render_conversation(ROUND_TRIP[:5], ds, tools=TOOLS)
    with pytest.raises(TemplateError, match=r"chat template of '.*deepseek_v3' ignores `tools`"):
        prompt_ids(ds, ROUND_TRIP[:2], tools=TOOLS)
    with pytest.raises(TemplateError, match=r"'.*deepseek_v3' does not render assistant tool_calls"):
        render_conversation(ROUND_TRIP[:5], ds)
    assert ds.apply_chat_template(ROUND_TRIP[:2], tools=TOOLS, tokenize=False) == \
        ds.apply_chat_template(ROUND_TRIP[:2], tokenize=False)  # what the refusal protects from
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert render_conversation(plain, ds)  # conversations without tools are unaffected
    # Llama-3.1 writes only the call of an assistant message that also has text: refused, not trained without it
    with pytest.raises(TemplateError, match=r"'.*llama3_1' drops the text of an assistant message that also calls"):
        render_conversation(PARALLEL[:1] + [{**PARALLEL[1], "tool_calls": PARALLEL[1]["tool_calls"][:1]}],
                            toks["llama3_1"], tools=TOOLS)
    # Llama-3.1 takes one call per turn: its own raise_exception is that row's error, named
    two = [PARALLEL[0], {**PARALLEL[1], "content": ""}] + PARALLEL[2:]
    assert "single tool-calls" in render_batch([two], toks["llama3_1"], tools=[TOOLS])[0].error
    # in a batch the refusal is that row's error; the other rows render
    res = render_batch([ROUND_TRIP[:5], plain], ds, tools=[TOOLS, None])
    assert "ignores `tools`" in res[0].error and res[1].sequences


def test_a_template_that_ignores_tools_is_detected_by_rendering(toks):
    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir("qwen3"))
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(TemplateError, match="ignores `tools`"):
        prompt_ids(tok, ROUND_TRIP[:2], tools=TOOLS)
    with pytest.raises(TemplateError, match="does not render assistant tool_calls"):
        render_conversation(ROUND_TRIP[:5], tok)


THINK = [{"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."}]
PLAIN = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]


def test_mixed_thinking_renders_each_row_in_its_own_form(toks):
    tok = toks["qwen3"]
    mixed = render_batch([THINK, PLAIN, THINK_CALL], tok, thinking="mixed", tools=[None, None, TOOLS])
    assert mixed[0].sequences == render_conversation(THINK, tok, thinking="keep")
    assert mixed[1].sequences == render_conversation(PLAIN, tok, thinking="off")
    assert mixed[2].sequences == render_conversation(THINK_CALL, tok, thinking="keep", tools=TOOLS)
    # the row without reasoning: the empty think block is prompt (as enable_thinking=False renders), not trained
    r = mixed[1].sequences[0]
    s, _ = runs(r)[0]
    assert tok.decode(r.input_ids[:s]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tok.decode(r.input_ids[s:]) == "Paris.<|im_end|>\n"
    # the row with reasoning: the model writes its think block itself
    r = mixed[0].sequences[0]
    s, _ = runs(r)[0]
    assert tok.decode(r.input_ids[s:]).startswith("<think>\nTwo plus two is four.\n</think>")
    # inference after a mixed run: thinking on by default, as Qwen3 itself
    assert inference_thinking("mixed") == "keep" and inference_thinking("off") == "off"
    assert template_kwargs(tok, "mixed") == template_kwargs(tok, "keep") == {"enable_thinking": True}
    assert prompt_ids(tok, PLAIN[:1], thinking="mixed") == prompt_ids(tok, PLAIN[:1], thinking="keep")

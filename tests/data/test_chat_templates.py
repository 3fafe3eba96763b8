"""The chat templates chattune ships (`model.chat_template: smollm2-tools`): SmolLM2's ChatML, unchanged where
it has no tools, plus the Hermes tool format exactly as Qwen's templates write it, read back by chattune's probes,
its hermes parser and vLLM's own ``hermes`` tool parser. The loss-mask guarantee on its tool conversations is
in test_tools_render.py (family ``smollm2_tools``)."""
from __future__ import annotations

import json
import subprocess

import pytest
from tests.conftest import real_tokenizer_dir, smollm2_tokenizer
from transformers import AutoTokenizer

from chattune.data.chat_templates import SHIPPED, read_template
from chattune.data.template_policy import ToolSupport, tool_support
from chattune.errors import TemplateError

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city on a date.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "date": {"type": "string"}},
                          "required": ["city", "date"]}}}
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "大连市", "date": "03-07"}}}]}
PLAIN = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "system", "content": "later system"}, {"role": "user", "content": "c"}],
]


@pytest.fixture(scope="module")
def toks() -> tuple:
    return smollm2_tokenizer(), smollm2_tokenizer("smollm2-tools")


def text(tok, messages, gen: bool, tools=None) -> str:
    return tok.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, tokenize=False)


@pytest.mark.parametrize("gen", [True, False])
def test_without_tools_it_renders_exactly_smollm2s_own_template(toks, gen):
    own, shipped = toks
    for conv in PLAIN:
        assert text(shipped, conv, gen) == text(own, conv, gen)
    # SmolLM2's default system prompt when the conversation has none, with tools too
    assert text(shipped, PLAIN[0], gen, tools=[WEATHER]).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\n\n# Tools\n")


def test_tools_render_in_the_form_chattune_probes_and_what_smollm2s_own_template_drops(toks):
    own, shipped = toks
    assert tool_support(shipped, {}) == ToolSupport(template=shipped.name_or_path, declares=True, args_as_text=False,
                                                    content_with_calls=True, results=True)
    assert not tool_support(own, {}).declares and tool_support(own, {}).args_as_text is None


def test_tool_turns_are_written_as_qwen_writes_them(toks):
    """Qwen3's template writes the same Hermes block, calls and results (given a system message, its only default
    differs): the texts are equal character for character."""
    qwen3 = AutoTokenizer.from_pretrained(real_tokenizer_dir("qwen3"))
    conv = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "大连市3月7号的天气"}, CALL,
            {"role": "tool", "content": '{"weather": "晴"}', "name": "get_weather"},
            {"role": "tool", "content": '{"weather": "雨"}', "name": "get_weather"}]
    for k in (2, 4, 5):
        assert text(toks[1], conv[:k], True, tools=[WEATHER]) == text(qwen3, conv[:k], True, tools=[WEATHER])
    full = text(toks[1], conv[:3], False, tools=[WEATHER])
    assert full.endswith('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
                         '{"city": "大连市", "date": "03-07"}}\n</tool_call><|im_end|>\n')
    assert ('<|im_start|>user\n<tool_response>\n{"weather": "晴"}\n</tool_response>\n<tool_response>\n'
            '{"weather": "雨"}\n</tool_response><|im_end|>\n') in text(toks[1], conv, False, tools=[WEATHER])


def answer_text(tok, conv) -> str:
    """What a model trained on the template writes for the last turn: the text after the generation prompt, its
    end-of-turn token dropped as decoding does."""
    prompt, full = text(tok, conv[:-1], True, tools=[WEATHER]), text(tok, conv, False, tools=[WEATHER])
    return full[len(prompt):].removesuffix("<|im_end|>\n")


def test_chattunes_hermes_parser_reads_its_calls(toks):
    from chattune.infer.tool_calls import parse_tool_calls, tool_call_format

    fmt = tool_call_format(toks[1])
    assert fmt.name == "hermes"
    parsed = parse_tool_calls(answer_text(toks[1], [{"role": "user", "content": "大连市3月7号的天气"}, CALL]), fmt)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", {"city": "大连市", "date": "03-07"})]
    assert parsed.content == "" and not parsed.malformed


# vLLM's own parser, run in vLLM's venv (`--tool-call-parser hermes` on a served run)
VLLM_PARSE = """
import json, sys
from transformers import AutoTokenizer
from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
r = Hermes2ProToolParser(AutoTokenizer.from_pretrained(sys.argv[1])).extract_tool_calls(sys.argv[2], None)
print(json.dumps({"called": r.tools_called, "content": r.content,
                  "calls": [[c.function.name, json.loads(c.function.arguments)] for c in r.tool_calls]}))
"""


def test_vllms_hermes_tool_parser_reads_its_calls(toks, tmp_path):
    from chattune.errors import ChattuneError
    from chattune.export.vllm_launch import vllm_env, vllm_python

    try:
        py = vllm_python()
    except ChattuneError as e:
        pytest.fail(str(e), pytrace=False)
    toks[1].save_pretrained(tmp_path / "tok")
    said = "Let me check.\n" + answer_text(toks[1], [{"role": "user", "content": "大连市3月7号的天气"}, CALL])
    out = subprocess.run([str(py), "-c", VLLM_PARSE, str(tmp_path / "tok"), said], capture_output=True, text=True,
                         env=vllm_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"called": True, "content": "Let me check.\n",
                   "calls": [["get_weather", {"city": "大连市", "date": "03-07"}]]}


def test_model_chat_template_takes_a_shipped_name_or_a_path(tmp_path):
    from chattune.config import ModelConfig

    assert all(name in ModelConfig.model_fields["chat_template"].description for name in SHIPPED)
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages }}", encoding="utf-8")
    assert read_template(str(f)) == "{{ messages }}"
    with pytest.raises(TemplateError, match=r"cannot read chat template file .*nope\.jinja.*smollm2-tools"):
        read_template(str(tmp_path / "nope.jinja"))

"""Ollama TEMPLATE derived from the run's chat template, proved with Go's text/template on real tokenizers."""
from __future__ import annotations

import pytest

from chattune.errors import TemplateError
from chattune.export.ollama import derive_parts, go_template, modelfile
from chattune.export.stage import RunFacts
from chattune.export.verify_llamacpp import prompt_prefixes
from chattune.export.verify_ollama import ollama_template_parity, render_go
from tests.conftest import real_tokenizer_dir
from tests.export.conftest import HELD_OUT, TRAIN


def _facts(tok, thinking: str, system: str | None = None) -> RunFacts:
    from chattune.data.render import end_of_turn_ids, template_kwargs

    eos = end_of_turn_ids(tok)
    return RunFacts(run_dir=None, is_adapter=False, method="full", base="b", base_source="b", architecture="x",
                    thinking=thinking, template=tok.chat_template, template_kwargs=template_kwargs(tok, thinking),
                    eos_ids=tuple(eos), eos_tokens=tuple(tok.convert_ids_to_tokens(eos)), pad_id=tok.pad_token_id,
                    pad_token=tok.pad_token, max_length=512, system=system)


PROMPTS = prompt_prefixes([c["messages"] for c in TRAIN + HELD_OUT])


@pytest.mark.parametrize("name,thinking", [("qwen3", "off"), ("qwen3", "keep"), ("llama3_1", "off"),
                                           ("gemma3", "off"), ("deepseek_v3", "off")])
def test_go_rendered_template_equals_apply_chat_template(name, thinking):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir(name))
    facts = _facts(tok, thinking)
    tpl = go_template(derive_parts(tok, facts))
    par = ollama_template_parity(tpl, tok, facts, PROMPTS)
    assert par.total == len(PROMPTS) == 11 and par.ok, par.first_mismatch
    if name == "qwen3":  # the thinking policy as trained is in the generation prompt
        gen = render_go(tpl, [[{"role": "user", "content": "hi"}]])[0]
        assert gen.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") == (thinking == "off")


def test_a_wrong_template_is_caught_by_go():
    """The check is not a tautology: a TEMPLATE that drops the system prompt fails on the system prompts."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir("qwen3"))
    facts = _facts(tok, "off")
    tpl = go_template(derive_parts(tok, facts)).replace("{{ .Content }}", "", 1)
    par = ollama_template_parity(tpl, tok, facts, PROMPTS)
    assert not par.ok and par.matched == 9 and "Be brief" in par.first_mismatch


def test_modelfile_has_stops_system_and_context():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir("gemma3"))
    facts = _facts(tok, "off", system="You are terse.")
    text = modelfile("model-q8_0.gguf", go_template(derive_parts(tok, facts)), facts, num_ctx=512)
    lines = text.splitlines()
    assert lines[0] == "FROM ./model-q8_0.gguf" and lines[1].startswith('TEMPLATE """')
    assert 'SYSTEM """You are terse."""' in lines
    assert [ln for ln in lines if ln.startswith("PARAMETER stop")] == ['PARAMETER stop "<end_of_turn>"']
    assert facts.eos_tokens == ("<end_of_turn>",)
    assert lines[-1] == "PARAMETER num_ctx 512"


def test_a_template_that_is_not_per_message_is_refused():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir("qwen3"))
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}<|im_end|>")
    with pytest.raises(TemplateError, match="Ollama TEMPLATE"):
        derive_parts(tok, _facts(tok, "off"))

"""The loss-mask guarantee, asserted literally against each real tokenizer's own apply_chat_template.

For every sequence: (a) the tokens before each trained turn are the inference prompt for that turn,
(b) the whole sequence is the template's rendering of the messages it holds, (c) each trained turn ends
with the template's end-of-turn token and nothing after it is trained.
"""
from __future__ import annotations

import random

import pytest
from tests.conftest import real_tokenizer_dir, smollm2_gguf_path
from transformers import AutoTokenizer

from chattune.data.render import (
    IGNORE,
    Rendered,
    apply_template_override,
    end_of_turn_ids,
    prompt_ids,
    render_batch,
    render_conversation,
    template_kwargs,
)
from chattune.errors import TemplateError

FAMILIES = ("qwen3", "llama3_1", "gemma3", "deepseek_v3", "llama3", "smollm2")
EOT = {"qwen3": "<|im_end|>", "llama3_1": "<|eot_id|>", "llama3": "<|eot_id|>", "gemma3": "<end_of_turn>",
       "deepseek_v3": "<｜end▁of▁sentence｜>", "smollm2": "<|im_end|>"}


@pytest.fixture(scope="session")
def toks() -> dict:
    out = {name: AutoTokenizer.from_pretrained(real_tokenizer_dir(name)) for name in FAMILIES[:5]}
    p = smollm2_gguf_path()
    out["smollm2"] = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    return out


SINGLE = [{"role": "user", "content": "北京明天天气怎么样？"}, {"role": "assistant", "content": "晴，25°C。"}]
SYSTEM = [{"role": "system", "content": "You are terse."}, *SINGLE]
MULTI = [{"role": "system", "content": "Answer in JSON."},
         {"role": "user", "content": "城市：上海，日期：5月1日"},
         {"role": "assistant", "content": '{"city": "上海", "date": "05-01"}'},
         {"role": "user", "content": "Now Paris, June 2."},
         {"role": "assistant", "content": '{"city": "Paris", "date": "06-02"}'},
         {"role": "user", "content": "And Tokyo, March 3?"},
         {"role": "assistant", "content": '{"city": "Tokyo", "date": "03-03"}'}]
THINK = [{"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."},
         {"role": "user", "content": "3+3?"},
         {"role": "assistant", "content": "6", "reasoning_content": "Three plus three is six."}]


def chat(tok, messages, thinking="off", gen=False) -> list[int]:
    """The template's own tokens, called exactly as inference does."""
    return list(tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True, return_dict=False,
                                        **template_kwargs(tok, thinking)))


def trained_runs(r: Rendered) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, lab in enumerate(r.labels + [IGNORE]):
        if lab != IGNORE and start is None:
            start = i
        elif lab == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


def assert_guarantee(tok, messages, seqs: list[Rendered], thinking="off", family=None) -> None:
    eot = tok.convert_tokens_to_ids(EOT[family]) if family else end_of_turn_ids(tok)[0]
    for r in seqs:
        assert len(r.input_ids) == len(r.labels)
        held = messages[:r.n_messages]
        assert r.input_ids == chat(tok, held, thinking), "(b) sequence != apply_chat_template(messages)"
        runs = trained_runs(r)
        assert len(runs) == len(r.trained_turns) >= 1
        for (s, e), k in zip(runs, r.trained_turns):
            assert messages[k]["role"] == "assistant"
            assert r.input_ids[:s] == chat(tok, messages[:k], thinking, gen=True), "(a) prefix != inference prompt"
            assert r.labels[s:e] == r.input_ids[s:e]
            assert r.input_ids[e - 1] == eot, "(c) trained span must end with the end-of-turn token"
            assert messages[k]["content"].strip() in tok.decode(r.input_ids[s:e])
        # (c) nothing after the last trained end-of-turn token is trained
        assert all(x == IGNORE for x in r.labels[runs[-1][1]:])


@pytest.mark.parametrize("family", FAMILIES)
def test_end_of_turn_detected_from_template(toks, family):
    ids = end_of_turn_ids(toks[family])
    assert toks[family].convert_ids_to_tokens(ids[0]) == EOT[family]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("conv", [SINGLE, SYSTEM, MULTI], ids=["single", "system", "multi"])
def test_guarantee_assistant_loss(toks, family, conv):
    tok = toks[family]
    seqs = render_conversation(conv, tok, loss="assistant")
    assert_guarantee(tok, conv, seqs, family=family)
    trained = sorted(k for r in seqs for k in r.trained_turns)
    assert trained == [k for k, m in enumerate(conv) if m["role"] == "assistant"]  # every turn, once


@pytest.mark.parametrize("family", ["llama3_1", "gemma3", "deepseek_v3", "llama3", "smollm2"])
def test_prefix_consistent_templates_give_one_sequence(toks, family):
    seqs = render_conversation(MULTI, toks[family])
    assert len(seqs) == 1 and seqs[0].trained_turns == (2, 4, 6) and seqs[0].n_messages == len(MULTI)


def test_qwen3_rewrites_earlier_turns_split_and_consistent(toks):
    tok = toks["qwen3"]
    # Qwen3 gives only the final assistant turn an (empty) think block: the conversation is not a
    # prefix of itself, so training turn 1 inside the full sequence would teach tokens inference never shows.
    full = tok.apply_chat_template(MULTI, tokenize=False, enable_thinking=False)
    first = tok.apply_chat_template(MULTI[:3], tokenize=False, enable_thinking=False)
    assert not full.startswith(first)
    split = render_conversation(MULTI, tok, multi_turn="split")
    assert [r.trained_turns for r in split] == [(2,), (4,), (6,)]
    assert [r.n_messages for r in split] == [3, 5, 7]
    assert_guarantee(tok, MULTI, split, family="qwen3")
    cons = render_conversation(MULTI, tok, multi_turn="consistent")
    assert len(cons) == 1 and cons[0].trained_turns == (6,)
    assert_guarantee(tok, MULTI, cons, family="qwen3")
    # thinking off: the empty think block belongs to the inference prompt, so it is not trained
    span = [t for t, lab in zip(split[0].input_ids, split[0].labels) if lab != IGNORE]
    assert "<think>" not in tok.decode(span) and "<think>\n\n</think>" in tok.decode(prompt_ids(tok, MULTI[:2]))


def test_qwen3_thinking_keep_trains_reasoning(toks):
    tok = toks["qwen3"]
    seqs = render_conversation(THINK, tok, thinking="keep")
    assert [r.trained_turns for r in seqs] == [(1,), (3,)]  # earlier reasoning is dropped by the template
    assert_guarantee(tok, THINK, seqs, thinking="keep", family="qwen3")
    for r, why in zip(seqs, ["Two plus two is four.", "Three plus three is six."]):
        span = tok.decode([t for t, lab in zip(r.input_ids, r.labels) if lab != IGNORE])
        assert span.startswith("<think>\n" + why) and span.endswith("</think>\n\n" + THINK[r.trained_turns[0]]["content"]
                                                                     + "<|im_end|>")
    # the prompt is the enable_thinking=True one: the model must open <think> itself
    assert tok.decode(prompt_ids(tok, THINK[:1], thinking="keep")).endswith("<|im_start|>assistant\n")


def test_qwen3_thinking_off_ignores_reasoning(toks):
    tok = toks["qwen3"]
    seqs = render_conversation(THINK, tok, thinking="off")
    plain = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in THINK]
    assert_guarantee(tok, plain, seqs, family="qwen3")
    assert all("plus" not in tok.decode(r.input_ids) for r in seqs)


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_last_and_all(toks, family):
    tok = toks[family]
    last = render_conversation(MULTI, tok, loss="last")
    assert len(last) == 1 and last[0].trained_turns == (6,)
    assert_guarantee(tok, MULTI, last, family=family)
    every = render_conversation(MULTI, tok, loss="all")
    assert len(every) == 1 and every[0].labels == every[0].input_ids == chat(tok, MULTI)


def test_deepseek_pad_equals_eos_masked_by_position(toks):
    tok = toks["deepseek_v3"]
    assert tok.pad_token_id == tok.eos_token_id  # the trap: masking by id would drop every turn end
    r = render_conversation(MULTI, tok, loss="last")[0]
    eos = tok.eos_token_id
    at = [i for i, t in enumerate(r.input_ids) if t == eos]
    assert len(at) == 3 and at[-1] == len(r.input_ids) - 1
    assert [r.labels[i] for i in at] == [IGNORE, IGNORE, eos]  # same id, trained only where its turn is


def test_gemma_folds_system_into_first_user_turn(toks):
    tok = toks["gemma3"]
    r = render_conversation(SYSTEM, tok)[0]
    text = tok.decode(r.input_ids)
    assert "You are terse." in text and "<start_of_turn>system" not in text
    s, _ = trained_runs(r)[0]
    assert "You are terse." in tok.decode(r.input_ids[:s])  # system text is prompt, never trained


@pytest.mark.parametrize("family", ["qwen3", "llama3_1"])
def test_truncation_is_flagged(toks, family):
    tok = toks[family]
    full = render_conversation(MULTI, tok, loss="last")[0]
    n = len(full.input_ids)
    cut = render_conversation(MULTI, tok, loss="last", max_length=n - 3)[0]
    assert cut.truncated and cut.input_ids == full.input_ids[:n - 3] and cut.labels == full.labels[:n - 3]
    assert any(lab != IGNORE for lab in cut.labels)
    gone = render_conversation(MULTI, tok, loss="last", max_length=10)[0]
    assert gone.truncated and len(gone.input_ids) == 10 and all(lab == IGNORE for lab in gone.labels)
    fits = render_conversation(MULTI, tok, loss="last", max_length=n)[0]
    assert not fits.truncated and fits.input_ids == full.input_ids


def test_batch_equals_one_by_one_and_isolates_errors(toks):
    tok = toks["gemma3"]  # Gemma's template raises on roles that do not alternate
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]
    no_asst = [{"role": "user", "content": "only a question"}]
    res = render_batch([SINGLE, bad, MULTI, no_asst, []], tok)
    assert res[0].sequences == render_conversation(SINGLE, tok)
    assert res[2].sequences == render_conversation(MULTI, tok)
    assert res[1].error and "alternate" in res[1].error and not res[1].sequences
    assert "no assistant" in res[3].error and "empty" in res[4].error
    with pytest.raises(TemplateError, match="no assistant"):
        render_conversation(no_asst, tok)


def test_bad_options_are_rejected(toks):
    with pytest.raises(TemplateError, match="loss="):
        render_conversation(SINGLE, toks["qwen3"], loss="everything")
    with pytest.raises(TemplateError, match="thinking="):
        template_kwargs(toks["qwen3"], "on")


def test_template_kwargs_and_prompt_ids(toks):
    assert template_kwargs(toks["qwen3"], "off") == {"enable_thinking": False}
    assert template_kwargs(toks["qwen3"], "keep") == {"enable_thinking": True}
    assert template_kwargs(toks["llama3_1"], "keep") == {}
    for fam in FAMILIES:
        assert prompt_ids(toks[fam], SYSTEM[:2]) == chat(toks[fam], SYSTEM[:2], gen=True)


def test_template_override_and_missing_template(tmp_path):
    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir("llama3"))
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{{ m.content }}<|eot_id|>"
                   "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{% endif %}")
    apply_template_override(tok, str(tpl))
    assert tok.chat_template == tpl.read_text()
    seqs = render_conversation(MULTI, tok)
    assert_guarantee(tok, MULTI, seqs)
    assert seqs[0].trained_turns == (2, 4, 6)
    tok.chat_template = None
    with pytest.raises(TemplateError, match="has no chat template; pass model.chat_template"):
        apply_template_override(tok, None)
    with pytest.raises(TemplateError, match="has no chat template"):
        end_of_turn_ids(tok)
    with pytest.raises(TemplateError, match="cannot read chat template"):
        apply_template_override(tok, str(tmp_path / "missing.jinja"))


def _random_conversation(rng: random.Random) -> list[dict]:
    pieces = ["你好", " leading space", "trailing space ", "emoji 🎉", "line\nbreak", "数字 123", "JSON {\"a\": 1}",
              "tabs\tand  spaces", "ümlaut", "—dash", "<b>html</b>", "\u00a0nbsp", "end."]
    msgs = [{"role": "system", "content": rng.choice(pieces)}] if rng.random() < 0.4 else []
    for _ in range(rng.randint(1, 3)):
        msgs.append({"role": "user", "content": "".join(rng.choices(pieces, k=rng.randint(1, 3)))})
        msgs.append({"role": "assistant", "content": "".join(rng.choices(pieces, k=rng.randint(1, 3)))})
    return msgs


@pytest.mark.parametrize("family", FAMILIES)
def test_guarantee_on_random_conversations(toks, family):
    tok, rng = toks[family], random.Random(7)
    convs = [_random_conversation(rng) for _ in range(12)]
    for conv, res in zip(convs, render_batch(convs, tok)):
        assert res.error is None, res.error
        assert_guarantee(tok, conv, res.sequences, family=family)
        assert sorted(k for r in res.sequences for k in r.trained_turns) == \
            [k for k, m in enumerate(conv) if m["role"] == "assistant"]


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_proves_spans_and_equals_reference_path(toks, family, monkeypatch):
    """The fast path (tokenize only each sequence) must give the reference path's exact result, by itself."""
    from chattune.data import render

    tok, rng = toks[family], random.Random(11)
    # (a conversation holding a control token takes the sanitized exact path by design: see
    # test_control_tokens_in_content_are_text_in_training_and_inference)
    convs = [_random_conversation(rng) for _ in range(10)] + [SINGLE, SYSTEM, MULTI]
    for multi_turn in ("split", "consistent"):
        reference = render_batch(convs, tok, multi_turn=multi_turn, fast=False)
        with monkeypatch.context() as m:
            m.setattr(render, "assemble_exact", lambda *a, **k: pytest.fail("fast path fell back"))
            fast = render_batch(convs, tok, multi_turn=multi_turn)
        assert [r.sequences for r in fast] == [r.sequences for r in reference]
        assert [r.skipped_turns for r in fast] == [r.skipped_turns for r in reference]


# --- issue 14: control tokens in content, missing generation prompt, pinned date, whitespace at the header ---

@pytest.mark.parametrize("family", FAMILIES[:5])
def test_control_tokens_in_content_are_text_in_training_and_inference(toks, family):
    """A literal end-of-turn in an answer or a user message is text, never the token, identically in the
    trained sequence and in the inference prompt (transformers' sanitize_control_tokens on the real template)."""
    tok, eot = toks[family], EOT[family]
    eot_id = tok.convert_tokens_to_ids(eot)
    conv = [{"role": "user", "content": f"Say {eot} then stop.{eot}"},
            {"role": "assistant", "content": f"Here: {eot} and more."}]
    seq, = render_conversation(conv, tok)
    want = list(tok.apply_chat_template(conv, tokenize=True, return_dict=False, sanitize_control_tokens=True,
                                        **template_kwargs(tok, "off")))
    assert seq.input_ids == want
    trained = [t for t, lab in zip(seq.input_ids, seq.labels) if lab != IGNORE]
    assert trained.count(eot_id) == 1 and trained[-1] == eot_id  # only the template's own end-of-turn
    assert tok.decode(trained[:-1]).strip() == f"Here: {eot} and more."
    prompt = prompt_ids(tok, conv[:1])
    assert seq.input_ids[:len(prompt)] == prompt
    clean = prompt_ids(tok, [{"role": "user", "content": "Say X then stop.X"}])
    assert prompt.count(eot_id) == clean.count(eot_id)  # the injected ones stay text
    # the fast and the exact path agree; a clean conversation is unchanged by the policy
    assert render_batch([conv], tok, fast=False)[0].sequences[0].input_ids == want
    assert render_conversation(SINGLE, tok)[0].input_ids == chat(tok, SINGLE)


def test_data_check_lists_every_row_with_a_control_token(tmp_path, toks):
    import json

    from chattune.data.check import check_data

    rows = [{"prompt": "fine", "completion": "ok"},
            {"prompt": "inject <|im_start|>system", "completion": "ok"},
            {"prompt": "q", "completion": "a<|im_end|>b"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rep = check_data([str(path)], tokenizer=toks["qwen3"], sample=3)
    assert rep["control_tokens"] == [f"{path}, line/row 2: message 1 (user) holds '<|im_start|>'",
                                     f"{path}, line/row 3: message 2 (assistant) holds '<|im_end|>'"]
    assert rep["exit_code"] == 1 and rep["fidelity"]["failed"] == 0


NO_GEN_PROMPT = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}{% endif %}")


def test_template_without_generation_prompt_is_refused_with_the_fix(toks, tmp_path):
    from chattune.data.check import check_data

    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir("qwen3"))
    tok.chat_template = NO_GEN_PROMPT
    with pytest.raises(TemplateError, match=r"add_generation_prompt.*<\|im_start\|>assistant.*model\.chat_template"):
        end_of_turn_ids(tok)
    with pytest.raises(TemplateError, match="add_generation_prompt"):
        render_conversation(SINGLE, tok)
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "completion": "a"}\n', encoding="utf-8")
    with pytest.raises(TemplateError, match="add_generation_prompt"):
        check_data([str(path)], tokenizer=tok)


DATED = ('{%- if not date_string is defined %}{%- if strftime_now is defined %}'
         '{%- set date_string = strftime_now("%d %b %Y") %}{%- else %}{%- set date_string = "26 Jul 2024" %}'
         '{%- endif %}{%- endif %}<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}'
         "<|eot_id|>{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}"
         "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
         "{% endif %}")


def test_a_date_writing_template_renders_the_pinned_day(tmp_path):
    """Llama-3.2/3.3 style strftime_now: training and inference render the pinned day, not today; the data
    cache key changes with the day; data check says so."""
    import json

    from chattune.config import config_from_dict
    from chattune.data.check import check_data
    from chattune.data.dataset import cache_key

    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir("llama3"))
    tok.chat_template = DATED
    seq, = render_conversation(SINGLE, tok, date="2024-01-02")
    assert "Today Date: 02 Jan 2024" in tok.decode(seq.input_ids)
    prompt = prompt_ids(tok, SINGLE[:1], date="2024-01-02")
    assert seq.input_ids[:len(prompt)] == prompt
    assert prompt != prompt_ids(tok, SINGLE[:1], date="2024-01-03")
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "completion": "a"}\n', encoding="utf-8")
    cfgs = [config_from_dict({"model": {"name_or_path": "x"}, "data": {"train": str(path), "date": d}})
            for d in ("2024-01-02", "2024-01-03")]
    assert cache_key(cfgs[0], tok) != cache_key(cfgs[1], tok)
    rep = check_data([str(path)], tokenizer=tok, sample=1)
    assert any("writes today's date" in w for w in rep["warnings"]) and rep["tokens"]["date"]
    assert rep["fidelity"]["failed"] == 0
    json.dumps(rep)  # the report stays JSON (the pinned template is named, not embedded)


def test_answer_with_leading_whitespace_says_what_happened(toks):
    """ChatML (SmolLM2's real template, which keeps the content as is): "assistant\\n" + "\\n\\nanswer" encodes
    with one merged newline token across the header boundary, so the prompt is not a token prefix."""
    tok = toks["smollm2"]
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\n\nanswer"}]
    with pytest.raises(TemplateError, match=r"starts with whitespace.*joins with the end of the generation prompt"
                                            r".*remove the leading whitespace"):
        render_conversation(conv, tok)


def test_llama3_1_is_the_real_3_1_template_with_its_system_header_and_tool_turns(toks):
    """The llama3_1 asset is Meta's Llama-3.1 template (not Llama-3): a "Cutting Knowledge Date" system block
    on every conversation, <|eom_id|> and <|finetune_right_pad_id|> in the vocabulary; the guarantee holds with
    a system prompt and on a tool turn (ipython role)."""
    tok = toks["llama3_1"]
    assert tok.convert_tokens_to_ids("<|eom_id|>") == 128008
    assert tok.convert_tokens_to_ids("<|finetune_right_pad_id|>") == 128004
    for conv in (SINGLE, SYSTEM):
        seq, = render_conversation(conv, tok)
        text = tok.decode(seq.input_ids)
        assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024" in text
        assert_guarantee(tok, conv, [seq], family="llama3_1")
    s, _ = trained_runs(render_conversation(SYSTEM, tok)[0])[0]
    assert "You are terse." in tok.decode(render_conversation(SYSTEM, tok)[0].input_ids[:s])
    tool = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Checking."},
            {"role": "ipython", "content": '{"temp": 21}'}, {"role": "assistant", "content": "21 degrees."}]
    seqs = render_conversation(tool, tok)
    assert_guarantee(tok, tool, seqs, family="llama3_1")
    assert sorted(k for r in seqs for k in r.trained_turns) == [2, 4]
    assert "<|start_header_id|>ipython<|end_header_id|>" in tok.decode(seqs[-1].input_ids)

"""evaluate with the tool_calls metric: tools reach the prompt, answers are parsed with the template's format
(the real Qwen3 template), rows and aggregates score calls and the wrong decisions, bad references are named.

The answers come from a stand-in generator that renders prompts with the real renderer and returns fixed
texts per prompt: what the model says is not under test here (tests/test_demo.py trains SmolLM2 to call the
tool), the scoring of it is."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "大连市", "date": "03-07"}}\n</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "天气", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "date": {"type": "string"}},
    "required": ["city", "date"]}}}]


def _row(user: str, calls: list[dict] | None = None, answer: str = "") -> dict:
    turn: dict = {"role": "assistant", "content": answer}
    if calls:
        turn["tool_calls"] = [{"type": "function", "function": c} for c in calls]
    return {"messages": [{"role": "user", "content": user}, turn], "tools": TOOLS}


ROWS = [
    _row("大连市3月7号的天气", [{"name": "get_weather", "arguments": {"city": "大连市", "date": "03-07"}}]),
    _row("大连市3月8号的天气", [{"name": "get_weather", "arguments": {"city": "大连市", "date": "03-08"}}]),
    _row("北京3月7号的天气", [{"name": "get_weather", "arguments": {"city": "北京", "date": "03-07"}}]),
    _row("你好", answer="你好！"),
    _row("9月有多少天？", answer="9月有30天。"),
]
# What the stand-in model answers, per user message.
ANSWERS = {
    "大连市3月7号的天气": CALL,                                   # right
    "大连市3月8号的天气": CALL,                                   # right function, date wrong
    "北京3月7号的天气": "北京晴。",                                 # answered: missed the call
    "你好": CALL,                                                  # called: should have answered
    "9月有多少天？": '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>',  # malformed
}


@dataclass
class StandIn:
    """A Generator's eval surface over the real renderer, answering from `ANSWERS`."""

    renderer: object
    name: str = "stand-in"
    thinking: str = "off"

    def prompt_ids(self, messages, tools=None):
        return self.renderer.prompt_ids(messages, tools)

    def generate(self, conversations, *, max_new_tokens=128, tools=None):
        from chattune.infer.generate import Completion

        self.seen = getattr(self, "seen", []) + [self.renderer.tokenizer.decode(self.prompt_ids(c, t))
                                                 for c, t in zip(conversations, tools or [None] * len(conversations))]
        return [Completion(text=ANSWERS[c[-1]["content"]], prompt_tokens=0, completion_tokens=1, finish_reason="stop")
                for c in conversations]


@pytest.fixture
def stand_in(qwen3_tokenizer):
    from chattune.infer.prompt import PromptRenderer

    return StandIn(PromptRenderer(qwen3_tokenizer, "qwen3", (qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>"),)))


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_tool_calls_metric_through_evaluate(tmp_path, stand_in):
    from chattune.infer.evaluate import evaluate

    data = _write(tmp_path / "test.jsonl", ROWS)
    res = evaluate(None, data, metrics=["tool_calls", "exact"], generator=stand_in, out_dir=tmp_path / "out")
    assert all("get_weather" in p and "<tools>" in p for p in stand_in.seen)  # the tools reached every prompt
    m = res["metrics"]
    assert m["tool_calls"] == pytest.approx(1 / 5)       # row 0 (a right call)
    assert m["tool_names"] == pytest.approx(2 / 5)       # rows 0, 1
    assert m["tool_call_name_acc"] == pytest.approx(2 / 3)
    # missed: row 2; spurious: rows 3 and 4 (a malformed call where an answer was due)
    assert (m["tool_expected"], m["tool_missed"], m["tool_spurious"], m["tool_malformed"]) == (3, 1, 2, 1)
    assert m["tool_arg/get_weather.city"] == pytest.approx(2 / 3) and m["tool_arg/get_weather.date"] == pytest.approx(1 / 3)
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[1]["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "大连市", "date": "03-07"}}]
    assert rows[1]["reference_tool_calls"] == [{"name": "get_weather", "arguments": {"city": "大连市", "date": "03-08"}}]
    assert rows[3]["tool_calls"] and not rows[3]["reference_tool_calls"]
    assert rows[4]["tool_calls"] == [] and rows[4]["scores"]["tool_malformed"] == 1.0
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))["metrics"]
    assert saved == m


def test_a_reference_call_without_object_arguments_is_named(tmp_path, stand_in):
    from chattune.errors import DataError
    from chattune.infer.evaluate import evaluate

    bad = _row("大连市3月7号的天气", [{"name": "get_weather", "arguments": "[1, 2]"}])
    data = _write(tmp_path / "bad.jsonl", [ROWS[0], bad])
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: tool_calls needs reference calls .*JSON object"):
        evaluate(None, data, metrics=["tool_calls"], generator=stand_in)


def test_tool_calls_on_a_template_without_tool_support_is_refused(tmp_path, stand_in, qwen3_tokenizer):
    from copy import deepcopy

    from chattune.errors import TemplateError
    from chattune.infer.evaluate import evaluate
    from chattune.infer.prompt import PromptRenderer

    tok = deepcopy(qwen3_tokenizer)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    plain = StandIn(PromptRenderer(tok, "plain", stand_in.renderer.eos_token_ids))
    data = _write(tmp_path / "test.jsonl", [_row("你好", answer="你好！")])
    with pytest.raises(TemplateError, match="no tool support"):
        evaluate(None, data, metrics=["tool_calls"], generator=plain)


def test_reference_loss_of_a_tool_call_renders_the_tools(tiny_qwen3_dir):
    """The loss of a reference call is the training loss of that turn, tools rendered in the prompt."""
    import torch

    from chattune.data.render import render_conversation
    from chattune.infer.evaluate import reference_nll
    from chattune.infer.generate import Generator

    gen = Generator.from_path(tiny_qwen3_dir)
    conv = ROWS[0]["messages"]
    (nll, n), = reference_nll(gen, [conv], tools=[TOOLS])
    [seq] = render_conversation(conv, gen.tokenizer, loss="last", tools=TOOLS)
    assert "<tools>" in gen.tokenizer.decode(seq.input_ids) and "<tool_call>" in gen.tokenizer.decode(
        [t for t in seq.labels if t != -100])
    with torch.no_grad():
        ref = gen.model(input_ids=torch.tensor([seq.input_ids]), labels=torch.tensor([seq.labels])).loss
    assert n == sum(t != -100 for t in seq.labels)
    assert nll / n == pytest.approx(float(ref), rel=1e-4)


def test_compare_base_renders_the_base_with_the_runs_chat_template(tmp_path, tiny_qwen3_dir):
    """A run trained with model.chat_template: `eval --compare base` (and the UI's compare with base) load its
    base with the run's tokenizer and template. Here the base folder's own template is ChatML without tools, so a
    base rendered with it would refuse the tool rows (or, with other data, answer other prompts than the run)."""
    import shutil

    from transformers import AutoTokenizer

    from chattune.config import config_from_dict
    from chattune.data.chat_templates import read_template
    from chattune.infer.compare import compare
    from chattune.rundir.load import load_run, load_run_base
    from chattune.train.trainer import train

    base = tmp_path / "base"
    shutil.copytree(tiny_qwen3_dir, base)
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(base)
    data = _write(tmp_path / "test.jsonl", ROWS)
    train(config_from_dict({
        "model": {"name_or_path": str(base), "chat_template": "smollm2-tools"},  # ChatML + Hermes tools
        "data": {"train": str(data), "cache_dir": str(tmp_path / "cache")},
        "method": {"lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "train": {"max_steps": 1, "batch_size": 2, "report_to": ["none"]}, "output_dir": str(tmp_path / "run")}))
    run = tmp_path / "run"
    assert load_run_base(run).info.chat_template == read_template("smollm2-tools") != load_run(base).info.chat_template
    res = compare("base", run, data, metrics=["tool_calls"], max_new_tokens=4, batch_size=8)
    assert res["base"]["tool_expected"] == res["tuned"]["tool_expected"] == 3
    from chattune.ui.chat import Models

    assert Models().get(str(run), base=True).generator.tokenizer.chat_template == read_template("smollm2-tools")

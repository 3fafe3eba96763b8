"""Tool data through `data check` (problems named by file and line, the thinking split) and through the training
dataset build (per-row tools rendered, in the cache key; tool errors stop training)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chattune.cli import app
from chattune.config import config_from_dict
from chattune.data.check import check_data
from chattune.data.dataset import build_datasets, cache_key
from chattune.data.formats import read_conversations
from chattune.data.render import render_conversation
from chattune.errors import DataError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OPENAI, SHAREGPT = EXAMPLES / "tools_openai.jsonl", EXAMPLES / "tools_sharegpt.json"


@pytest.mark.parametrize(("path", "fmt", "rows", "calls"), [(OPENAI, "messages", 8, 10), (SHAREGPT, "sharegpt", 6, 7)])
def test_example_tool_files_check_clean_with_the_real_qwen3(qwen3_tokenizer, path, fmt, rows, calls):
    rep = check_data([str(path)], tokenizer=qwen3_tokenizer)
    assert rep["exit_code"] == 0, rep["warnings"] + rep["errors"]
    assert rep["files"][0]["format"] == fmt and rep["conversations"] == rows
    assert rep["tools"]["rows_with_tools"] == rows and rep["tools"]["calls"] == calls
    assert rep["tools"]["functions"] == ["calculate", "convert_currency", "get_weather"]
    assert rep["tools"]["problems"] == [] and rep["tokens"]["render_errors"] == 0
    assert rep["fidelity"] == {"checked": rows, "failed": 0, "examples": []}


def test_tool_problems_are_errors_with_file_and_line(tmp_path, qwen3_tokenizer):
    rows = [json.loads(line) for line in OPENAI.read_text(encoding="utf-8").splitlines()]
    rows[1]["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"expression": 245 * 0.18}'  # not JSON
    rows[3]["messages"][2]["tool_calls"][0]["function"]["name"] = "convert_money"                   # undeclared
    rows[5]["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"date": "2025-06-20"}'     # no city
    rows[6]["messages"][3]["tool_call_id"] = "call_9"                                                 # no such call
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    rep = check_data([str(bad)], tokenizer=qwen3_tokenizer)
    assert rep["exit_code"] == 2
    problems = rep["tools"]["problems"]
    assert f"error: {bad}, line/row 2: message 3: arguments of the call to 'calculate' are not valid JSON" in \
        "\n".join(problems)
    assert any(p.startswith(f"error: {bad}, line/row 4: message 3: calls 'convert_money', which the row's tools "
                            "do not declare") for p in problems)
    assert any(p.startswith(f"error: {bad}, line/row 6: message 3: call to 'get_weather' lacks required "
                            "argument(s) ['city']") for p in problems)
    assert any(p.startswith(f"error: {bad}, line/row 7: message 4: tool result (tool_call_id 'call_9') answers no "
                            "call") for p in problems)
    assert any(p.startswith(f"warning: {bad}, line/row 7: message 3: the call to 'get_weather' is never answered")
               for p in problems)
    assert rep["errors"][0].startswith("5 tool-call error(s) (listed under tool problems), e.g. ")
    # training refuses the same file before rendering anything
    with pytest.raises(DataError, match=r"5 tool-call error\(s\), e\.g\. .*bad\.jsonl, line/row 2: message 3: "
                                        r".*`chattune data check FILE` lists them all"):
        build_datasets(config_from_dict({"data": {"train": str(bad), "cache_dir": str(tmp_path / "c")}}),
                       qwen3_tokenizer)


def test_cli_check_prints_tools_and_the_thinking_split(tmp_path, qwen3_tokenizer_dir):
    think = tmp_path / "think.jsonl"
    rows = [{"messages": [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
            {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye!"}]}]
    think.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rep = check_data([str(think)], thinking="mixed")
    assert rep["thinking"] == {"policy": "mixed", "rows": {"keep": 1, "off": 2}, "inference_default": "keep"}
    res = CliRunner().invoke(app, ["data", "check", str(think), str(SHAREGPT), "--tokenizer", str(qwen3_tokenizer_dir),
                                   "--thinking", "mixed"], terminal_width=200)
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.replace("│", " ").split())  # the summary table wraps long cells
    assert "thinking: mixed 1 row(s) with thinking, 8 without; inference default: keep" in out
    assert "6 row(s) declare tools (calculate, convert_currency, get_weather); 7 call(s), 7 result(s)" in out


def test_training_renders_each_row_with_its_tools_and_keys_the_cache_on_them(tmp_path, qwen3_tokenizer):
    tok = qwen3_tokenizer
    train = tmp_path / "t.jsonl"
    shutil.copy(OPENAI, train)
    cfg = config_from_dict({"data": {"train": str(train), "cache_dir": str(tmp_path / "c")}})
    ds, _, rep = build_datasets(cfg, tok)
    want = [r for c in read_conversations(train) for r in render_conversation(c.messages, tok, tools=c.tools)]
    assert ds["input_ids"] == [r.input_ids for r in want] and ds["labels"] == [r.labels for r in want]
    assert rep["render"]["tool_rows"] == 8 and rep["render"]["thinking_rows"] == {"keep": 0, "off": 8}
    other = config_from_dict({"data": {"train": [{"path": str(train), "tools": [
        {"type": "function", "function": {"name": "f"}}]}], "cache_dir": str(tmp_path / "c")}})
    assert cache_key(other, tok) != rep["cache_key"]  # per-dataset tools are part of the key


def test_preview_shows_calls_trained_and_results_not(qwen3_tokenizer):
    from chattune.data.preview import preview

    (item,) = preview([str(OPENAI)], qwen3_tokenizer, n=1)
    assert item["error"] is None and [s["messages"] for s in item["sequences"]] == [3, 5]
    trained = ["".join(t for t, on in s["segments"] if on) for s in item["sequences"]]
    prompt = "".join(t for t, on in item["sequences"][1]["segments"] if not on)
    assert trained[0].startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon"')
    assert trained[1] == "Lisbon on 14 May 2025: sunny, 22 °C.<|im_end|>"
    assert '<tool_response>\n{"city": "Lisbon", "date": "2025-05-14", "temp_c": 22' in prompt


def test_a_template_that_cannot_render_tools_stops_training_and_fails_the_check(tmp_path):
    """Training would otherwise skip the tool rows one by one; it refuses, naming the template and a row."""
    from tests.conftest import real_tokenizer_dir
    from transformers import AutoTokenizer

    from chattune.errors import TemplateError

    tok = AutoTokenizer.from_pretrained(real_tokenizer_dir("deepseek_v3"))
    cfg = config_from_dict({"data": {"train": str(OPENAI), "cache_dir": str(tmp_path / "c")}})
    with pytest.raises(TemplateError, match=r"8 conversation\(s\) use tools the chat template cannot render, e\.g\. "
                                            r".*tools_openai\.jsonl, line/row 1: the chat template of '.*deepseek_v3' "
                                            r"ignores `tools`"):
        build_datasets(cfg, tok)
    rep = check_data([str(OPENAI)], tokenizer=tok, sample=2)
    assert rep["exit_code"] == 2 and "use tools the chat template cannot render (training refuses them)" in \
        rep["errors"][0]
    assert rep["fidelity"]["checked"] == 0  # nothing rendered, nothing verified

"""`data check` / `data preview`: report contents, exit codes, and a fidelity check that really catches bad masks."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chattune.cli import app
from chattune.data import check as check_mod
from chattune.data.check import check_data, verify_sequences
from chattune.data.preview import preview
from chattune.data.render import IGNORE, render_conversation

runner = CliRunner()


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


CLEAN = [{"instruction": f"问题{i}", "output": f"回答{i}。" * (1 + i % 3)} for i in range(12)]


def test_clean_file_with_tokenizer_exits_0(tmp_path, qwen3_tokenizer):
    rep = check_data([_jsonl(tmp_path / "c.jsonl", CLEAN)], tokenizer=qwen3_tokenizer, max_length=256)
    assert rep["exit_code"] == 0 and not rep["warnings"] and not rep["errors"]
    assert rep["files"][0]["format"] == "alpaca" and rep["conversations"] == 12
    tk = rep["tokens"]
    assert tk["sequences"] == 12 and tk["over_max_length"] == 0 and 0 < tk["trained_share"] < 1
    assert sum(b["count"] for b in tk["histogram"]) == 12
    assert rep["fidelity"] == {"checked": 12, "failed": 0, "examples": []}


def test_duplicates_empties_and_overlength_are_warnings(tmp_path, qwen3_tokenizer):
    rows = CLEAN + [CLEAN[0], {"instruction": "空", "output": ""}, {"instruction": "长" * 300, "output": "好"}]
    rep = check_data([_jsonl(tmp_path / "w.jsonl", rows)], tokenizer=qwen3_tokenizer, max_length=64)
    assert rep["exit_code"] == 1 and rep["duplicates_removed"] == 1
    assert rep["skipped_rows"] == {"empty_output": 1}
    assert rep["tokens"]["over_max_length"] == 1 and rep["tokens"]["would_drop"] == 1
    text = " ".join(rep["warnings"])
    assert "duplicate" in text and "empty_output 1" in text and "exceed max_length=64" in text


def test_data_only_report_and_unreadable_file(tmp_path):
    rep = check_data([_jsonl(tmp_path / "c.jsonl", CLEAN)])
    assert rep["exit_code"] == 0 and "tokens" not in rep and rep["chars"]["prompt"]["min"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{not json\n', encoding="utf-8")
    rep = check_data([str(bad)])
    assert rep["exit_code"] == 2 and "bad.jsonl" in rep["errors"][0] and "line 2" in rep["errors"][0]


def test_fidelity_check_catches_a_wrong_mask(tmp_path, qwen3_tokenizer, monkeypatch):
    tok = qwen3_tokenizer
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    good = render_conversation(msgs, tok)
    assert verify_sequences(msgs, good, tok) == []
    r = good[0]
    shifted = type(r)(r.input_ids, r.labels[1:] + [IGNORE], False, r.n_messages, r.trained_turns)  # off by one
    assert any("inference prompt" in p or "end-of-turn" in p for p in verify_sequences(msgs, [shifted], tok))
    with_nl = type(r)(r.input_ids, [IGNORE] * (len(r.input_ids) - 3) + r.input_ids[-3:],
                      False, r.n_messages, r.trained_turns)  # trains the "\n" after <|im_end|>
    assert any("end-of-turn" in p for p in verify_sequences(msgs, [with_nl], tok))
    other = type(r)(r.input_ids[:-1], r.labels[:-1], False, r.n_messages, r.trained_turns)
    assert "apply_chat_template" in verify_sequences(msgs, [other], tok)[0]

    # a broken renderer must turn `data check` red (exit 2)
    real = check_mod.render_batch

    def broken(*a, **k):
        out = real(*a, **k)
        for res in out:
            for s in res.sequences:
                s.labels[:] = [IGNORE] + s.labels[:-1]
        return out

    monkeypatch.setattr(check_mod, "render_batch", broken)
    rep = check_data([_jsonl(tmp_path / "c.jsonl", CLEAN)], tokenizer=tok, sample=5)
    assert rep["exit_code"] == 2 and rep["fidelity"]["failed"] == 5 and "fidelity" in rep["errors"][0]


def test_preview_segments(tmp_path, qwen3_tokenizer):
    items = preview([_jsonl(tmp_path / "c.jsonl", CLEAN)], qwen3_tokenizer, n=2)
    assert len(items) == 2
    seg = items[0]["sequences"][0]["segments"]
    assert [t for _, t in seg] == [False, True, False]
    assert seg[1][0] == "回答0。<|im_end|>" and seg[2][0] == "\n"
    assert seg[0][0].endswith("<think>\n\n</think>\n\n")  # thinking off: the empty think block is prompt


@pytest.mark.parametrize("args,code", [([], 0), (["--max-length", "16"], 1)])
def test_cli_check_exit_codes(tmp_path, qwen3_tokenizer_dir, args, code):
    f = _jsonl(tmp_path / "c.jsonl", CLEAN)
    res = runner.invoke(app, ["data", "check", f, "--tokenizer", str(qwen3_tokenizer_dir), *args])
    assert res.exit_code == code, res.output
    assert "fidelity" in res.output and "12/12" in res.output


def test_cli_check_errors_and_preview(tmp_path, qwen3_tokenizer_dir):
    res = runner.invoke(app, ["data", "check", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "missing.jsonl" in res.output
    f = _jsonl(tmp_path / "c.jsonl", CLEAN)
    res = runner.invoke(app, ["data", "preview", f, "--tokenizer", str(qwen3_tokenizer_dir), "-n", "1"])
    assert res.exit_code == 0, res.output
    assert "⟦回答0。<|im_end|>⟧" in res.output and "trained" in res.output
    res = runner.invoke(app, ["data", "preview", f])
    assert res.exit_code == 2 and "--tokenizer" in res.output

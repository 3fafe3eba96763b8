"""build_datasets: columns, masks equal to the template's own tokens, drop/truncation counts, eval split, cache."""
from __future__ import annotations

import json

import pytest

from chattune.config import config_from_dict
from chattune.data.dataset import build_datasets, cache_key, split_eval
from chattune.data.render import IGNORE, template_kwargs
from chattune.errors import DataError


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ROWS = [{"instruction": f"城市{i}号的天气？", "input": "", "output": f"第{i}号，晴。" + "很好。" * (i % 7)}
        for i in range(40)]


def _cfg(tmp_path, train, **data):
    return config_from_dict({"data": {"train": train, "cache_dir": str(tmp_path / "cache"), **data}})


def test_build_masks_match_template_and_cache(tmp_path, qwen3_tokenizer):
    tok = qwen3_tokenizer
    train = _write_jsonl(tmp_path / "a.jsonl", ROWS)
    cfg = _cfg(tmp_path, train, max_length=256)
    ds, ev, rep = build_datasets(cfg, tok)
    assert ev is None and ds.column_names == ["input_ids", "labels", "length", "where"] and len(ds) == 40
    assert rep["train"]["examples"] == 40 and rep["conversations"] == 40 and not rep["cache_hit"]
    assert rep["train"]["tokens"] == sum(ds["length"])
    kw = template_kwargs(tok, "off")
    for row, src in zip(ds, ROWS):
        msgs = [{"role": "user", "content": src["instruction"]}, {"role": "assistant", "content": src["output"]}]
        assert row["input_ids"] == tok.apply_chat_template(msgs, tokenize=True, return_dict=False, **kw)
        prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=True, return_dict=False, **kw)
        n = len(prompt)
        assert row["input_ids"][:n] == prompt and all(x == IGNORE for x in row["labels"][:n])
        assert row["labels"][n:-1] == row["input_ids"][n:-1] and row["labels"][-1] == IGNORE  # "\n" after <|im_end|>
        assert row["length"] == len(row["input_ids"])
    trained = sum(sum(1 for x in r if x != IGNORE) for r in ds["labels"])
    assert rep["train"]["trained_tokens"] == trained

    ds2, _, rep2 = build_datasets(cfg, tok)
    assert rep2["cache_hit"] and rep2["cache_key"] == rep["cache_key"] and ds2["input_ids"] == ds["input_ids"]
    # anything that can change a token changes the key
    assert cache_key(_cfg(tmp_path, train, max_length=128), tok) != rep["cache_key"]
    assert cache_key(_cfg(tmp_path, train, max_length=256, loss="all"), tok) != rep["cache_key"]
    _write_jsonl(tmp_path / "a.jsonl", ROWS[:-1])
    assert cache_key(cfg, tok) != rep["cache_key"]


def test_truncation_counted_and_fully_cut_examples_dropped(tmp_path, qwen3_tokenizer):
    rows = [{"instruction": "短", "output": "好"},
            {"instruction": "长" * 5, "output": "很长的回答" * 20},
            {"instruction": "很长的问题" * 40, "output": "答"}]
    ds, _, rep = build_datasets(_cfg(tmp_path, _write_jsonl(tmp_path / "t.jsonl", rows), max_length=40),
                                qwen3_tokenizer)
    st = rep["train"]
    assert st["conversations"] == 3 and st["examples"] == 2 and st["dropped"] == 1 and st["truncated"] == 1
    assert max(ds["length"]) == 40 and all(any(x != IGNORE for x in lab) for lab in ds["labels"])


def test_eval_ratio_split_is_seeded_and_disjoint(tmp_path, qwen3_tokenizer):
    train = _write_jsonl(tmp_path / "a.jsonl", ROWS)
    cfg = _cfg(tmp_path, train, eval_ratio=0.1)
    ds, ev, rep = build_datasets(cfg, qwen3_tokenizer)
    assert len(ev) == 4 and len(ds) == 36 and rep["eval"]["examples"] == 4
    assert not {tuple(x) for x in ev["input_ids"]} & {tuple(x) for x in ds["input_ids"]}
    a, b = split_eval(list(range(100)), 0.2, seed=3)
    assert (a, b) == split_eval(list(range(100)), 0.2, seed=3) and len(b) == 20 and sorted(a + b) == list(range(100))
    assert split_eval(list(range(100)), 0.2, seed=4)[1] != b


def test_eval_files_and_multi_turn_split(tmp_path, qwen3_tokenizer):
    conv = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    train = _write_jsonl(tmp_path / "m.jsonl", [conv])
    ev_file = _write_jsonl(tmp_path / "e.jsonl", ROWS[:3])
    ds, ev, rep = build_datasets(_cfg(tmp_path, train, eval=ev_file), qwen3_tokenizer)
    # Qwen3 rewrites the first assistant turn once a second follows: one sequence per turn
    assert len(ds) == 2 and rep["train"]["conversations"] == 1 and rep["train"]["examples"] == 2
    assert len(ev) == 3 and rep["eval_files"]["conversations"] == 3


def test_render_errors_counted_not_fatal_and_all_bad_is_an_error(tmp_path, qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    tok.chat_template = ("{% for m in messages %}{% if 'BAD' in m.content %}{{ raise_exception('no BAD rows') }}"
                         "{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    bad = {"instruction": "BAD question", "output": "z"}
    good = {"instruction": "q", "output": "a"}
    ds, _, rep = build_datasets(_cfg(tmp_path, _write_jsonl(tmp_path / "g.jsonl", [bad, good])), tok)
    assert len(ds) == 1 and rep["train"]["errors"] == 1
    assert "g.jsonl, line/row 1" in rep["train"]["error_examples"][0] and "no BAD rows" in rep["train"]["error_examples"][0]
    with pytest.raises(DataError, match="no trainable example"):
        build_datasets(_cfg(tmp_path, _write_jsonl(tmp_path / "b.jsonl", [bad])), tok)


def test_missing_train_or_file_is_a_clear_error(tmp_path, qwen3_tokenizer):
    with pytest.raises(DataError, match="no training data"):
        build_datasets(config_from_dict({}), qwen3_tokenizer)
    with pytest.raises(DataError, match="nope.jsonl.*not found"):
        build_datasets(_cfg(tmp_path, str(tmp_path / "nope.jsonl")), qwen3_tokenizer)

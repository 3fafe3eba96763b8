"""formats: shape detection, conversion of every shape, column maps, system precedence, errors, report."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from chattune.config import DataConfig, DataSource
from chattune.data.formats import FORMATS, detect_format, load_conversations, split_text
from chattune.data.readers import read_records
from chattune.errors import DataError
from chattune.fsutil import sha256_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _load(path, cfg: DataConfig | None = None, **source):
    convs, report = load_conversations([DataSource(path=str(path), **source)], cfg or DataConfig())
    return convs, report


def _msgs(convs):
    return [c.messages for c in convs]


@pytest.mark.parametrize("row,shape", [
    ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
    ({"question": "q", "answer": "a"}, "qa"),
    ({"query": "q", "response": "a"}, "qa"),
    ({"Prompt": "p", "Completion": "c"}, "prompt_completion"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}, "messages"),
    ({"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]}, "sharegpt"),
    ({"TEXT": "some document"}, "text"),
])
def test_detect_every_shape(row, shape):
    assert shape in FORMATS
    assert detect_format([(1, row), (2, row)], "f.jsonl") == shape


def test_alpaca_input_history_and_own_system(tmp_path):
    p = _jsonl(tmp_path / "a.jsonl", [
        {"instruction": "翻译", "input": "hello", "output": "你好", "system": "你是翻译", "history": [["q1", "a1"]]},
        {"instruction": "只有指令", "input": "", "output": "答"},
    ])
    convs, report = _load(p, DataConfig(system="cfg system"))
    assert _msgs(convs) == [
        [{"role": "system", "content": "你是翻译"}, {"role": "user", "content": "q1"},
         {"role": "assistant", "content": "a1"}, {"role": "user", "content": "翻译\nhello"},
         {"role": "assistant", "content": "你好"}],
        [{"role": "system", "content": "cfg system"}, {"role": "user", "content": "只有指令"},
         {"role": "assistant", "content": "答"}],
    ]
    assert (convs[0].source, convs[0].row, convs[1].row) == (p, 1, 2)
    assert report["files"][0]["format"] == "alpaca"


def test_system_precedence_row_then_source_then_config(tmp_path):
    p = _jsonl(tmp_path / "m.jsonl", [
        {"messages": [{"role": "system", "content": "row"}, {"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]},
    ])
    cfg = DataConfig(system="config")
    systems = [c.messages[0]["content"] for c in _load(p, cfg, system="source")[0]]
    assert systems == ["row", "source"]
    systems = [c.messages[0]["content"] for c in _load(p, cfg)[0]]
    assert systems == ["row", "config"]
    assert _load(p)[0][1].messages[0]["role"] == "user"  # no system anywhere: none added


def test_messages_multi_turn_reasoning_and_trailing_user(tmp_path):
    msgs = [{"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2", "reasoning_content": "one plus one"},
            {"role": "user", "content": "and 2+2?"}, {"role": "assistant", "content": "4"},
            {"role": "user", "content": "thanks"}]
    convs, _ = _load(_jsonl(tmp_path / "m.jsonl", [{"messages": msgs, "id": "x1"}]))
    assert convs[0].messages == msgs[:4]  # the unanswered last user turn is dropped
    assert convs[0].messages[1]["reasoning_content"] == "one plus one"
    assert convs[0].meta == {"id": "x1"}


def test_openai_text_content_parts_are_joined(tmp_path):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"}]
    convs, _ = _load(_jsonl(tmp_path / "p.jsonl", [{"messages": msgs}]))
    assert convs[0].messages[0] == {"role": "user", "content": "ab"}
    msgs[0]["content"] = [{"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(DataError, match=r"line 1, field 'messages': found list .* in messages\[0\]\.content; "
                                        r"expected text"):
        _load(_jsonl(tmp_path / "i.jsonl", [{"messages": msgs}]))


def test_sharegpt_roles(tmp_path):
    conv = [{"from": "system", "value": "sys"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
            {"from": "user", "value": "bye"}, {"from": "assistant", "value": "ciao"}]
    convs, report = _load(_jsonl(tmp_path / "s.jsonl", [{"conversations": conv}]))
    assert [m["role"] for m in convs[0].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert convs[0].messages[2]["content"] == "hello"
    assert report["files"][0]["format"] == "sharegpt"


def test_bad_roles_and_misplaced_system(tmp_path):
    p = _jsonl(tmp_path / "r.jsonl", [{"conversations": [{"from": "human", "value": "q"},
                                                         {"from": "narrator", "value": "x"}]}])
    with pytest.raises(DataError, match=r"line 1, field 'conversations': conversations\[1\]\.from is "
                                        r"'narrator'; expected one of"):
        _load(p)
    p = _jsonl(tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                    {"role": "system", "content": "s"},
                                                    {"role": "assistant", "content": "a"}]}])
    with pytest.raises(DataError, match=r"messages\[1\] is a system message; expected a system message only first"):
        _load(p)


def test_qa_and_prompt_completion_any_case(tmp_path):
    convs, _ = _load(_jsonl(tmp_path / "q.jsonl", [{"Query": "q", "Response": 42}]))
    assert convs[0].messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "42"}]
    convs, _ = _load(EXAMPLES / "train.xlsx")
    assert len(convs) == 50 and convs[0].messages[0]["content"].startswith("提取城市和日期")
    assert json.loads(convs[0].messages[1]["content"])["city"]


def test_column_map_with_chinese_headers(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("问题,答案,备注\n天空什么颜色？,蓝色,x\n", encoding="utf-8")
    convs, report = _load(p, columns={"instruction": "问题", "output": "答案"})
    assert convs[0].messages == [{"role": "user", "content": "天空什么颜色？"},
                                 {"role": "assistant", "content": "蓝色"}]
    assert convs[0].meta == {"备注": "x"} and report["files"][0]["format"] == "alpaca"
    with pytest.raises(DataError, match=r"d\.csv, row 1, field '回答': `columns:` maps 'output' to '回答', but "
                                        r"there is no such column; columns found: \['问题', '答案', '备注'\]"):
        _load(p, columns={"instruction": "问题", "output": "回答"})


def test_message_key_map(tmp_path):
    p = _jsonl(tmp_path / "k.jsonl", [{"dialog": [{"speaker": "user", "text": "q"},
                                                  {"speaker": "assistant", "text": "a"}]}])
    convs, _ = _load(p, columns={"messages": "dialog", "role": "speaker", "content": "text"})
    assert convs[0].messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_unknown_shape_lists_columns_and_shapes(tmp_path):
    p = _jsonl(tmp_path / "u.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError) as e:
        _load(p)
    msg = str(e.value)
    assert "u.jsonl, line 1" in msg and "columns found ['foo', 'bar']" in msg
    assert all(s in msg for s in ("alpaca", "qa", "prompt_completion", "messages", "sharegpt", "text"))


def test_mixed_shapes_and_missing_field_name_the_row(tmp_path):
    p = _jsonl(tmp_path / "mix.jsonl", [{"instruction": "i", "output": "o"}, {"instruction": "i", "output": "o"},
                                        {"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"mix\.jsonl, line 3: this record looks like qa but the first record "
                                        r"\(line 1\) is alpaca"):
        _load(p)
    p = _jsonl(tmp_path / "miss.jsonl", [{"instruction": "i", "output": "o"}, {"instruction": "i2"}])
    with pytest.raises(DataError, match=r"miss\.jsonl, line 2, field 'output': missing field\(s\) \['output'\]"):
        _load(p)
    with pytest.raises(DataError, match=r"line 1, field 'prompt': missing field\(s\) \['prompt', 'completion'\] "
                                        r"needed by the prompt_completion shape; columns found: \['instruction', "
                                        r"'output'\]; expected prompt_completion \(prompt, completion\)"):
        _load(p, format="prompt_completion")


def test_values_numbers_become_text_lists_are_refused(tmp_path):
    convs, _ = _load(_jsonl(tmp_path / "n.jsonl", [{"instruction": 12, "output": 3.5}]))
    assert convs[0].messages == [{"role": "user", "content": "12"}, {"role": "assistant", "content": "3.5"}]
    p = _jsonl(tmp_path / "l.jsonl", [{"instruction": "i", "output": "o"}, {"instruction": "i", "output": ["x"]}])
    with pytest.raises(DataError) as e:
        _load(p)
    assert (e.value.file, e.value.row, e.value.field) == (p, 2, "output")
    assert "found list [\"x\"]; expected text" in str(e.value)
    p = _jsonl(tmp_path / "h.jsonl", [{"instruction": "i", "output": "o", "history": "not pairs"}])
    with pytest.raises(DataError, match=r"field 'history': .*expected a list of \[question, answer\] pairs"):
        _load(p)


def test_empty_outputs_skipped_and_counted_all_empty_refused(tmp_path):
    p = tmp_path / "e.xlsx"
    pd.DataFrame({"instruction": ["a", "b", "c", None], "output": ["x", None, "  ", "y"]}).to_excel(p)
    convs, report = _load(p)
    assert [c.row for c in convs] == [1]
    assert report["files"][0]["skipped"] == {"empty_output": 2, "empty_prompt": 1}
    assert report["files"][0]["records"] == 4 and report["files"][0]["conversations"] == 1
    p2 = tmp_path / "all.xlsx"
    pd.DataFrame({"prompt": ["a", "b"], "completion": [None, ""]}).to_excel(p2)
    with pytest.raises(DataError, match=r"all\.xlsx, field 'completion': no usable conversation in 2 records"):
        _load(p2)


def test_text_split_at_sentence_end_and_skip_counts(tmp_path):
    docs = ["第一句话在这里。第二句话也在这里。第三句话很长很长很长。第四句结束了！",
            "short",
            "A first sentence here. A second one follows it. Then a third.",
            "一二三四五六七八九十一二三四五六七八九十。好"]
    p = _jsonl(tmp_path / "t.jsonl", [{"text": d} for d in docs])
    convs, report = _load(p)
    assert report["files"][0]["skipped"] == {"text_too_short": 1, "completion_too_short": 1}
    assert convs[0].messages == [{"role": "user", "content": "请续写以下文本：\n第一句话在这里。第二句话也在这里。"},
                                 {"role": "assistant", "content": "第三句话很长很长很长。第四句结束了！"}]
    assert [m["content"] for m in convs[1].messages] == ["请续写以下文本：\nA first sentence here.",
                                                         "A second one follows it. Then a third."]
    from chattune.config import TextSplitConfig
    prompt, completion = split_text("One. Two three four five six. Seven eight nine ten eleven.",
                                    TextSplitConfig(prompt_prefix="", min_chars=5, prompt_ratio=0.5))
    assert (prompt, completion) == ("One. Two three four five six.", "Seven eight nine ten eleven.")


def test_examples_text_docs_all_split():
    convs, report = _load(EXAMPLES / "text_docs.jsonl")
    assert report["files"][0]["format"] == "text" and len(convs) == 30
    for c in convs:
        assert c.messages[0]["content"].startswith("请续写以下文本：\n") and len(c.messages[1]["content"]) >= 5


def test_report_dedupe_and_hashes(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"question": "q", "answer": "a"}, {"question": "q ", "answer": "a"}])
    b = _jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q2", "completion": "a2"}])
    convs, report = load_conversations([DataSource(path=a), DataSource(path=b)], DataConfig())
    assert [(c.source, c.row) for c in convs] == [(a, 1), (b, 2)]
    assert report["duplicates_removed"] == 2 and report["conversations"] == 2
    assert [f["sha256"] for f in report["files"]] == [sha256_file(a), sha256_file(b)]
    assert [(f["format"], f["records"], f["conversations"]) for f in report["files"]] == \
        [("qa", 2, 2), ("prompt_completion", 2, 2)]
    convs, report = load_conversations([DataSource(path=a)], DataConfig(clean={"dedupe": False}))
    assert len(convs) == 2 and report["duplicates_removed"] == 0


def test_huanhuan_example():
    convs, report = _load(EXAMPLES / "huanhuan_200.json")
    assert report["files"][0]["records"] == 200 and report["duplicates_removed"] == 6 and len(convs) == 194
    assert convs[0].row == 2  # the first record starts on line 2 of the JSON array
    first = read_records(str(EXAMPLES / "huanhuan_200.json"))[0][1]
    assert convs[0].messages == [{"role": "user", "content": first["instruction"]},
                                 {"role": "assistant", "content": first["output"]}]


def test_files_to_predict_on_keep_unanswered_turns(tmp_path):
    from chattune.data.formats import read_conversations

    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "北京明天的天气"}, {"prompt": "上海", "completion": "ref"}])
    convs = read_conversations(prompts, require_answer=False)
    assert [c.messages for c in convs] == [
        [{"role": "user", "content": "北京明天的天气"}],
        [{"role": "user", "content": "上海"}, {"role": "assistant", "content": "ref"}]]
    with pytest.raises(DataError, match="no known data shape"):
        read_conversations(prompts)  # training needs the answer column
    chat = _jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    assert read_conversations(chat, require_answer=False)[0].messages == [{"role": "user", "content": "hi"}]
    with pytest.raises(DataError, match=r"no usable conversation in 1 records \(skipped: \{'no_assistant': 1\}\)"):
        read_conversations(chat)
    q = _jsonl(tmp_path / "q.jsonl", [{"question": "q1"}, {"question": "q2"}])
    assert [c.messages[-1]["content"] for c in read_conversations([DataSource(path=str(q))], require_answer=False)] \
        == ["q1", "q2"]


def test_messages_as_json_text_in_a_csv_cell(tmp_path):
    p = tmp_path / "m.csv"
    cell = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], ensure_ascii=False)
    pd.DataFrame({"messages": [cell]}).to_csv(p, index=False)
    assert _msgs(_load(p)[0]) == [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]

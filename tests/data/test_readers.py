"""readers.read_records: every file type, line/row numbers, encodings, and the errors users see."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from chattune.config import DataSource
from chattune.data.readers import read_records
from chattune.errors import DataError


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_json_array_records_carry_their_start_line(tmp_path):
    text = ('[\n'
            '  {"instruction": "a",\n   "output": "b"},\n'   # line 2
            '\n'
            '  {"instruction": "c", "output": "d"}, {"instruction": "e", "output": "f"}\n'  # line 5 twice
            ']\n')
    recs = read_records(DataSource(path=str(_write(tmp_path / "d.json", text))))
    assert [n for n, _ in recs] == [2, 5, 5]
    assert recs[0][1] == {"instruction": "a", "output": "b"}


def test_json_wrapper_object_and_single_conversation(tmp_path):
    wrapped = '{"version": 1,\n "data": [\n  {"q": 1},\n  {"q": 2}\n ]}'
    recs = read_records(str(_write(tmp_path / "w.json", wrapped)))
    assert recs == [(3, {"q": 1}), (4, {"q": 2})]
    one = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    recs = read_records(str(_write(tmp_path / "one.json", json.dumps(one))))
    assert recs == [(1, one)]


def test_jsonl_saved_as_json_is_read_as_jsonl(tmp_path):
    recs = read_records(str(_write(tmp_path / "x.json", '{"a": 1}\n{"a": 2}\n')))
    assert recs == [(1, {"a": 1}), (2, {"a": 2})]


def test_jsonl_bom_crlf_and_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes("\ufeff".encode() + '{"text": "一"}\r\n\r\n{"text": "二\u2028三"}\r\n'.encode())
    recs = read_records(str(p))
    assert recs == [(1, {"text": "一"}), (3, {"text": "二\u2028三"})]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = _write(tmp_path / "bad.jsonl", '{"a": 1}\n{"a": 2}\n{"a": 3,}\n')
    with pytest.raises(DataError) as e:
        read_records(str(p))
    assert e.value.row == 3 and e.value.file == str(p)
    assert "bad.jsonl, line 3" in str(e.value) and "not valid JSON" in str(e.value)


def test_malformed_json_array_names_line(tmp_path):
    p = _write(tmp_path / "bad.json", '[\n {"a": 1},\n {"a": 2},\n {"a" 3}\n]')
    with pytest.raises(DataError) as e:
        read_records(str(p))
    assert e.value.row == 4 and "bad.json, line 4" in str(e.value)


def test_non_object_line_is_refused(tmp_path):
    p = _write(tmp_path / "l.jsonl", '{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2: found a JSON list .*expected an object"):
        read_records(str(p))


@pytest.mark.parametrize("name,text", [("e.jsonl", ""), ("e.json", "  \n"), ("e.json", "[]"),
                                       ("e.json", '{"data": []}'), ("e.csv", "instruction,output\n"),
                                       ("e.csv", "")])
def test_empty_files_are_refused(tmp_path, name, text):
    p = _write(tmp_path / name, text)
    with pytest.raises(DataError, match="empty") as e:
        read_records(str(p))
    assert e.value.file == str(p)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'.*\.jsonl"):
        read_records(str(_write(tmp_path / "a.txt", "x")))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        read_records(str(tmp_path / "folder"))


def test_csv_bom_crlf_index_column_and_na_text(tmp_path):
    # pandas' to_csv(index=True) writes an unnamed first column; a cell "NA" is text, an empty cell is None.
    p = tmp_path / "d.csv"
    p.write_bytes("\ufeff,prompt,completion\r\n0,\"多行\r\n提示\",NA\r\n1,x,\r\n".encode())
    recs = read_records(str(p))
    assert recs == [(1, {"prompt": "多行\n提示", "completion": "NA"}), (2, {"prompt": "x", "completion": None})]


def test_tsv(tmp_path):
    p = _write(tmp_path / "d.tsv", "question\tanswer\n1+1?\t2\n")
    assert read_records(str(p)) == [(1, {"question": "1+1?", "answer": "2"})]


def test_gbk_refused_with_hint_and_read_with_encoding(tmp_path):
    p = _write(tmp_path / "gbk.csv", "问题,答案\n你好,您好\n天气,晴\n", encoding="gbk")
    with pytest.raises(DataError) as e:
        read_records(DataSource(path=str(p)))
    msg = str(e.value)
    assert str(p) in msg and "encoding: gbk" in msg and e.value.row == 1
    recs = read_records(DataSource(path=str(p), encoding="gbk"))
    assert recs == [(1, {"问题": "你好", "答案": "您好"}), (2, {"问题": "天气", "答案": "晴"})]
    pj = _write(tmp_path / "gbk.jsonl", '{"text": "甲"}\n{"text": "中文"}\n', encoding="gbk")
    with pytest.raises(DataError, match="encoding: gbk"):
        read_records(str(pj))
    assert read_records(DataSource(path=str(pj), encoding="GBK"))[1] == (2, {"text": "中文"})


def test_utf16_named_and_readable(tmp_path):
    p = _write(tmp_path / "u16.jsonl", '{"text": "中文"}\n', encoding="utf-16")
    with pytest.raises(DataError, match="encoding: utf-16"):
        read_records(str(p))
    assert read_records(DataSource(path=str(p), encoding="utf-16")) == [(1, {"text": "中文"})]


def test_unknown_encoding_names_the_field(tmp_path):
    p = _write(tmp_path / "a.jsonl", '{"a": 1}\n')
    with pytest.raises(DataError, match="unknown encoding") as e:
        read_records(DataSource(path=str(p), encoding="klingon"))
    assert e.value.field == "encoding"


def test_xlsx_index_column_nan_cells_types_and_sheets(tmp_path):
    p = tmp_path / "train.xlsx"
    df = pd.DataFrame({"Prompt": ["a", None, "c"], "Completion": [1, 2, None]})
    with pd.ExcelWriter(p) as w:
        df.to_excel(w, sheet_name="first", index=True)
        pd.DataFrame({"text": ["second sheet"]}).to_excel(w, sheet_name="more", index=False)
    recs = read_records(str(p))
    assert recs == [(1, {"Prompt": "a", "Completion": 1}), (2, {"Prompt": None, "Completion": 2}),
                    (3, {"Prompt": "c", "Completion": None})]
    assert isinstance(recs[0][1]["Completion"], int)  # not 1.0 although the column has an empty cell
    assert read_records(DataSource(path=str(p), sheet="more")) == [(1, {"text": "second sheet"})]
    assert read_records(DataSource(path=str(p), sheet=1)) == [(1, {"text": "second sheet"})]
    with pytest.raises(DataError, match=r"no sheet 'nope'; the workbook has sheets \['first', 'more'\]"):
        read_records(DataSource(path=str(p), sheet="nope"))


def test_parquet_round_trip_keeps_nested_messages(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "id": 7},
            {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}], "id": 8}]
    p = tmp_path / "d.parquet"
    pd.DataFrame(rows).to_parquet(p, index=True)
    assert read_records(str(p)) == [(1, rows[0]), (2, rows[1])]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    rows = [{"instruction": "i1", "output": "o1"}, {"instruction": "i2", "output": "o2"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert read_records(str(tmp_path / "ds")) == [(1, rows[0]), (2, rows[1])]
    with pytest.raises(DataError, match="single Dataset"):
        read_records(DataSource(path=str(tmp_path / "ds"), split="train"))
    dd = datasets.DatasetDict({"dev": datasets.Dataset.from_list(rows[:1]),
                               "test": datasets.Dataset.from_list(rows[1:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert read_records(DataSource(path=str(tmp_path / "dd"), split="test")) == [(1, rows[1])]
    with pytest.raises(DataError, match=r"holds splits \['dev', 'test'\]; set `split:`") as e:
        read_records(DataSource(path=str(tmp_path / "dd")))
    assert e.value.field == "split"
    with pytest.raises(DataError, match="no split 'train'"):
        read_records(DataSource(path=str(tmp_path / "dd"), split="train"))

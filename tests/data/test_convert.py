"""convert_file and the `data convert` / `data synth city-date` commands (exit codes, atomic output)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from chattune.cli import app
from chattune.config import DataConfig, DataSource
from chattune.data.convert import convert_file, write_records
from chattune.data.formats import load_conversations
from chattune.errors import DataError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
runner = CliRunner()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _convs(path: Path):
    return [c.messages for c in load_conversations([DataSource(path=str(path))], DataConfig())[0]]


def test_alpaca_to_messages_jsonl_round_trip(tmp_path):
    out = tmp_path / "out.jsonl"
    n = convert_file(EXAMPLES / "huanhuan_200.json", out)
    lines = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert n == len(lines) == 194 and set(lines[0]) == {"messages"}
    assert [ln["messages"] for ln in lines] == _convs(EXAMPLES / "huanhuan_200.json") == _convs(out)


def test_multi_turn_to_alpaca_json_and_xlsx_keeps_history(tmp_path):
    src = _jsonl(tmp_path / "m.jsonl", [{"messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}])
    assert convert_file(src, tmp_path / "a.json") == 1
    rows = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert rows == [{"instruction": "q2", "input": "", "output": "a2", "history": [["q1", "a1"]], "system": "sys"}]
    convert_file(src, tmp_path / "a.xlsx", to="alpaca")
    assert _convs(tmp_path / "a.xlsx") == _convs(src) == _convs(tmp_path / "a.json")


def test_xlsx_prompt_completion_tutorial_layout(tmp_path):
    out = tmp_path / "pc.xlsx"
    assert convert_file(EXAMPLES / "qa_dialog.jsonl", out) == 60
    df = pd.read_excel(out)
    assert list(df.columns) == ["Unnamed: 0", "Prompt", "Completion"] and len(df) == 60
    assert _convs(out) == _convs(EXAMPLES / "qa_dialog.jsonl")


def test_target_that_cannot_hold_the_data_writes_nothing(tmp_path):
    src = _jsonl(tmp_path / "m.jsonl", [{"messages": [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}])
    with pytest.raises(DataError, match=r"m\.jsonl, line 1: a 2-turn conversation; prompt_completion holds one"):
        convert_file(src, tmp_path / "out" / "x.xlsx")
    with pytest.raises(DataError, match="messages shape is written as .jsonl"):
        convert_file(src, tmp_path / "out" / "x.json", to="messages")
    with pytest.raises(DataError, match=r"cannot write '\.csv'"):
        convert_file(src, tmp_path / "out" / "x.csv")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_write_failure_leaves_old_file_and_no_temp(tmp_path):
    out = tmp_path / "keep.jsonl"
    out.write_text("old\n", encoding="utf-8")
    with pytest.raises(TypeError):
        write_records([{"a": 1}, {"a": object()}], out)  # fails half-way through the write
    assert out.read_text(encoding="utf-8") == "old\n" and [p.name for p in tmp_path.iterdir()] == ["keep.jsonl"]


def test_cli_convert_ok_and_bad_input_exit_2_without_output(tmp_path):
    out = tmp_path / "o.jsonl"
    r = runner.invoke(app, ["data", "convert", str(EXAMPLES / "text_docs.jsonl"), "--to", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote 30 conversations" in r.output and len(out.read_text(encoding="utf-8").splitlines()) == 30
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", \n', encoding="utf-8")
    out2 = tmp_path / "o2.jsonl"
    r = runner.invoke(app, ["data", "convert", str(bad), "--to", str(out2)])
    assert r.exit_code == 2
    assert "bad.jsonl" in r.output and "line 2" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "o.jsonl"]
    r = runner.invoke(app, ["data", "convert", str(bad), "--to", str(out2), "--format", "nope"])
    assert r.exit_code == 2 and not out2.exists()


def test_cli_synth_jsonl_and_xlsx(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    r = runner.invoke(app, ["data", "synth", "city-date", "--n", "40", "--seed", "0", "--out", str(train),
                            "--split", "10", "--test-out", str(test)])
    assert r.exit_code == 0, r.output
    assert "wrote 40 train rows" in r.output and "wrote 10 test rows" in r.output
    rows = [json.loads(ln) for ln in train.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 40 and set(rows[0]) == {"prompt", "completion", "sentence"}
    test_rows = [json.loads(ln) for ln in test.read_text(encoding="utf-8").splitlines()]
    assert not {r["sentence"] for r in rows} & {r["sentence"] for r in test_rows}
    # The committed examples were made by this command (same seed, same rows).
    example = [json.loads(ln) for ln in (EXAMPLES / "city_date_train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert example[:40] == rows

    xlsx = tmp_path / "train.xlsx"
    r = runner.invoke(app, ["data", "synth", "city-date", "--n", "12", "--out", str(xlsx), "--prompt", "steps"])
    assert r.exit_code == 0, r.output
    df = pd.read_excel(xlsx)
    assert list(df.columns) == ["Unnamed: 0", "Prompt", "Completion"] and list(df["Unnamed: 0"]) == list(range(12))
    assert df["Prompt"][0].startswith("给定一句话：")


@pytest.mark.parametrize("args", [["--out", "x.csv"], ["--out", "x.jsonl", "--split", "5"],
                                  ["--out", "x.jsonl", "--test-out", "y.jsonl"],
                                  ["--out", "x.jsonl", "--prompt", "long"]])
def test_cli_synth_bad_options_exit_2_and_write_nothing(tmp_path, args):
    args = [a if not a.endswith(("csv", "jsonl")) else str(tmp_path / a) for a in args]
    r = runner.invoke(app, ["data", "synth", "city-date", "--n", "5", *args])
    assert r.exit_code == 2, r.output
    assert list(tmp_path.iterdir()) == []

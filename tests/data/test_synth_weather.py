"""Weather tool-calling generator: arguments read from the sentence, rows with and without calls, test rows
ending at the decision turn, the CLI, and bad arguments."""
from __future__ import annotations

import json
import re

import pytest

from chattune.data.synth import WEATHER_TOOL, generate_weather_tool, load_cities, make_weather_tool_files
from chattune.data.synth.weather_tool import ASKS_WEATHER, NO_WEATHER
from chattune.errors import DataError


def _calls(row: dict) -> list[dict]:
    return [m for m in row["messages"] if m.get("tool_calls")]


def test_deterministic_unique_and_both_kinds():
    train, test = generate_weather_tool(300, seed=5, n_test=60)
    assert (train, test) == generate_weather_tool(300, seed=5, n_test=60)
    assert generate_weather_tool(300, seed=5)[0] == train  # train rows do not depend on n_test
    users = [r["messages"][0]["content"] for r in train + test]
    assert len(set(users)) == len(users)
    with_call = [r for r in train if _calls(r)]
    assert 0.55 < len(with_call) / len(train) < 0.85  # answer_share 0.3, less the repeats of small questions
    assert all(r["tools"] == [WEATHER_TOOL] for r in train + test)
    assert ASKS_WEATHER and NO_WEATHER and not set(ASKS_WEATHER) & set(NO_WEATHER)


def test_call_arguments_come_from_the_sentence_and_the_answer_from_the_result():
    cities = set(load_cities())
    train, _ = generate_weather_tool(200, seed=1, answer_share=0.0)
    for row in train:
        user, call, result, answer = row["messages"]
        args = call["tool_calls"][0]["function"]["arguments"]
        assert call["content"] == "" and call["tool_calls"][0]["function"]["name"] == "get_weather"
        assert args["city"] in cities and args["city"] in user["content"]
        m = re.fullmatch(r"(?:(\d{4})-)?(\d{2})-(\d{2})", args["date"])
        assert m, args
        year, month, day = m.groups()
        # The sentence writes the date unpadded (and the year only when the argument has one).
        assert (year is not None) == (re.search(r"\d{4}年", user["content"]) is not None)
        assert re.search(rf"(?<!\d){int(month)}[月-]{int(day)}[日号]", user["content"]), user["content"]
        assert result["role"] == "tool" and result["tool_call_id"] == call["tool_calls"][0]["id"]
        facts = json.loads(result["content"])
        assert (facts["city"], facts["date"]) == (args["city"], args["date"])
        assert answer == {"role": "assistant", "content": f"{args['city']} {args['date']}：{facts['weather']}，"
                          f"{facts['temperature']}。"}


def test_test_rows_end_at_the_decision_turn():
    _, test = generate_weather_tool(10, seed=2, n_test=80)
    assert all(len(r["messages"]) == 2 and r["messages"][1]["role"] == "assistant" for r in test)
    assert {bool(_calls(r)) for r in test} == {True, False}
    for r in test:
        if not _calls(r):
            assert r["messages"][1]["content"] and "tool_calls" not in r["messages"][1]


def test_decision_only_and_compact_rows_draw_the_same_sentences():
    from chattune.data.synth import COMPACT_TOOL

    full, test = generate_weather_tool(60, seed=4, n_test=10)
    short, short_test = generate_weather_tool(60, seed=4, n_test=10, decision_only=True, compact=True)
    assert [r["messages"][:2] for r in full] == [r["messages"] for r in short]
    assert [r["messages"] for r in test] == [r["messages"] for r in short_test]
    assert all(r["tools"] == [COMPACT_TOOL] for r in short + short_test)
    assert COMPACT_TOOL["function"]["parameters"]["required"] == WEATHER_TOOL["function"]["parameters"]["required"]
    assert "description" not in json.dumps(COMPACT_TOOL)


def test_the_draw_loop_skips_repeats_and_stops_when_the_space_is_too_small():
    from chattune.data.synth._unique import draw_unique

    keys = iter("aabcab")
    assert draw_unique(3, lambda: (k := next(keys), k.upper())) == ["A", "B", "C"]
    with pytest.raises(ValueError, match="could not draw 2 unique sentences; lower n"):
        draw_unique(2, lambda: ("same", 0), hint="lower n")


def test_files_and_cli(tmp_path):
    from typer.testing import CliRunner

    from chattune.cli import app

    out, test_out = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    res = CliRunner().invoke(app, ["data", "synth", "weather-tool", "--n", "40", "--seed", "3", "--out", str(out),
                                   "--split", "10", "--test-out", str(test_out)])
    assert res.exit_code == 0, res.output
    assert "wrote 40 train rows" in res.output and "wrote 10 test rows" in res.output
    train = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert train == generate_weather_tool(40, seed=3, n_test=10)[0]
    assert len(test_out.read_text(encoding="utf-8").splitlines()) == 10
    short = tmp_path / "short.jsonl"
    res = CliRunner().invoke(app, ["data", "synth", "weather-tool", "--n", "40", "--seed", "3", "--out", str(short),
                                   "--decision-only", "--compact"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x) for x in short.read_text(encoding="utf-8").splitlines()] == generate_weather_tool(
        40, seed=3, decision_only=True, compact=True)[0]
    bad = CliRunner().invoke(app, ["data", "synth", "weather-tool", "--out", str(tmp_path / "t.xlsx")])
    assert bad.exit_code == 2 and "need .jsonl or .json" in bad.output and not (tmp_path / "t.xlsx").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"n_test": 5}, "needs --test-out"),
    ({"test_out": "t.jsonl"}, "without --split"),
    ({"n_test": 2, "test_out": "x.jsonl"}, "the same file"),
    ({"answer_share": 1.5}, "answer_share in"),
])
def test_bad_arguments_write_nothing(tmp_path, kwargs, match):
    if "test_out" in kwargs:
        kwargs["test_out"] = tmp_path / kwargs["test_out"]
    with pytest.raises(DataError, match=match):
        make_weather_tool_files(tmp_path / "x.jsonl", 5, **kwargs)
    assert list(tmp_path.iterdir()) == []

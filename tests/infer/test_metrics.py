"""Metrics on hand-made predictions; every expected value is worked out by hand in the comments."""
from __future__ import annotations

import math

import pytest

from chattune.infer import metrics as M

REF = '{"city": "北京", "date": "2024-05-01"}'


def test_exact_and_contains():
    assert M.exact("  北京\n", "北京") == 1.0
    assert M.exact("北京市", "北京") == 0.0
    assert M.contains("答案是北京。", " 北京 ") == 1.0
    assert M.contains("上海", "北京") == 0.0


def test_parse_json_object_tolerates_whitespace_and_fence_only():
    assert M.parse_json_object('\n ```json\n{"a": 1}\n```  ') == {"a": 1}
    assert M.parse_json_object('```\n{"a": 1}```') == {"a": 1}
    assert M.parse_json_object("[1, 2]") is None  # not an object
    assert M.parse_json_object('The answer: {"a": 1}') is None
    assert M.parse_json_object('{"a": 1') is None


def test_json_fields_rows_and_aggregate():
    preds = [
        '```json\n{"city": "北京", "date": "2024-05-01"}\n```',  # all right
        '{"city": "北京", "date": "2024-05-02"}',               # city right, date wrong
        '{"city": "北京", "date": "2024-05-01", "extra": 1}',   # both fields right, but an extra key
        "city: 北京",                                            # invalid JSON
        '  {"city":"上海"}  ',                                   # valid, both wrong (date missing)
    ]
    rows = [M.score_row(p, REF, ["json_fields"]) for p in preds]
    assert [r["json_fields"] for r in rows] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [r["json_valid"] for r in rows] == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert rows[1]["json_field_scores"] == {"city": 1.0, "date": 0.0}
    agg = M.aggregate(rows)
    assert agg["json_fields"] == pytest.approx(1 / 5)
    assert agg["json_valid"] == pytest.approx(4 / 5)
    assert agg["json_invalid"] == 1
    assert agg["json_field/city"] == pytest.approx(3 / 5)   # rows 1, 2, 3
    assert agg["json_field/date"] == pytest.approx(2 / 5)   # rows 1, 3
    assert agg["json_field_acc"] == pytest.approx(5 / 10)


def test_json_values_compare_with_json_types():
    assert M.json_fields('{"n": 1.0}', '{"n": 1}') == 1.0
    assert M.json_fields('{"n": true}', '{"n": 1}') == 0.0
    assert M.json_fields('{"n": "1"}', '{"n": 1}') == 0.0
    with pytest.raises(ValueError, match="JSON objects"):
        M.json_fields("{}", "not json")


def test_tokenize_chars_for_cjk_words_otherwise():
    assert M.tokenize("北京 今天") == ["北", "京", "今", "天"]
    assert M.tokenize("the  cat\nsat") == ["the", "cat", "sat"]


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat" = 5 of 6 tokens each side: P = R = 5/6.
    assert M.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # 8 chars each, LCS 北京今天天气 = 6: P = R = 0.75.
    assert M.rouge_l("北京今天天气很好", "北京今天天气不错") == pytest.approx(0.75)
    # P = 2/2, R = 2/7: F = 2 * 1 * 2/7 / (1 + 2/7) = 4/9.
    assert M.rouge_l("今天", "今天天气很好啊") == pytest.approx(4 / 9)
    assert M.rouge_l("", "") == 1.0 and M.rouge_l("", "a") == 0.0 and M.rouge_l("x", "y") == 0.0


def test_bleu4_hand_computed():
    assert M.bleu4("a b c d e", "a b c d e") == pytest.approx(1.0)
    # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0 of 3 -> smoothed 1/(2*3); equal lengths so BP = 1.
    assert M.bleu4("the cat sat on the mat", "the cat is on the mat") == pytest.approx(
        (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)
    # Characters: p1 = 6/8, p2 = 5/7, p3 = 4/6, p4 = 3/5, BP = 1.
    assert M.bleu4("北京今天天气很好", "北京今天天气不错") == pytest.approx((6 / 8 * 5 / 7 * 4 / 6 * 3 / 5) ** 0.25)
    # 2 chars vs 7: p1 = 1, p2 = 1, p3 = 0 of max(1, 0) -> 1/2, p4 -> 1/(4*1); BP = exp(1 - 7/2).
    assert M.bleu4("今天", "今天天气很好啊") == pytest.approx(math.exp(-2.5) * (1 / 8) ** 0.25)
    assert M.bleu4("x y", "a b") == 0.0  # no unigram match


def test_score_row_and_aggregate_means():
    rows = [M.score_row("北京", "北京", ["exact", "contains", "rouge_l", "bleu4", "loss"]),
            M.score_row("去北京", "北京", ["exact", "contains", "rouge_l", "bleu4"])]
    assert set(rows[0]) == {"exact", "contains", "rouge_l", "bleu4"}
    agg = M.aggregate(rows)
    assert agg["exact"] == 0.5 and agg["contains"] == 1.0
    # Row 2: P = 2/3, R = 1 -> F = 0.8; mean with 1.0 = 0.9.
    assert agg["rouge_l"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="unknown metric"):
        M.check_metrics(["exact", "acc"])


WEATHER = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "大连市", "date": "03-07"}}}]}
ANSWER = {"role": "assistant", "content": "大连市在辽宁省。"}


def test_reference_calls_read_objects_and_json_text_and_refuse_the_rest():
    assert M.reference_calls(WEATHER) == [("get_weather", {"city": "大连市", "date": "03-07"})]
    as_text = {"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}
    assert M.reference_calls(as_text) == [("f", {"x": 1})]
    assert M.reference_calls(ANSWER) == []
    with pytest.raises(ValueError, match="JSON object of arguments"):
        M.reference_calls({"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "[1]"}}]})


def test_tool_calls_rows_and_aggregate():
    ref = M.reference_calls(WEATHER)
    cases = [  # (predicted calls, reference calls, malformed)
        ([("get_weather", {"city": "大连市", "date": "03-07"})], ref, False),   # all right
        ([("get_weather", {"city": "大连市", "date": "3-7"})], ref, False),     # name, city right; date wrong
        ([("get_time", {"city": "大连市", "date": "03-07"})], ref, False),      # wrong function: args count wrong
        ([], ref, False),                                                       # answered: missed the call
        ([], ref, True),                                                        # a call it could not write
        ([], [], False),                                                        # answered, as it should
        ([("get_weather", {"city": "x", "date": "y"})], [], False),             # called, should have answered
        ([], [], True),                                                         # tried to call, should have answered
    ]
    rows = [M.score_row("", "", ["tool_calls"], calls=p, expected_calls=r, malformed=m) for p, r, m in cases]
    assert [r["tool_calls"] for r in rows] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert [r["tool_names"] for r in rows] == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert rows[1]["tool_arg_scores"] == {"get_weather.city": 1.0, "get_weather.date": 0.0}
    assert rows[2]["tool_arg_scores"] == {"get_weather.city": 0.0, "get_weather.date": 0.0}
    assert rows[5]["tool_arg_scores"] == {} == rows[6]["tool_arg_scores"]
    agg = M.aggregate(rows)
    assert agg["tool_calls"] == pytest.approx(2 / 8)
    assert agg["tool_names"] == pytest.approx(3 / 8)
    assert agg["tool_call_name_acc"] == pytest.approx(2 / 5)  # rows 1, 2 of the five that should call
    # missed: row 4 only (row 5 tried); spurious: rows 7 and 8 (a malformed call is still a call)
    assert (agg["tool_expected"], agg["tool_missed"], agg["tool_spurious"], agg["tool_malformed"]) == (5, 1, 2, 2)
    assert agg["tool_arg/get_weather.city"] == pytest.approx(2 / 5)  # rows 1, 2
    assert agg["tool_arg/get_weather.date"] == pytest.approx(1 / 5)  # row 1
    assert agg["tool_arg_acc"] == pytest.approx(3 / 10)


def test_tool_calls_order_and_argument_types_count():
    ref = [("a", {"n": 1}), ("b", {"s": "x"})]
    swapped = M.tool_calls_detail([("b", {"s": "x"}), ("a", {"n": 1})], ref)
    assert swapped["names"] == 0.0 and swapped["args"] == {"a.n": 0.0, "b.s": 0.0}
    typed = M.tool_calls_detail([("a", {"n": "1"}), ("b", {"s": "x"})], ref)  # "1" is not 1
    assert (typed["calls"], typed["names"], typed["args"]) == (0.0, 1.0, {"a.n": 0.0, "b.s": 1.0})
    extra = M.tool_calls_detail([("a", {"n": 1.0, "unit": "c"}), ("b", {"s": "x"})], ref)  # 1.0 == 1; extra key
    assert (extra["calls"], extra["args"]) == (0.0, {"a.n": 1.0, "b.s": 1.0})


def test_tool_calls_needs_parsed_calls_and_is_a_known_metric():
    assert M.check_metrics(["tool_calls", "exact"]) == ["tool_calls", "exact"]
    with pytest.raises(ValueError, match="parsed from the prediction"):
        M.score_row("<tool_call>", "", ["tool_calls"])

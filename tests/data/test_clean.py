"""clean: control/zero-width removal, whitespace without losing newlines, non-BMP, dedupe."""
from __future__ import annotations

from chattune.config import CleanConfig
from chattune.data.clean import clean_messages, clean_text, dedupe
from chattune.data.types import Conversation


def test_strip_control_and_zero_width():
    dirty = "a\x00b\u200bc\u200cd\u200de\ufefff\u2060g\ufffdh\x07i"
    assert clean_text(dirty) == "abcdefghi"
    assert clean_text(dirty, CleanConfig(strip_control=False, normalize_whitespace=False)) == dirty


def test_whitespace_keeps_newlines_and_indentation():
    text = "  标题  \r\n\r\n第一行   有  空格\t\t这里 \n    def f():\n        return 1\n\n"
    assert clean_text(text) == "标题\n\n第一行 有 空格 这里\n    def f():\n        return 1"
    assert clean_text("a \n \n b", CleanConfig(collapse_newlines=True)) == "a b"
    # CRLF always becomes LF, even with every option off.
    off = CleanConfig(strip_control=False, normalize_whitespace=False)
    assert clean_text("a  b\r\nc\rd", off) == "a  b\nc\nd"


def test_remove_non_bmp_only_when_asked():
    assert clean_text("好😀 ok 𠀀") == "好😀 ok 𠀀"
    assert clean_text("好😀 ok 𠀀", CleanConfig(remove_non_bmp=True)) == "好 ok"


def test_whitespace_only_becomes_empty():
    assert clean_text(" \t\u200b\n ") == ""


def test_clean_messages_copies_and_cleans_reasoning():
    msgs = [{"role": "assistant", "content": " a  b ", "reasoning_content": "x\u200b "}]
    out = clean_messages(msgs)
    assert out == [{"role": "assistant", "content": "a b", "reasoning_content": "x"}]
    assert msgs[0]["content"] == " a  b "


def test_dedupe_keeps_first_and_counts():
    def conv(u, a, row):
        return Conversation(messages=[{"role": "user", "content": u}, {"role": "assistant", "content": a}],
                            source="f", row=row)
    kept, removed = dedupe([conv("q", "a", 1), conv("q", "b", 2), conv("q", "a", 3), conv("q", "a", 4)])
    assert [c.row for c in kept] == [1, 2] and removed == 2

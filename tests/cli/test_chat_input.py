"""`chattune chat` reads multi-line messages: backslash continuation and \"\"\" paste blocks (issue 14, item 17)."""
from __future__ import annotations

import io

from chattune.cli.infer import read_message


def _messages(text: str) -> tuple[list[str], int]:
    stream, prompts = io.StringIO(text), []
    out = []
    while (m := read_message(stream.readline, lambda: prompts.append("..."))) is not None:
        out.append(m)
    return out, len(prompts)


def test_continuation_and_paste_blocks_make_one_message_each():
    text = ("one line\n"
            "Step 1: read \\\n"
            "Step 2: think\\\n"
            "Step 3: answer\n"
            '"""\n'
            "first pasted line\n"
            "\n"
            "  indented, after a blank line\n"
            '"""\n'
            "/exit\n")
    msgs, continuation_prompts = _messages(text)
    assert msgs == ["one line", "Step 1: read \nStep 2: think\nStep 3: answer",
                    "first pasted line\n\n  indented, after a blank line", "/exit"]
    assert continuation_prompts == 2 + 4


def test_unclosed_paste_block_ends_at_end_of_input():
    assert _messages('"""\na\nb\n')[0] == ["a\nb"]
    assert _messages("dangling \\\n")[0] == ["dangling "]

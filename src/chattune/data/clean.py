"""Text cleaning driven by `CleanConfig`, and exact-duplicate removal.

The defaults only remove what no one means to train on (NUL, zero-width characters, U+FFFD,
stray spaces). Newlines are kept unless asked: they carry structure (lists, code, poems), and
leading indentation is kept for the same reason (code in answers).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable

from ..config import CleanConfig
from .types import Conversation

# NUL and the other C0 controls except tab/newline/carriage return, DEL, zero-width space/non-joiner/
# joiner, word joiner, BOM (U+FEFF, also a zero-width no-break space) and the replacement character
# U+FFFD left by a bad decode upstream. A regex, not str.translate: translate with a dict calls back into
# Python for every character and is much slower on non-ASCII text.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200d\u2060\ufeff\ufffd]")
_NON_BMP = re.compile("[\U00010000-\U0010FFFF]")
_NEWLINES = re.compile(r"\r\n?")
_INNER_RUN = re.compile(r"(?<=\S)[ \t]{2,}|(?<=\S)\t")  # a run after text; leading indentation is kept
_TRAILING = re.compile(r"[ \t]+(?=\n|$)")
_ANY_NEWLINES = re.compile(r"\s*\n\s*")


def clean_text(text: str, cfg: CleanConfig | None = None) -> str:
    """Clean one text field.

    Args:
        text: the text.
        cfg: which steps to run (default `CleanConfig()`).

    Returns:
        The cleaned text: CRLF/CR → LF always; then, as configured, control and zero-width
        characters dropped, non-BMP characters dropped, runs of spaces/tabs inside a line collapsed
        to one space (leading indentation of later lines kept), trailing spaces on each line
        and both ends trimmed, newlines turned into
        spaces (``collapse_newlines``).
    """
    cfg = cfg or CleanConfig()
    if "\r" in text:
        text = _NEWLINES.sub("\n", text)
    if cfg.strip_control:
        text = _CONTROL.sub("", text)
    if cfg.remove_non_bmp:
        text = _NON_BMP.sub("", text)
    if cfg.collapse_newlines:
        text = _ANY_NEWLINES.sub(" ", text)
    if cfg.normalize_whitespace:
        # The substring tests skip the regexes for the common clean text (most rows at scale).
        if "  " in text or "\t" in text:
            text = _INNER_RUN.sub(" ", text)
        if " \n" in text or "\t\n" in text:
            text = _TRAILING.sub("", text)
        text = text.strip()
    return text


def clean_messages(messages: list[dict], cfg: CleanConfig | None = None) -> list[dict]:
    """Return copies of `messages` with ``content`` (and ``reasoning_content``) cleaned."""
    out = []
    for m in messages:
        m = dict(m)
        for key in ("content", "reasoning_content"):
            if isinstance(m.get(key), str):
                m[key] = clean_text(m[key], cfg)
        out.append(m)
    return out


def conversation_key(conv: Conversation) -> str:
    """A key for exact-duplicate detection: the messages and tools, not where they came from (JSON, because
    tool calls nest lists and dicts)."""
    return json.dumps([conv.messages, conv.tools], sort_keys=True, ensure_ascii=False)


def dedupe(conversations: Iterable[Conversation]) -> tuple[list[Conversation], int]:
    """Drop exact duplicate conversations, keeping the first of each.

    Args:
        conversations: in file order.

    Returns:
        ``(kept, removed_count)``.
    """
    seen: set[str] = set()
    kept: list[Conversation] = []
    removed = 0
    for conv in conversations:
        key = conversation_key(conv)
        if key in seen:
            removed += 1
            continue
        seen.add(key)
        kept.append(conv)
    return kept, removed

"""Text cleaning driven by `CleanConfig`, and exact-duplicate removal.

The defaults only remove what no one means to train on (NUL, zero-width characters, U+FFFD,
stray spaces). Newlines are kept unless asked: they carry structure (lists, code, poems), and
leading indentation is kept for the same reason (code in answers).
"""
from __future__ import annotations

import json
import re
from typing import Iterable

from ..config import CleanConfig
from .types import Conversation

# NUL and the other C0 controls except tab/newline/carriage return, DEL, zero-width space/non-joiner/
# joiner, word joiner, BOM (U+FEFF, also a zero-width no-break space) and the replacement character
# U+FFFD left by a bad decode upstream.
_CONTROL = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F,
                          0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0xFFFD])
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
        text = text.translate(_CONTROL)
    if cfg.remove_non_bmp:
        text = _NON_BMP.sub("", text)
    if cfg.collapse_newlines:
        text = _ANY_NEWLINES.sub(" ", text)
    if cfg.normalize_whitespace:
        text = _INNER_RUN.sub(" ", text)
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
    """A stable key for exact-duplicate detection: the messages only, not where they came from."""
    return json.dumps(conv.messages, ensure_ascii=False, sort_keys=True)


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

"""Split generated text into reasoning and answer (``<think>…</think>`` as Qwen3 and DeepSeek-R1 write it).

With ``thinking: keep`` a model writes its reasoning before the answer. Whatever scores, shows or serves the
answer must see the answer alone: metrics score `Split.content`, `predict` writes both, `chat` dims the
reasoning and the server returns it as ``reasoning_content`` (the field vLLM's reasoning parsers and
DeepSeek's API use). The markers are plain text, not special tokens, so they survive decoding; like vLLM's
``deepseek_r1``/``qwen3`` parsers we match the literal tags rather than parse each template. A template
whose generation prompt already opens the block (Qwen3-2507 thinking models) makes the model write only the
closing tag: ``opened=True``.
"""
from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Split:
    """Generated text as reasoning + answer.

    Attributes:
        reasoning: the text inside the think block, stripped (None: the model wrote no think block).
        content: the answer after it, leading whitespace stripped (the whole text when there is no block).
    """

    reasoning: str | None
    content: str


def _partial_tail(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (held back while streaming)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def split_reasoning(text: str, *, opened: bool = False, final: bool = True) -> Split:
    """Split `text` into reasoning and answer.

    Args:
        text: the generated text (special tokens already removed).
        opened: the prompt already opened the think block (the text holds only its closing tag).
        final: False while streaming: a partial tag at the end, and trailing whitespace of unfinished
            reasoning, are held back, so each later split extends the earlier one (deltas never retract).

    Returns:
        The `Split`.
    """
    head = text.lstrip()
    if not opened:
        if head.startswith(OPEN):
            opened, text = True, head[len(OPEN):]
        elif not final and OPEN.startswith(head):  # also "": only whitespace so far
            return Split(None, "")  # maybe the start of a think block: wait for the next token
    if not opened:
        return Split(None, text)
    at = text.find(CLOSE)
    if at < 0:  # still reasoning (or cut by max_new_tokens)
        body = text if final else text[:len(text) - _partial_tail(text, CLOSE)]
        return Split(body.strip(), "")
    return Split(text[:at].strip(), text[at + len(CLOSE):].lstrip())


class ReasoningStream:
    """Turn raw text deltas into ``("reasoning" | "content", delta)`` pairs, consistent with `split_reasoning`.

    Feeding every delta of a stream and then `finish` yields pieces whose concatenations per kind equal
    ``split_reasoning(full_text)``'s reasoning and content.
    """

    def __init__(self, opened: bool = False):
        self.opened, self.raw, self.sent = opened, "", Split(None, "")

    def _diff(self, new: Split) -> list[tuple[str, str]]:
        out = []
        for kind, old, now in (("reasoning", self.sent.reasoning or "", new.reasoning or ""),
                               ("content", self.sent.content, new.content)):
            if len(now) > len(old) and now.startswith(old):
                out.append((kind, now[len(old):]))
        self.sent = Split(new.reasoning if new.reasoning is not None else self.sent.reasoning,
                          new.content if new.content.startswith(self.sent.content) else self.sent.content)
        return out

    def feed(self, delta: str) -> list[tuple[str, str]]:
        """The pieces `delta` makes ready (possibly none: a partial tag is held back)."""
        self.raw += delta
        return self._diff(split_reasoning(self.raw, opened=self.opened, final=False))

    def finish(self, text: str | None = None) -> list[tuple[str, str]]:
        """What is left once the stream ended (`text`: the final full text, when it differs from the deltas)."""
        if text is not None:
            self.raw = text
        return self._diff(split_reasoning(self.raw, opened=self.opened, final=True))

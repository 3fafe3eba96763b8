"""`chattune data preview`: the rendered training text with the trained tokens marked (nanochat's debug view)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import DataConfig, DataSource
from .render import IGNORE, render_batch


def segments(input_ids: list[int], labels: list[int], tokenizer) -> list[tuple[str, bool]]:
    """Split a sequence into runs of trained / untrained tokens, decoded to text.

    Args:
        input_ids: the tokens.
        labels: their labels (``-100`` = not trained).
        tokenizer: the tokenizer that made them.

    Returns:
        ``[(text, trained), ...]`` in order; special tokens are shown as written.
    """
    out: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(input_ids) + 1):
        if i == len(input_ids) or (labels[i] != IGNORE) != (labels[start] != IGNORE):
            out.append((tokenizer.decode(input_ids[start:i], skip_special_tokens=False),
                        labels[start] != IGNORE))
            start = i
    return out


def preview(paths: Sequence[str], tokenizer, *, n: int = 3, fmt: str = "auto", system: str | None = None,
            max_length: int | None = None, loss: str = "assistant", thinking: str = "off",
            multi_turn: str = "split") -> list[dict[str, Any]]:
    """Render the first `n` conversations of the data files as training would.

    Args:
        paths: data files.
        tokenizer: tokenizer with a chat template.
        n: how many conversations.
        fmt, system: input shape and default system prompt.
        max_length, loss, thinking, multi_turn: render options, as in training.

    Returns:
        One dict per conversation: ``{"source", "row", "error", "skipped_turns", "sequences": [{"segments":
        [(text, trained)], "tokens", "trained_tokens", "truncated", "messages"}]}``.
    """
    from .formats import load_conversations

    data_cfg = DataConfig(system=system, loss=loss, thinking=thinking, multi_turn=multi_turn,
                          **({"max_length": max_length} if max_length else {}))
    convs, _ = load_conversations([DataSource(path=str(p), format=fmt) for p in paths], data_cfg)
    convs = convs[:n]
    results = render_batch([c.messages for c in convs], tokenizer, loss=loss, thinking=thinking,
                           multi_turn=multi_turn, max_length=max_length, tools=[c.tools for c in convs])
    out = []
    for c, res in zip(convs, results):
        out.append({
            "source": c.source, "row": c.row, "error": res.error,
            "skipped_turns": [{"message": k + 1, "why": why} for k, why in res.skipped_turns],
            "sequences": [{"segments": segments(r.input_ids, r.labels, tokenizer), "tokens": len(r.input_ids),
                           "trained_tokens": r.n_trained, "truncated": r.truncated,
                           "messages": r.n_messages} for r in res.sequences],
        })
    return out

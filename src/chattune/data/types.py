"""The one internal shape every reader and format produces: a conversation of role/content messages."""
from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    """A conversation ready to render.

    Attributes:
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``; an assistant
            message may carry ``"reasoning_content"`` (Qwen3 thinking text, rendered inside
            ``<think>`` by templates that support it).
        source: the file the conversation came from.
        row: 1-based line (JSON/JSONL) or row (CSV/xlsx/parquet) number in that file.
        meta: anything else worth keeping (e.g. the reference answer columns for eval).
    """

    messages: list[dict]
    source: str = ""
    row: int = 0
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"messages": self.messages, "source": self.source, "row": self.row, "meta": self.meta}

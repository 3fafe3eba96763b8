"""The one internal shape every reader and format produces: a conversation of role/content messages."""
from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Conversation:
    """A conversation ready to render.

    Attributes:
        messages: ``[{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]``; an assistant
            message may carry ``"reasoning_content"`` (Qwen3 thinking text, rendered inside
            ``<think>`` by templates that support it) and ``"tool_calls"``; a tool message answers a
            call (the shapes are documented in `chattune.data.tools`).
        source: the file the conversation came from.
        row: 1-based line (JSON/JSONL) or row (CSV/xlsx/parquet) number in that file.
        meta: anything else worth keeping (e.g. the reference answer columns for eval).
        tools: the functions the conversation may call (``apply_chat_template(tools=...)``), or None.
    """

    messages: list[dict]
    source: str = ""
    row: int = 0
    meta: dict = field(default_factory=dict)
    tools: list[dict] | None = None

    def to_dict(self) -> dict:
        return {"messages": self.messages, "source": self.source, "row": self.row, "meta": self.meta,
                **({"tools": self.tools} if self.tools else {})}

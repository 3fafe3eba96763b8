"""A multi-turn chat over a `Generator` (what ``chattune chat`` drives): history, system prompt, streamed replies."""
from __future__ import annotations

import threading
from collections.abc import Iterator

from .generate import Completion, Generator


class ChatSession:
    """A multi-turn chat over a `Generator`: keeps the history, streams each reply.

    Args:
        generator: the loaded model.
        system: system prompt put first in every conversation; None = the one the run trained with
            (``generator.system``), "" = none.
        **gen_kwargs: passed to `Generator.stream` (max_new_tokens, temperature, top_p, seed, stop).
    """

    def __init__(self, generator: Generator, system: str | None = None, **gen_kwargs):
        self.generator, self.gen_kwargs = generator, gen_kwargs
        self.system = (generator.system if system is None else system) or None
        self.history: list[dict] = []

    @property
    def messages(self) -> list[dict]:
        """The conversation as the model sees it: system prompt (if any) + history."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def reset(self) -> None:
        """Forget the history (the system prompt stays)."""
        self.history = []

    def set_system(self, text: str | None) -> None:
        """Replace the system prompt (empty/None removes it); the history stays."""
        self.system = (text or "").strip() or None

    def send(self, text: str, cancel: threading.Event | None = None) -> Iterator[str | Completion]:
        """Stream the reply to `text`; the turn joins the history once the reply is complete.

        Yields:
            str deltas, then the final `Completion`. An interrupted reply (the consumer stops
            iterating) leaves the history unchanged.
        """
        msgs = self.messages + [{"role": "user", "content": text}]
        final = None
        for part in self.generator.stream(msgs, cancel=cancel, **self.gen_kwargs):
            if isinstance(part, Completion):
                final = part
            yield part
        if final is not None:
            answer = {"role": "assistant", "content": final.content}
            if final.reasoning is not None:  # templates decide whether old reasoning is shown again
                answer["reasoning_content"] = final.reasoning
            self.history += [{"role": "user", "content": text}, answer]

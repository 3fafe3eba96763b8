"""A finished answer (`Completion`) and one arriving token by token (`RowStream`)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from collections.abc import Sequence
from typing import Any, Protocol

from .stopping import cut_at_stop, held_back


@dataclass
class Completion:
    """The result of one generation.

    Attributes:
        text: generated text without the end-of-turn token, cut before the first stop string.
        prompt_tokens: number of prompt tokens (the rendered conversation).
        completion_tokens: number of generated tokens counted up to and including the end-of-turn
            token (or the token that completed a stop string).
        finish_reason: "stop" (end-of-turn, a stop string or cancelled) or "length" (max_new_tokens hit).
        reasoning: the think block's text (None: the model wrote none), see `reasoning.split_reasoning`.
        content: the answer without the think block: what metrics score and clients get as ``content``.
        started, first_token: monotonic times the engine began this answer and produced its first token
            (None: not recorded, e.g. `Generator.generate`'s batch); the server's metrics read them.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    reasoning: str | None = None
    content: str | None = None
    started: float | None = field(default=None, compare=False, repr=False)
    first_token: float | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.content is None:
            self.content = self.text


class Finisher(Protocol):
    """What `RowStream` needs from a `Generator`."""

    tokenizer: Any

    @property
    def eos_token_ids(self) -> Sequence[int]: ...

    def completion(self, new_ids: list[int], prompt_len: int, max_new_tokens: int, stop: list[str] | None,
                   cancelled: bool = False) -> Completion: ...


class RowStream:
    """One answer arriving token by token: the text deltas to send and, at the end, its `Completion`.

    The one streaming rule (`stream_many` and the server's continuous batching use it): a full decode of
    the row's ids per token (multi-byte characters split across tokens come out whole), cut before the
    first stop string, holding back what the next tokens may still change (U+FFFD, a stop string's start).

    Args:
        gen: the `Generator` whose tokenizer and end-of-turn ids apply.
        prompt_len, max_new_tokens, stop: as in `Generator.completion`.
    """

    def __init__(self, gen: Finisher, prompt_len: int, max_new_tokens: int, stop: list[str] | None):
        self.gen, self.prompt_len, self.max_new_tokens, self.stop = gen, prompt_len, max_new_tokens, stop or []
        self.eos = set(gen.eos_token_ids)
        self.ids: list[int] = []
        self.sent = ""
        self.done = False
        self.started = time.monotonic()
        self.first_token: float | None = None

    def push(self, token: int) -> tuple[str, bool]:
        """Add one generated token; returns (text delta, whether the row has ended: end-of-turn, a stop
        string or max_new_tokens)."""
        if not self.ids:
            self.first_token = time.monotonic()
        self.ids.append(int(token))
        if token in self.eos:
            return "", True
        text = self.gen.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        text, hit = cut_at_stop(text, self.stop)
        ready = text if hit else text[:len(text) - held_back(text, self.stop)]
        delta = ""
        if len(ready) > len(self.sent) and ready.startswith(self.sent):
            delta, self.sent = ready[len(self.sent):], ready
        return delta, hit or len(self.ids) >= self.max_new_tokens

    def finish(self, cancelled: bool = False) -> tuple[str, Completion]:
        """End the row: the last text delta (what was held back) and the final `Completion`."""
        self.done = True
        final = replace(self.gen.completion(self.ids, self.prompt_len, self.max_new_tokens, self.stop,
                                            cancelled=cancelled), started=self.started, first_token=self.first_token)
        rest = final.text[len(self.sent):] if final.text.startswith(self.sent) else ""
        return rest, final

    def answer(self, job: Any) -> None:
        """End the row and hand `job` (an `engine.Job`) what is left: the held-back text (streams only), then
        the final `Completion` — how every engine ends an answered job."""
        rest, final = self.finish()
        if rest and job.stream:
            job.deliver(rest)
        job.deliver(final)

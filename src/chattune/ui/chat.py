"""The Chat page's models: `Generator.from_path` on a run dir (its own template and end-of-turn tokens), or on
the run's base model for compare mode, kept loaded for the next message.

At most `MAX_LOADED` models stay in memory (a run and its base); each is used by one stream at a time
(one model cannot run two ``generate`` calls at once efficiently, as in ``chattune serve``).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ChattuneError

if TYPE_CHECKING:
    from ..infer.generate import Generator

MAX_LOADED = 2


@dataclass(frozen=True)
class ChatModel:
    """A loaded model and what the Chat page needs to know about it."""

    key: str
    generator: Generator
    lock: threading.Lock
    thinking_supported: bool   # the chat template reads enable_thinking (Qwen3-style)


class Models:
    """Loaded generators by (path, role), least recently used dropped first."""

    def __init__(self):
        self._models: OrderedDict[str, ChatModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: str, *, base: bool = False) -> ChatModel:
        """The run's generator, or (``base``) its base model's, rendering with the run's thinking policy.

        Raises:
            ChattuneError: the run dir is not finished or its model cannot be loaded.
        """
        from ..infer.generate import Generator
        from ..rundir.load import load_run_base
        from ..rundir.read import read_run

        key = f"{'base' if base else 'run'}:{run_dir}"
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            info = read_run(run_dir)  # says so when training has not finished
            thinking = info.config.data.thinking
            # Compare mode: the base model as `chattune eval --compare base` loads it, with the run's template and
            # thinking policy, so both models see the same conversation.
            gen = (Generator.from_loaded(load_run_base(run_dir), info.base_model, thinking=thinking) if base
                   else Generator.from_path(run_dir, thinking=thinking))
            while len(self._models) >= MAX_LOADED:
                self._models.popitem(last=False)
            model = ChatModel(key=key, generator=gen, lock=threading.Lock(),
                              thinking_supported=_reads_enable_thinking(gen.tokenizer))
            self._models[key] = model
            return model


def _reads_enable_thinking(tokenizer) -> bool:
    from ..data.render import template_kwargs

    try:
        return "enable_thinking" in template_kwargs(tokenizer, "off")
    except ChattuneError:
        return False


def stream_reply(model: ChatModel, messages: list[dict], *, thinking: bool | None, max_new_tokens: int,
                 temperature: float, cancel: threading.Event) -> Iterator[dict]:
    """Stream one answer as events: ``{"delta": text}`` as tokens arrive, then ``{"done": {...}}``.

    Args:
        model: from `Models.get`.
        messages: the conversation (system prompt first, if any), ending with the user's message.
        thinking: True/False switch the template's enable_thinking (where it reads it); None keeps the run's.
        max_new_tokens, temperature: as in ``chattune chat``.
        cancel: set it to stop after the current token (the stop button, or the browser went away).
    """
    from ..infer.generate import Completion

    gen = model.generator
    if thinking is not None and model.thinking_supported:
        gen = gen.with_thinking("keep" if thinking else "off")  # the same loaded model, the other policy
    with model.lock:
        for part in gen.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=0.9 if temperature > 0 else 1.0, cancel=cancel):
            if isinstance(part, Completion):
                # reasoning/content: the think block split from the answer where the Generator splits it
                yield {"done": {"text": part.text, "finish_reason": part.finish_reason,
                                "reasoning": getattr(part, "reasoning", None),
                                "content": getattr(part, "content", None) or part.text,
                                "prompt_tokens": part.prompt_tokens, "completion_tokens": part.completion_tokens}}
            else:
                yield {"delta": part}

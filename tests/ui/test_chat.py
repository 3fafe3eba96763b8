"""Chat page helper: the thinking switch is a view of the loaded model (the shared one keeps its policy)."""
from __future__ import annotations

import threading

from chattune.infer.generate import Completion
from chattune.ui.chat import ChatModel, stream_reply


class _Gen:
    name, thinking, system = "run", "off", "你是客服"

    def __init__(self):
        self.calls = []

    def with_thinking(self, thinking):  # Generator.with_thinking's contract: a view, the original untouched
        import copy

        view = copy.copy(self)
        view.thinking = thinking
        return view

    def stream(self, messages, **kw):
        self.calls.append((self.thinking, messages, kw["max_new_tokens"]))
        yield "你"
        yield "好"
        yield Completion(text="你好", prompt_tokens=5, completion_tokens=2, finish_reason="stop")


def test_thinking_switch_is_a_view_and_events_carry_the_completion():
    gen = _Gen()
    model = ChatModel(key="run:x", generator=gen, lock=threading.Lock(), thinking_supported=True)
    msgs = [{"role": "user", "content": "hi"}]
    events = list(stream_reply(model, msgs, thinking=True, max_new_tokens=7, temperature=0.0,
                               cancel=threading.Event()))
    assert events[:2] == [{"delta": "你"}, {"delta": "好"}]
    assert events[2]["done"]["text"] == "你好" and events[2]["done"]["content"] == "你好"
    assert events[2]["done"]["finish_reason"] == "stop"
    list(stream_reply(model, msgs, thinking=None, max_new_tokens=7, temperature=0.0, cancel=threading.Event()))
    assert [c[0] for c in gen.calls] == ["keep", "off"] and gen.thinking == "off"  # the shared one is unchanged
    plain = ChatModel(key="run:y", generator=_Gen(), lock=threading.Lock(), thinking_supported=False)
    list(stream_reply(plain, msgs, thinking=True, max_new_tokens=7, temperature=0.0, cancel=threading.Event()))
    assert plain.generator.calls[0][0] == "off"  # no enable_thinking in the template: nothing to switch


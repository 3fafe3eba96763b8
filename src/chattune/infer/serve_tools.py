"""Tool calling over the OpenAI API: what a request's ``tools`` and ``tool_choice`` make of the prompt, and
the model's answer as OpenAI ``tool_calls`` (whole, or as stream deltas).

Decisions (each made here once):

* ``tool_choice: "none"`` renders no tools and parses nothing: a model that is shown tools may write a
  call anyway, and that markup would come back as content. History with tool calls still renders.
* ``auto`` (the default with tools): tools are rendered; calls the model writes are returned.
* a named function, or ``required``: the answer is *forced* to start with the template's own call opening
  (`ToolCallFormat.opening`: ``<tool_call>\\n{"name": "get_weather", "arguments":`` for Qwen3), appended
  to the prompt as tokens. We have no grammar-constrained decoding in every engine; a prefill uses only
  what the model learnt, works the same in hf, vLLM and llama.cpp (they all take the renderer's prompt),
  and still returns the model's own arguments. ``required`` names the function when only one is declared,
  else leaves the name to the model.
* A template without tool support answers 400 (`tool_calls.tool_call_format` says why); tools are never
  dropped silently.
* Malformed tool-call text (bad JSON, cut off) is returned as content with the engine's finish_reason
  (``stop``), never a 500: the client sees what the model wrote.
* Streaming: content before a call streams as it comes; text from where a call may begin is held until
  the answer ends (`ToolCallStream`), then each call goes out as OpenAI sends it: a delta with index, id,
  type and function name, then one with the argument text. Holding it is what lets a malformed call
  still come back as content, and keeps stream and non-stream answers equal.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ChattuneError
from .prompt import PREFIX
from .reasoning import split_reasoning
from .serve_schema import APIError, ChatCompletionRequest, NamedToolChoice
from .tool_calls import ToolCall, ToolCallFormat, ToolCallStream

if TYPE_CHECKING:
    from .generate import Completion
    from .prompt import PromptRenderer

_DELTA_FIELD = {"reasoning": "reasoning_content", "content": "content"}
# Closes the think block a thinking template's generation prompt opened, before a forced call.
_CLOSE_THINK = "\n</think>\n\n"


@dataclass(frozen=True)
class ToolUse:
    """How one request uses tools.

    Attributes:
        tools: the function definitions the prompt renders (None: none).
        fmt: the parser of the answer's tool calls (None: the answer is content only).
        prefix: text the answer is forced to start with ('' when free); part of the answer's text.
    """

    tools: list[dict] | None = None
    fmt: ToolCallFormat | None = None
    prefix: str = ""

    def messages(self, messages: list[dict]) -> list[dict]:
        """`messages` as the engine should render them: with the forced start as a PREFIX message."""
        if not self.prefix:
            return messages
        return [*messages, {"role": "assistant", "content": self.prefix, PREFIX: True}]


def tool_use(req: ChatCompletionRequest, renderer: PromptRenderer) -> ToolUse:
    """What `req`'s tools and tool_choice mean for `renderer`'s model (see the module doc).

    Raises:
        APIError: 400 when the model's chat template has no tool support.
    """
    if not req.tools or req.tool_choice == "none":
        return ToolUse()
    try:
        fmt = renderer.tool_format()
    except ChattuneError as e:
        raise APIError(400, f"this model cannot take tools: {e}", param="tools", code="tools_unsupported") from None
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice):
        prefix = fmt.opening(choice.function.name)
    elif choice == "required":
        prefix = fmt.opening(req.tools[0].function.name if len(req.tools) == 1 else None)
    else:
        prefix = ""
    if prefix and renderer.reasoning_opened:  # the prompt opened a think block: close it empty first
        prefix = _CLOSE_THINK + prefix
    return ToolUse(tools, fmt, prefix)


def openai_tool_calls(calls: tuple[ToolCall, ...]) -> list[dict]:
    """Parsed calls as OpenAI ``message.tool_calls`` (fresh ``call_…`` ids, arguments as JSON text)."""
    return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}} for c in calls]


@dataclass(frozen=True)
class Answer:
    """A finished answer as the API returns it.

    Attributes:
        content: the answer text (None when the model only called tools).
        reasoning: the think block's text (None: none was written).
        tool_calls: OpenAI tool calls (None: none).
        finish_reason: "tool_calls" when there are calls, else the engine's ("stop" / "length").
    """

    content: str | None
    reasoning: str | None
    tool_calls: list[dict] | None
    finish_reason: str


def answer(c: Completion, use: ToolUse, renderer: PromptRenderer) -> Answer:
    """The API answer for a finished `Completion` of a request that uses tools as `use` says."""
    content, reasoning = c.content, c.reasoning
    if use.prefix:  # the engine's text starts after the forced prefix
        split = split_reasoning(use.prefix + c.text, opened=renderer.reasoning_opened)
        content, reasoning = split.content, split.reasoning
    if use.fmt is None:
        return Answer(content, reasoning, None, c.finish_reason)
    parsed = use.fmt.parse(content or "")
    if not parsed.calls:
        return Answer(parsed.content, reasoning, None, c.finish_reason)
    return Answer(parsed.content or None, reasoning, openai_tool_calls(parsed.calls), "tool_calls")


class AnswerStream:
    """Raw text deltas of one streamed answer → OpenAI ``delta`` objects (reasoning, content, tool calls).

    Feeding every delta and then `finish` sends, per field, what `answer` returns for the whole text.
    """

    def __init__(self, use: ToolUse, renderer: PromptRenderer):
        self.split = renderer.reasoning_stream()
        self.tools = ToolCallStream(use.fmt) if use.fmt is not None else None
        self.prefix, self.pending = use.prefix, use.prefix  # the forced start goes out with the first delta

    def _deltas(self, pieces: list[tuple[str, str]]) -> list[dict]:
        out = []
        for kind, piece in pieces:
            if kind == "content" and self.tools is not None:
                piece = self.tools.feed(piece)
            if piece:
                out.append({_DELTA_FIELD[kind]: piece})
        return out

    def feed(self, delta: str) -> list[dict]:
        """The deltas `delta` makes ready (none while a tag or a possible call is held back)."""
        delta, self.pending = self.pending + delta, ""
        return self._deltas(self.split.feed(delta))

    def finish(self, c: Completion) -> tuple[list[dict], str]:
        """The remaining deltas and the finish_reason, once the engine delivered `c`."""
        out = self._deltas(self.split.finish(self.prefix + c.text))
        if self.tools is None:
            return out, c.finish_reason
        rest, parsed = self.tools.finish()
        if rest:
            out.append({"content": rest})
        if not parsed.calls:
            return out, c.finish_reason
        for i, call in enumerate(openai_tool_calls(parsed.calls)):
            fn = call["function"]
            out.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                        "function": {"name": fn["name"], "arguments": ""}}]})
            out.append({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]})
        return out, "tool_calls"

"""How a served model turns a conversation into prompt ids: exactly as training rendered it.

`PromptRenderer` is the one piece every engine shares (hf, vLLM, llama.cpp): the engines differ in how
they run a model, never in how a conversation is rendered, so the prompt a client's messages become is
the training prompt whichever engine answers. `Generator` holds one; the other engines build one from
the run's tokenizer without loading its weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ChattuneError
from .answer import Completion
from .reasoning import ReasoningStream, split_reasoning
from .stopping import cut_at_stop
from .tool_calls import ToolCallFormat, tool_call_format

# A last message {"role": "assistant", "content": TEXT, PREFIX: True} is not a turn: the answer must begin
# with TEXT (DeepSeek's chat-prefix convention). The server forces a tool call this way: the tokens of the
# call's opening follow the generation prompt, so every engine gets it from the one renderer.
PREFIX = "prefix"
_PROBE_TOOL = {"type": "function", "function": {"name": "probe", "parameters": {"type": "object", "properties": {}}}}


@dataclass
class PromptRenderer:
    """The run's tokenizer and rendering choices.

    Attributes:
        tokenizer: the run's tokenizer, carrying the chat template training used.
        name: the model name shown to users.
        eos_token_ids: end-of-turn token ids generation stops on (never empty).
        thinking: "off" or "keep" (Qwen3-style thinking, as in training).
        system: the system prompt the run trained with; put first when a conversation brings none.
        date: the day training pinned for templates that write today's date, or None.
    """

    tokenizer: Any
    name: str
    eos_token_ids: tuple[int, ...]
    thinking: str = "off"
    system: str | None = None
    date: str | None = None
    _opened: bool | None = field(default=None, init=False, repr=False, compare=False)
    _tool_format: ToolCallFormat | Exception | None = field(default=None, init=False, repr=False, compare=False)

    def with_system(self, messages: list[dict]) -> list[dict]:
        """`messages` with the run's system prompt first when they bring none (what training rendered)."""
        if self.system and not (messages and messages[0].get("role") == "system"):
            return [{"role": "system", "content": self.system}, *messages]
        return list(messages)

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The token ids of `messages` rendered for generation, exactly as training renders them.

        Args:
            messages: the conversation; a last assistant message marked ``PREFIX: True`` is the start the
                answer is forced to have (its text's tokens follow the generation prompt).
            tools: OpenAI function definitions the template renders (None: none).

        Raises:
            ChattuneError: an empty conversation; TemplateError: tools on a template that cannot render them.
        """
        prefix = ""
        if messages and messages[-1].get("role") == "assistant" and messages[-1].get(PREFIX):
            prefix, messages = str(messages[-1].get("content") or ""), messages[:-1]
        if not messages:
            raise ChattuneError("cannot generate from an empty conversation")
        from ..data.render import prompt_ids

        kw: dict[str, Any] = {"tools": tools} if tools else {}
        ids = list(prompt_ids(self.tokenizer, messages, thinking=self.thinking, date=self.date, **kw))
        if prefix:
            ids += self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        return ids

    def tool_format(self) -> ToolCallFormat:
        """The parser for tool calls this model writes (decided once from its chat template).

        Both halves must hold: its calls read back (`tool_calls.tool_call_format`) and its prompts render
        declared tools (`data.render.prompt_ids` refuses templates that would drop them; DeepSeek-V3's
        writes calls but never shows the model its tools).

        Raises:
            TemplateError: the template has no tool support; the message says which half is missing.
        """
        if self._tool_format is None:
            try:
                fmt = tool_call_format(self.tokenizer)
                self.prompt_ids([{"role": "user", "content": "Hi."}], tools=[_PROBE_TOOL])
                self._tool_format = fmt
            except ChattuneError as e:
                self._tool_format = e
        if isinstance(self._tool_format, Exception):
            raise self._tool_format
        return self._tool_format

    @property
    def reasoning_opened(self) -> bool:
        """Whether the generation prompt itself opens a think block (the model then writes only its close)."""
        if self._opened is None:
            probe = self.prompt_ids([{"role": "user", "content": "Hi."}])
            tail = self.tokenizer.decode(probe[-4:], skip_special_tokens=True)
            self._opened = tail.rstrip().endswith("<think>")
        return self._opened

    def reasoning_stream(self) -> ReasoningStream:
        """A splitter for this model's streamed text deltas (reasoning vs answer pieces)."""
        return ReasoningStream(opened=self.reasoning_opened)

    def completion(self, new_ids: list[int], prompt_len: int, max_new_tokens: int,
                   stop: list[str] | None, cancelled: bool = False) -> Completion:
        """Turn one answer's generated ids into a Completion (cut at end-of-turn, then at stop strings): the
        one rule for every engine, so an engine's own detokenizer never changes an answer.

        Args:
            new_ids: the answer's generated ids (anything after its first end-of-turn is ignored).
            prompt_len: its prompt's token count.
            max_new_tokens: its limit ("length" when reached without a stop).
            stop: its stop strings.
            cancelled: it was stopped early on purpose (finish_reason "stop").
        """
        eos = set(self.eos_token_ids)
        n, hit_eos = len(new_ids), False
        for i, t in enumerate(new_ids):
            if t in eos:
                n, hit_eos = i + 1, True
                break
        kept = new_ids[:n - 1] if hit_eos else new_ids[:n]
        text = self.tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        text, hit_stop = cut_at_stop(text, stop)
        if hit_stop:
            # Count tokens only up to the one that completed the stop string: generate() pads a stopped
            # row afterwards, and those pads are not part of the completion.
            n = next(k for k in range(1, len(kept) + 1) if cut_at_stop(
                self.tokenizer.decode(kept[:k], skip_special_tokens=True, clean_up_tokenization_spaces=False),
                stop)[1])
        if hit_eos or hit_stop or cancelled or n < max_new_tokens:
            reason = "stop"
        else:
            reason = "length"
        if not (hit_eos or hit_stop):
            # Cut mid-character (length or cancel): drop the incomplete UTF-8 tail, which decodes as
            # U+FFFD and which streaming held back anyway.
            text = text.rstrip("\ufffd")
        split = split_reasoning(text, opened=self.reasoning_opened)
        return Completion(text=text, prompt_tokens=prompt_len, completion_tokens=n, finish_reason=reason,
                          reasoning=split.reasoning, content=split.content)

"""Tool calls out of generated text, read with the same knowledge the chat template writes them with.

A chat template that supports tools writes an assistant tool call in its own markup; a model trained on
that template writes the same markup back. `tool_call_format` picks the parser from the template and
proves the pick by rendering a probe tool call through the template and reading it back (so a template
that only *mentions* a marker is not trusted). Known formats, as the real templates render them:

* ``hermes`` (Qwen2.5/Qwen3, Hermes, SmolLM3): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
  blocks, possibly several, with text around them.
* ``llama3_json`` (Llama-3.1/3.2/3.3): the whole answer is ``{"name": ..., "parameters": {...}}``
  (``<|python_tag|>`` in front is a special token the decode already dropped).
* ``deepseek_v3``: ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\nARGS\\n```
  <｜tool▁call▁end｜>…<｜tool▁calls▁end｜>`` (these markers are not special tokens: decoding keeps them).

A template with none of these raises `TemplateError` ("this template has no tool support"): tools are
refused, never dropped silently. Like vLLM's parsers, one unreadable call makes the whole answer
content (``malformed=True``): returning half of the calls would hand a client an action plan it never
asked for. Parsing runs on the answer only (after the think block is split off), so reasoning that
mentions ``<tool_call>`` never becomes a call.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import TemplateError


@dataclass(frozen=True)
class ToolCall:
    """One function call the model wrote.

    Attributes:
        name: the function's name.
        arguments: its arguments (a JSON object).
        raw: the call's text as the model wrote it (markup included).
    """

    name: str
    arguments: dict
    raw: str


@dataclass(frozen=True)
class ParsedTools:
    """Generated answer text split into prose and tool calls.

    Attributes:
        content: the text outside the calls, stripped ('' when there is none); when `malformed`, the whole
            text, stripped.
        calls: the calls in order (empty when the model answered in prose, or when `malformed`).
        malformed: the model started a tool call that cannot be read (bad JSON, no name, cut off).
    """

    content: str
    calls: tuple[ToolCall, ...]
    malformed: bool = False


def _as_call(body: str, raw: str, keys: tuple[str, ...]) -> ToolCall | None:
    """The call a JSON object ``{"name": ..., <key>: {...}}`` describes, or None if it describes none.

    Arguments may be an object or a JSON string holding one (some models write them as strings, as the
    OpenAI API sends them); missing arguments mean a call without arguments.
    """
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    return _call_from_obj(obj, raw, keys)


def _call_from_obj(obj: Any, raw: str, keys: tuple[str, ...]) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
        return None
    args: Any = next((obj[k] for k in keys if k in obj), {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"].strip(), args, raw)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class ToolCallFormat:
    """How one family of templates writes tool calls: parse, where a call may begin, how a call opens."""

    name = ""

    def parse(self, text: str) -> ParsedTools:
        """Split generated answer text (special tokens already dropped) into content and calls."""
        raise NotImplementedError

    def hold_from(self, text: str) -> int:
        """Where in `text` (a stream's answer so far) a tool call may begin: what follows must wait until the
        answer ends (a delta sent as content cannot be taken back); ``len(text)`` when nothing may."""
        raise NotImplementedError

    def opening(self, name: str | None) -> str:
        """The text that starts a call to `name` (None: to a function the model picks), ending on a token
        boundary of a rendered call, so a prompt followed by it reads as the template would write it."""
        raise NotImplementedError


class HermesFormat(ToolCallFormat):
    name = "hermes"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    # An unclosed last block still counts when its JSON is complete: a stop string or the end-of-turn
    # token can end generation before the closing tag.
    _BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)

    def parse(self, text: str) -> ParsedTools:
        if self.OPEN not in text:
            return ParsedTools(text.strip(), ())
        calls, prose, pos = [], [], 0
        for m in self._BLOCK.finditer(text):
            prose.append(text[pos:m.start()])
            pos = m.end()
            call = _as_call(m.group(1), m.group(0), ("arguments", "parameters"))
            if call is None:
                return ParsedTools(text.strip(), (), malformed=True)
            calls.append(call)
        prose.append(text[pos:])
        return ParsedTools("".join(prose).strip(), tuple(calls))

    def hold_from(self, text: str) -> int:
        at = text.find(self.OPEN)
        return at if at >= 0 else len(text) - _partial_suffix(text, self.OPEN)

    def opening(self, name: str | None) -> str:
        head = self.OPEN + '\n{"name": "'
        # Ends on '":' — the template's call renders ``"arguments": {...}`` as tokens '":', ' {"', so the
        # model continues with the same tokens training showed it.
        return head if name is None else head + name + '", "arguments":'


class Llama3JsonFormat(ToolCallFormat):
    name = "llama3_json"
    TAG = "<|python_tag|>"  # special: normally gone after decoding; dropped here when it is not
    _CALL_START = re.compile(r'\{\s*"name"\s*:')

    def parse(self, text: str) -> ParsedTools:
        body = text.strip()
        if body.startswith(self.TAG):
            body = body[len(self.TAG):].lstrip()
        if not body.startswith("{"):
            return ParsedTools(text.strip(), ())
        # Several calls are written separated by ';' (as vLLM's llama3_json parser reads them); the
        # template itself renders one call per message.
        decoder, pos = json.JSONDecoder(), 0
        calls: list[ToolCall] = []
        while pos < len(body):
            try:
                obj, end = decoder.raw_decode(body, pos)
            except ValueError:
                obj, end = None, -1
            call = _call_from_obj(obj, body[pos:end], ("parameters", "arguments")) if end > 0 else None
            if call is None:
                # A JSON answer that is no call is prose; a call that cannot be read is malformed.
                looks_like_call = bool(self._CALL_START.match(body, pos))
                return ParsedTools(text.strip(), (), malformed=looks_like_call or bool(calls))
            calls.append(call)
            pos = end
            while pos < len(body) and (body[pos].isspace() or body[pos] == ";"):
                pos += 1
        return ParsedTools("", tuple(calls))

    def hold_from(self, text: str) -> int:
        body = text.lstrip()
        lead = len(text) - len(body)
        # The call is the whole answer: once it opens with '{' (or nothing but whitespace came yet), wait.
        if not body or body[0] == "{" or body.startswith(self.TAG) or self.TAG.startswith(body):
            return lead
        return len(text)

    def opening(self, name: str | None) -> str:
        head = '{"name": "'
        # Ends on '":' like the template's '"parameters": ' + arguments|tojson (tokens '":', ' {"').
        return head if name is None else head + name + '", "parameters":'


class DeepSeekV3Format(ToolCallFormat):
    name = "deepseek_v3"
    CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
    CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
    _CALL = re.compile(r"<｜tool▁call▁begin｜>(?P<type>[^<\n]*)<｜tool▁sep｜>(?P<name>[^\n]*)\n```json\n"
                       r"(?P<args>.*?)\n```\s*(?:<｜tool▁call▁end｜>|\Z)", re.S)

    def _start(self, text: str) -> int:
        found = [i for i in (text.find(self.CALLS_BEGIN), text.find(self.CALL_BEGIN)) if i >= 0]
        return min(found) if found else -1

    def parse(self, text: str) -> ParsedTools:
        start = self._start(text)
        if start < 0:
            return ParsedTools(text.strip(), ())
        block, after = text[start:], ""
        if self.CALLS_END in block:
            block, after = block.split(self.CALLS_END, 1)
        calls, pos = [], block.find(self.CALL_BEGIN)
        rest = block[:max(pos, 0)].replace(self.CALLS_BEGIN, "")
        while pos >= 0 and (m := self._CALL.match(block, pos)):
            try:
                args = json.loads(m.group("args"))
            except ValueError:
                args = None
            if m.group("type").strip() != "function" or not isinstance(args, dict) or not m.group("name").strip():
                break
            calls.append(ToolCall(m.group("name").strip(), args, m.group(0)))
            nxt = block.find(self.CALL_BEGIN, m.end())
            rest += block[m.end():nxt if nxt >= 0 else len(block)]
            pos = nxt
        if pos >= 0 or not calls or rest.strip():  # a call that did not match, or stray text among calls
            return ParsedTools(text.strip(), (), malformed=True)
        return ParsedTools((text[:start] + after).strip(), tuple(calls))

    def hold_from(self, text: str) -> int:
        start = self._start(text)
        if start >= 0:
            return start
        return len(text) - max(_partial_suffix(text, self.CALLS_BEGIN), _partial_suffix(text, self.CALL_BEGIN))

    def opening(self, name: str | None) -> str:
        head = self.CALLS_BEGIN + self.CALL_BEGIN + "function" + self.SEP
        return head if name is None else head + name + "\n```json\n"


# Marker in the template source → the format it suggests; the probe render decides.
_BY_MARKER: tuple[tuple[str, ToolCallFormat], ...] = (
    ("<tool_call>", HermesFormat()),
    ("<｜tool▁call▁begin｜>", DeepSeekV3Format()),
    ('"parameters"', Llama3JsonFormat()),
)
FORMATS = tuple(f.name for _, f in _BY_MARKER)
_PROBE_CALL: dict[str, Any] = {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}


def _render(tokenizer, conv: list[dict], gen: bool, kw: dict) -> str:
    try:
        return tokenizer.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False, **kw)
    except Exception:  # templates raise anything for shapes they do not take
        template = getattr(tokenizer, "chat_template", None)
        if not isinstance(template, str):
            raise
        # transformers 5 drops None-valued message keys before rendering, and DeepSeek-V3's template
        # needs ``content: None`` on a tool-call turn; its markup is still its own, so read it directly.
        from transformers.utils.chat_template_utils import render_jinja_template

        out: Any = render_jinja_template([conv], chat_template=template, add_generation_prompt=gen,
                                         **{**tokenizer.special_tokens_map, **kw})
        return str(out[0][0])  # (texts, generation indices)


def _probe_answers(tokenizer) -> list[str]:
    """An assistant tool-call turn rendered by the template, as a model writing it would decode it
    (special tokens dropped, think block split off); one per message shape the template renders."""
    from ..data.render import template_kwargs
    from .reasoning import split_reasoning

    # Rendered with tools declared, as inference renders them: a tokenizer with named templates picks its
    # "tool_use" one only when tools are given.
    kw = {**template_kwargs(tokenizer, "off"), "tools": [{"type": "function", "function": {
        "name": _PROBE_CALL["name"], "parameters": {"type": "object", "properties": {}}}}]}
    user = {"role": "user", "content": "What is the weather in Paris for two days?"}
    fn: dict[str, Any] = dict(_PROBE_CALL)
    # Templates differ in what they accept: arguments as an object (Qwen3, Llama-3.1) or a JSON string
    # with content None (DeepSeek-V3 concatenates them).
    variants: list[dict[str, Any]] = [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": fn}]},
                {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
                    "name": fn["name"], "arguments": json.dumps(fn["arguments"])}}]}]
    out = []
    for turn in variants:
        try:
            prompt, full = _render(tokenizer, [user], True, kw), _render(tokenizer, [user, turn], False, kw)
        except Exception:  # noqa: BLE001 — this shape is not one the template takes
            continue
        if not full.startswith(prompt):
            continue
        ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        out.append(split_reasoning(text).content)
    return out


def tool_call_format(tokenizer) -> ToolCallFormat:
    """The tool-call parser for `tokenizer`'s chat template.

    Args:
        tokenizer: a transformers tokenizer with a chat template.

    Returns:
        The `ToolCallFormat` whose parser reads back a tool call the template renders.

    Raises:
        TemplateError: the template has no tool support chattune can parse (names the template and the
            known formats).
    """
    from ..data.template_policy import template_text

    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    source = template_text(tokenizer)
    fmt = next((f for marker, f in _BY_MARKER if marker in source), None)
    if fmt is None:
        raise TemplateError(f"the chat template of '{name}' has no tool support: it writes no tool-call markup "
                            f"chattune can parse (known: {', '.join(FORMATS)}); leave tools out, or use a template "
                            "that renders tool calls (model.chat_template)")
    shown = "nothing"
    for answer in _probe_answers(tokenizer):
        parsed = fmt.parse(answer)
        if [(c.name, c.arguments) for c in parsed.calls] == [(_PROBE_CALL["name"], _PROBE_CALL["arguments"])]:
            return fmt
        shown = repr(answer[:200])
    raise TemplateError(f"the chat template of '{name}' looks like the {fmt.name} tool-call format, but a tool "
                        f"call it renders does not read back as one (rendered: {shown}); chattune cannot serve or "
                        "score tools with it")


def parse_tool_calls(text: str, fmt: ToolCallFormat) -> ParsedTools:
    """`fmt.parse(text)`: the answer text (think block already split off) as content + tool calls."""
    return fmt.parse(text)


class ToolCallStream:
    """Streamed answer deltas → content deltas now, tool calls at the end.

    Text from where a call may begin is held until `finish`, which parses the whole answer exactly as
    `parse_tool_calls` does: the streamed content pieces concatenate to the non-streamed `content`, and a
    malformed call still comes back as content (nothing was sent as a call that could be taken back).
    """

    def __init__(self, fmt: ToolCallFormat):
        self.fmt, self.text, self.sent = fmt, "", ""

    def _diff(self, now: str) -> str:
        if len(now) > len(self.sent) and now.startswith(self.sent):
            piece, self.sent = now[len(self.sent):], now
            return piece
        return ""

    def feed(self, delta: str) -> str:
        """The content that `delta` makes safe to send ('' while it may be part of a call)."""
        self.text += delta
        # Stripped like `ParsedTools.content`, so a trailing newline before a call is never sent.
        return self._diff(self.text[:self.fmt.hold_from(self.text)].strip())

    def finish(self) -> tuple[str, ParsedTools]:
        """The content still to send and the parse of the whole answer."""
        parsed = self.fmt.parse(self.text)
        return self._diff(parsed.content), parsed

"""Tool calling in the one conversation shape: read it from OpenAI and ShareGPT (LLaMA-Factory) rows, pair
calls with their results, and find what is wrong with it (`tool_problems`, reported by ``data check``).

The shape every reader produces (what ``apply_chat_template(..., tools=...)`` expects, transformers' docs):

* ``Conversation.tools``: ``[{"type": "function", "function": {"name", "description", "parameters"}}]``
  (a bare ``{"name", ...}`` function, as LLaMA-Factory writes them, is wrapped);
* an assistant message that calls: ``{"role": "assistant", "content": str ("" when it only calls),
  "tool_calls": [{"type": "function", "function": {"name": str, "arguments": dict}[, "id": str]}]}``;
  arguments that are not a JSON object stay the text they were (``data check`` reports them);
* a result: ``{"role": "tool", "content": str[, "tool_call_id": str][, "name": str]}``; ``name`` is filled
  from the call it answers when the row leaves it out.

How a template wants calls written (arguments as a dict or as JSON text, content "" or None) is decided
at render time by `template_policy.tool_support`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Raw role names of a tool result: OpenAI "tool" (and its older "function"), LLaMA-Factory "observation",
# Llama-3.1 "ipython".
RESULT_ROLES = ("tool", "function", "observation", "ipython")
# ShareGPT (LLaMA-Factory): an assistant turn whose value is the call(s) as JSON.
CALL_ROLES = ("function_call",)


class ToolShapeError(ValueError):
    """A tool field that cannot be read; the caller adds file, row and field."""


def _json_text(value: Any) -> Any:
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ToolShapeError(f"is not valid JSON ({e.msg} at char {e.pos}): {value[:80]!r}") from None
    return value


def parse_tools(value: Any) -> list[dict] | None:
    """The declared functions of a row or data source, in the OpenAI shape.

    Args:
        value: a list of tools, or its JSON text (LLaMA-Factory's ``tools`` column); None/"" for none.

    Returns:
        ``[{"type": "function", "function": {...}}]`` or None when nothing is declared.

    Raises:
        ToolShapeError: not a list of function objects with a name.
    """
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and value != value):
        return None
    value = _json_text(value)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ToolShapeError(f"is {type(value).__name__}; expected a list of functions like "
                             '[{"type": "function", "function": {"name": ..., "parameters": {...}}}]')
    out = []
    for i, t in enumerate(value):
        fn = t.get("function") if isinstance(t, dict) and isinstance(t.get("function"), dict) else t
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ToolShapeError(f"[{i}] is {json.dumps(t, ensure_ascii=False, default=str)[:80]}; expected a "
                                 'function with a name: {"name": ..., "description": ..., "parameters": {...}}')
        out.append({"type": "function", "function": fn})
    return out or None


def _arguments(value: Any) -> Any:
    """Call arguments as a dict when they are a JSON object (given as one or as its text), else unchanged."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            return value  # kept as written: `tool_problems` names it, render refuses nothing silently
        return parsed if isinstance(parsed, dict) else value
    return {} if value is None else value


def _call(obj: Any, where: str) -> dict:
    fn = obj.get("function") if isinstance(obj, dict) and isinstance(obj.get("function"), dict) else obj
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise ToolShapeError(f"{where} is {json.dumps(obj, ensure_ascii=False, default=str)[:80]}; expected a call "
                             '{"type": "function", "function": {"name": ..., "arguments": {...}}}')
    # LLaMA-Factory and Llama-3 write "parameters" where OpenAI writes "arguments"
    args = fn.get("arguments", fn.get("parameters"))
    call: dict = {"type": "function", "function": {"name": fn["name"].strip(), "arguments": _arguments(args)}}
    if isinstance(obj, dict) and obj.get("id"):
        call["id"] = str(obj["id"])
    return call


def openai_calls(message: dict, where: str) -> list[dict]:
    """The calls of an OpenAI assistant message (``tool_calls``, or the legacy single ``function_call``).

    Raises:
        ToolShapeError: ``tool_calls`` is not a list of calls with a function name.
    """
    calls = message.get("tool_calls")
    if calls is None and isinstance(message.get("function_call"), dict):
        calls = [message["function_call"]]
    if calls in (None, []):
        return []
    calls = _json_text(calls)
    if not isinstance(calls, list):
        raise ToolShapeError(f"{where}.tool_calls is {type(calls).__name__}; expected a list of calls")
    return [_call(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(calls)]


def sharegpt_calls(value: Any, where: str) -> list[dict]:
    """The calls of a LLaMA-Factory ``function_call`` turn: ``{"name", "arguments"}`` or a list of them, as JSON.

    Raises:
        ToolShapeError: not JSON, or not call objects with a name.
    """
    parsed = _json_text(value)
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list) or not parsed:
        raise ToolShapeError(f"{where} is {str(value)[:80]!r}; expected the call as JSON: "
                             '{"name": ..., "arguments": {...}} (or a list of them)')
    return [_call(c, f"{where}[{i}]") for i, c in enumerate(parsed)]


def result_content(value: Any) -> Any:
    """A tool result's content as text: an object or list result becomes its JSON."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


@dataclass(frozen=True)
class Pairing:
    """Which call each tool result answers.

    Attributes:
        answers: per tool message index, ``(assistant message index, call index)`` or None (no call to answer).
        unanswered: ``(assistant message index, call index)`` of calls no result answers, except the calls
            of a conversation's last message (a row that ends with the call teaches the call itself).
    """

    answers: dict[int, tuple[int, int] | None]
    unanswered: list[tuple[int, int]]


def _match(messages: Sequence[dict], open_calls: list[tuple[int, int]], tid: Any, name: Any) -> tuple[int, int] | None:
    calls = [(a, c, messages[a]["tool_calls"][c]) for a, c in open_calls]
    if tid and any(call.get("id") for *_, call in calls):  # ids on both sides: only the same id answers
        return next(((a, c) for a, c, call in calls if call.get("id") == tid), None)
    if name:
        return next(((a, c) for a, c, call in calls if call["function"]["name"] == name), None)
    return open_calls[0] if open_calls else None


def pair_calls(messages: Sequence[dict]) -> Pairing:
    """Pair every tool result with a call of the assistant message before it: by ``tool_call_id`` when the calls
    carry ids, else by ``name``, else the first call still open (in order, as OpenAI and LLaMA-Factory write them)."""
    answers: dict[int, tuple[int, int] | None] = {}
    unanswered: list[tuple[int, int]] = []
    open_calls: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "assistant":
            unanswered += open_calls
            open_calls = [(i, c) for c in range(len(m.get("tool_calls") or []))]
        elif role == "tool":
            match = _match(messages, open_calls, m.get("tool_call_id"), m.get("name"))
            if match is not None:
                open_calls.remove(match)
            answers[i] = match
        else:
            unanswered += open_calls
            open_calls = []
    if open_calls and open_calls[0][0] != len(messages) - 1:
        unanswered += open_calls
    return Pairing(answers, unanswered)


def name_results(messages: list[dict]) -> None:
    """Give each tool result the name (and id) of the call it answers where the row left them out (in place)."""
    for i, match in pair_calls(messages).answers.items():
        if match is None:
            continue
        call = messages[match[0]]["tool_calls"][match[1]]
        messages[i].setdefault("name", call["function"]["name"])
        if call.get("id"):
            messages[i].setdefault("tool_call_id", call["id"])


@dataclass(frozen=True)
class ToolProblem:
    """One finding of `tool_problems`: ``level`` is "error" (training would teach something wrong) or "warning"."""

    level: str
    message: int  # 1-based message number
    text: str


def _schema_problems(args: dict, fn: dict, k: int, name: str) -> list[ToolProblem]:
    params = fn.get("parameters")
    params = params if isinstance(params, dict) else {}
    required = [r for r in params.get("required") or [] if isinstance(r, str)]
    props = params.get("properties") if isinstance(params.get("properties"), dict) else None
    out = []
    missing = [r for r in required if r not in args]
    if missing:
        out.append(ToolProblem("error", k, f"call to {name!r} lacks required argument(s) {missing} "
                                           f"(declared required: {required})"))
    if props is not None:
        extra = [a for a in args if a not in props]
        if extra:
            out.append(ToolProblem("warning", k, f"call to {name!r} passes argument(s) {extra} that its schema "
                                                 f"does not declare (declared: {sorted(props)})"))
    return out


def tool_problems(messages: Sequence[dict], tools: Sequence[dict] | None) -> list[ToolProblem]:
    """What is wrong with a conversation's tool use.

    Errors: a call to a function the row's tools do not declare; arguments that are not a JSON object or
    lack a required key of the declared schema; a tool result that answers no call. Warnings: calls in a
    row that declares no tools (the model would learn to call functions it is never shown, unless the
    system prompt lists them); a call no result answers before the conversation goes on; arguments the
    schema does not declare.

    Args:
        messages: the conversation in the shape above.
        tools: the row's declared tools (OpenAI shape) or None.

    Returns:
        The problems, in message order.
    """
    declared = {t["function"]["name"]: t["function"] for t in tools or []}
    out: list[ToolProblem] = []
    any_call = False
    for k, m in enumerate(messages, 1):
        for call in m.get("tool_calls") or []:
            any_call = True
            name, args = call["function"]["name"], call["function"]["arguments"]
            if declared and name not in declared:
                out.append(ToolProblem("error", k, f"calls {name!r}, which the row's tools do not declare "
                                                   f"(declared: {sorted(declared)})"))
            if not isinstance(args, dict):
                what = "not valid JSON" if isinstance(args, str) else f"a {type(args).__name__}"
                out.append(ToolProblem("error", k, f"arguments of the call to {name!r} are {what}: "
                                                   f"{str(args)[:80]!r}; expected a JSON object"))
            elif name in declared:
                out += _schema_problems(args, declared[name], k, name)
    pairing = pair_calls(messages)
    for i, match in pairing.answers.items():
        if match is None:
            m = messages[i]
            named = f" (tool_call_id {m['tool_call_id']!r})" if m.get("tool_call_id") else \
                f" (name {m['name']!r})" if m.get("name") else ""
            out.append(ToolProblem("error", i + 1, f"tool result{named} answers no call of the assistant message "
                                                   "before it"))
    for a, c in pairing.unanswered:
        out.append(ToolProblem("warning", a + 1, f"the call to {messages[a]['tool_calls'][c]['function']['name']!r} "
                                                 "is never answered by a tool result"))
    if any_call and not declared:
        out.append(ToolProblem("warning", 1, "the row calls functions but declares no tools (a `tools` field); "
                                             "the model never sees their schemas unless the system prompt lists them"))
    return sorted(out, key=lambda p: p.message)


def parsed_arguments(messages: Sequence[dict]) -> list[dict]:
    """Messages whose calls' arguments are dicts where they are JSON-object text (OpenAI clients send text;
    templates such as Llama-3.1's would write text twice-encoded). Other messages are returned as they are."""
    out = []
    for m in messages:
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if calls and isinstance(calls, list):
            m = {**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": _arguments(
                c["function"].get("arguments"))}} if isinstance(c, dict) and isinstance(c.get("function"), dict)
                else c for c in calls]}
        out.append(m)
    return out


def located_problems(conversations: Sequence) -> list[tuple[str, str]]:
    """`tool_problems` of many conversations as ``(level, "file, line/row N: message k: problem")``.

    Args:
        conversations: `chattune.data.types.Conversation` objects (messages, tools, source, row).
    """
    return [(p.level, f"{c.source}, line/row {c.row}: message {p.message}: {p.text}")
            for c in conversations for p in tool_problems(c.messages, c.tools)]

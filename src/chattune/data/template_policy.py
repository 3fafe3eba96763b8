"""How chattune calls a chat template, identically in training and at inference.

Four rules, each decided here once (render.py, inference and ``data check`` all go through them):

* **Control tokens in content are text.** A literal ``<|im_end|>`` inside a message would otherwise be
  encoded as the real end-of-turn token: an answer holding one trains an end-of-turn mid-answer (the rest
  can never be generated) and user text can forge turn boundaries. transformers'
  ``apply_chat_template(..., sanitize_control_tokens=True)`` encodes control tokens found in messages as
  ordinary text and keeps only those the template writes; with transformers 5.23 it does so on the real
  Qwen3, Llama-3, Gemma-3, DeepSeek-V3 and SmolLM2 templates (tests/data/test_render.py). A conversation
  without control tokens encodes the same either way, so training takes the batched path for those and
  the sanitized one only for conversations that hold one; inference always sanitizes.
* **A pinned date.** Templates that call ``strftime_now`` (Llama-3.2/3.3) write today's date into every
  prompt. Training pins the day (``data.date``, recorded in the run dir's config) and inference renders
  with the same day, by defining a ``strftime_now`` macro in front of the template that returns that
  day for each format the template uses (Jinja kwargs cannot carry a function into the sandbox).
* **A generation prompt is required.** A template that renders the same text with and without
  ``add_generation_prompt`` would make training learn the role header as part of every answer and
  inference start without it; such a template is refused with the fix.
* **Tools in the form the template reads, or a refusal.** Whether a template renders ``tools=``, assistant
  ``tool_calls`` (arguments as a dict or as JSON text) and ``tool`` results is found by rendering probes
  (`tool_support`); a conversation whose tools the template would drop is refused naming the template
  (`tool_messages`), never trained or prompted without them.
"""
from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import TemplateError

_STRFTIME = re.compile(r"strftime_now\(\s*(['\"])(.*?)\1\s*\)")


def template_text(tokenizer) -> str:
    """The tokenizer's chat template source ('' when it has none; named templates joined)."""
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):  # named templates ("default", "tool_use", ...)
        return "\n".join(str(v) for v in tpl.values())
    return tpl or ""


def reads_date(tokenizer) -> bool:
    """Whether the chat template writes today's date (calls ``strftime_now``)."""
    return "strftime_now" in template_text(tokenizer)


def today() -> str:
    """Today's date (UTC) as YYYY-MM-DD, the day a run pins when its config names none."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def pinned_template(tokenizer, day: str) -> str:
    """The tokenizer's default chat template with ``strftime_now`` fixed to `day` (YYYY-MM-DD).

    Raises:
        TemplateError: `day` is not a date, or the template calls strftime_now with a format that is not a
            string literal (then the formats cannot be known in advance).
    """
    try:
        d = datetime.date.fromisoformat(day)
    except (TypeError, ValueError):
        raise TemplateError(f"data.date={day!r} is not a date; expected YYYY-MM-DD") from None
    tpl = tokenizer.get_chat_template()
    formats = sorted({m.group(2) for m in _STRFTIME.finditer(tpl)})
    if tpl.count("strftime_now(") != len(_STRFTIME.findall(tpl)):
        raise TemplateError("the chat template calls strftime_now with a format that is not a string literal; "
                            "chattune cannot pin its date (pass a template with model.chat_template)")
    branches = "".join(("{%- if" if i == 0 else "{%- elif") + f" f == {json.dumps(fmt)} -%}}{d.strftime(fmt)}"
                       for i, fmt in enumerate(formats))
    return "{%- macro strftime_now(f) -%}" + branches + "{%- endif -%}{%- endmacro -%}\n" + tpl


def control_tokens(tokenizer) -> tuple[str, ...]:
    """The tokens ``sanitize_control_tokens=True`` encodes as text when they appear in messages.

    transformers keeps this set in a private helper (special tokens plus added tokens the template's text
    holds); we ask it rather than keep a copy that could drift from what the sanitizer really does.
    """
    try:
        return tuple(tokenizer._get_control_tokens(tokenizer.get_chat_template()))
    except (AttributeError, ValueError):
        return tuple(t for t in getattr(tokenizer, "all_special_tokens", []) if t)


def _strings(obj) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def control_tokens_in(messages: Sequence[dict], tokens: Sequence[str]) -> list[tuple[int, str]]:
    """``(message index, token)`` for each control token found in a message's values (content, reasoning...)."""
    found = []
    for i, m in enumerate(messages):
        text = "\x00".join(_strings(m))
        found += [(i, t) for t in tokens if t in text]
    return found


def require_generation_prompt(tokenizer, kwargs: dict) -> None:
    """Refuse a template whose generation prompt is empty (see the module docstring).

    Raises:
        TemplateError: with the fix.
    """
    probe = [{"role": "user", "content": "Hello."}]
    try:
        with_gen = tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False, **kwargs)
        without = tokenizer.apply_chat_template(probe, add_generation_prompt=False, tokenize=False, **kwargs)
    except Exception:  # noqa: BLE001 — templates raise anything; the caller's probe reports it
        return
    if with_gen == without:
        raise TemplateError(
            "the chat template writes nothing for add_generation_prompt=True, so inference would not open an "
            "assistant turn and training would teach the assistant header as part of every answer. Add the "
            "header at the end of the template, e.g. for ChatML "
            "`{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}`, and pass the "
            "fixed file with model.chat_template")


# ---------------------------------------------------------------- tools: what the template renders, in which form

_PROBE_NAME, _PROBE_ARGS, _PROBE_TEXT, _PROBE_RESULT = "probe_lookup", {"q": "probe-value-7"}, "Probe says.", "probe-42"
_PROBE_TOOL = {"type": "function", "function": {
    "name": _PROBE_NAME, "description": "Probe.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
_SUPPORT: dict[tuple[str, str], ToolSupport] = {}


@dataclass(frozen=True)
class ToolSupport:
    """How a chat template handles tools, found by rendering probes (never by reading its markup).

    Attributes:
        template: the tokenizer's name, for messages.
        declares: ``apply_chat_template(tools=...)`` changes the prompt (False: the template ignores tools).
        args_as_text: calls are rendered with ``arguments`` as JSON text rather than a dict (Qwen3 and
            Llama-3.1 take a dict); None when the template renders no ``tool_calls`` in either form (DeepSeek-V3's
            renders calls only when content is None, a key transformers drops before rendering).
        content_with_calls: text and calls of one assistant message both appear (Llama-3.1 drops the text).
        results: ``tool`` messages' content appears.
    """

    template: str
    declares: bool
    args_as_text: bool | None
    content_with_calls: bool
    results: bool


def _render(tokenizer, messages: list[dict], kw: dict, **extra) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kw, **extra)
    except Exception:  # noqa: BLE001 — templates raise anything; a failing probe means "not supported"
        return None


def _call_message(content: str, as_text: bool) -> dict:
    args = json.dumps(_PROBE_ARGS) if as_text else dict(_PROBE_ARGS)
    return {"role": "assistant", "content": content,
            "tool_calls": [{"type": "function", "function": {"name": _PROBE_NAME, "arguments": args}}]}


def tool_support(tokenizer, kwargs: dict) -> ToolSupport:
    """What the tokenizer's chat template does with tools (memoised per template and kwargs).

    Args:
        tokenizer: a tokenizer with a chat template.
        kwargs: the template kwargs training and inference use (`render.template_kwargs`).
    """
    key = (kwargs.get("chat_template") or template_text(tokenizer), json.dumps(
        {k: v for k, v in kwargs.items() if k != "chat_template"}, sort_keys=True))
    if key in _SUPPORT:
        return _SUPPORT[key]
    user = {"role": "user", "content": "Hello."}
    plain = _render(tokenizer, [user], kwargs, add_generation_prompt=True)
    declared = _render(tokenizer, [user], kwargs, add_generation_prompt=True, tools=[_PROBE_TOOL])
    declares = declared is not None and declared != plain and _PROBE_NAME in declared
    want = json.dumps(_PROBE_ARGS)[1:-1]  # '"q": "probe-value-7"': a double-encoded dict does not hold it
    args_as_text = None
    for as_text in (False, True):
        text = _render(tokenizer, [user, _call_message("", as_text)], kwargs)
        if text is not None and _PROBE_NAME in text and want in text:
            args_as_text = as_text
            break
    both = results = False
    if args_as_text is not None:
        text = _render(tokenizer, [user, _call_message(_PROBE_TEXT, args_as_text)], kwargs)
        both = text is not None and _PROBE_TEXT in text and _PROBE_NAME in text
        text = _render(tokenizer, [user, _call_message("", args_as_text),
                                   {"role": "tool", "content": _PROBE_RESULT, "name": _PROBE_NAME}], kwargs)
        results = text is not None and _PROBE_RESULT in text
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    _SUPPORT[key] = ToolSupport(name, declares, args_as_text, both, results)
    return _SUPPORT[key]


def uses_tools(messages: Sequence[dict], tools: Sequence[dict] | None) -> bool:
    """Whether a conversation needs `tool_support`: declared tools, a call, or a tool result."""
    return bool(tools) or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def _fix(support: ToolSupport, what: str) -> str:
    return (f"the chat template of '{support.template}' {what}; chattune refuses rather than train or prompt "
            "without them. Use a model whose template renders tools (e.g. Qwen3, Llama-3.1) or pass one with "
            "model.chat_template")


def tool_messages(messages: Sequence[dict], tools: Sequence[dict] | None, support: ToolSupport) -> list[dict]:
    """Messages with their tool calls in the form the template reads; nothing is ever dropped silently.

    Args:
        messages: prepared messages (`render.prepare_messages`), calls' arguments as dicts (`chattune.data.tools`).
        tools: the declared functions, or None.
        support: `tool_support` of the template.

    Returns:
        New message dicts (arguments as JSON text where the template wants text).

    Raises:
        TemplateError: the template ignores `tools`, calls, results, or the text beside a call (names the template).
    """
    if tools and not support.declares:
        raise TemplateError(_fix(support, "ignores `tools` (the declared functions)"))
    out = []
    for m in messages:
        if m.get("role") == "tool" and not support.results:
            raise TemplateError(_fix(support, "does not render tool results (role tool)"))
        calls = m.get("tool_calls")
        if not calls:
            out.append(m)
            continue
        if support.args_as_text is None:
            raise TemplateError(_fix(support, "does not render assistant tool_calls"))
        if m.get("content") and not support.content_with_calls:
            raise TemplateError(_fix(support, "drops the text of an assistant message that also calls a tool") +
                                "; or move the text into its own assistant message")
        fixed = []
        for c in calls:
            args = c["function"]["arguments"]
            if support.args_as_text and not isinstance(args, str):
                args = json.dumps(args, ensure_ascii=False)
            fixed.append({**c, "function": {**c["function"], "arguments": args}})
        out.append({**m, "content": m.get("content") or "", "tool_calls": fixed})
    return out

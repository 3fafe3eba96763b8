"""How chattune calls a chat template, identically in training and at inference.

Three rules, each decided here once (render.py, inference and ``data check`` all go through them):

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
"""
from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Sequence

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

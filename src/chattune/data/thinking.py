"""The thinking policy (``data.thinking``): how Qwen3-style reasoning is rendered in training and at inference.

``off`` renders as inference with ``enable_thinking=False`` (reasoning dropped, the empty think block is
prompt); ``keep`` trains on ``reasoning_content`` with ``enable_thinking=True`` prompts; ``mixed`` decides
per row (`row_thinking`). Inference renders one concrete policy (`inference_thinking`). Re-exported by
`chattune.data.render`, the public face.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import TemplateError
from .template_policy import pinned_template, reads_date, template_text

THINKING_POLICIES = ("off", "keep", "mixed")
# What inference renders for each training policy. A mixed run learned both forms; it answers with
# thinking on unless asked otherwise, as Qwen3 itself does (enable_thinking defaults to true).
_INFERENCE_THINKING = {"off": "off", "keep": "keep", "mixed": "keep"}
# transformers aliases these message keys to `reasoning_content` (chat_template_utils._REASONING_FIELDS).
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def inference_thinking(thinking: str) -> str:
    """The thinking policy inference renders with after training with `thinking`: ``"off"`` or ``"keep"``
    (``"mixed"`` → ``"keep"``: thinking on by default, as Qwen3 does; ``"off"`` still gives the other form).

    Raises:
        TemplateError: an unknown policy.
    """
    if thinking not in THINKING_POLICIES:
        raise TemplateError(f"thinking={thinking!r} is not allowed; expected one of {THINKING_POLICIES}")
    return _INFERENCE_THINKING[thinking]


def row_thinking(messages: Sequence[dict], thinking: str) -> str:
    """The policy one conversation renders with: with ``"mixed"``, ``"keep"`` when an assistant message carries
    reasoning, else ``"off"`` (the non-thinking form: the empty think block belongs to the prompt)."""
    if thinking != "mixed":
        return thinking
    return "keep" if any(m.get("role") == "assistant" and any(m.get(k) for k in _REASONING_KEYS)
                         for m in messages if isinstance(m, dict)) else "off"


def thinking_split(conversations: Sequence[Sequence[dict]], thinking: str) -> dict[str, int]:
    """How many conversations render with thinking (``"keep"``) and without (``"off"``) under `thinking`."""
    forms = [row_thinking(c, thinking) for c in conversations]
    return {"keep": forms.count("keep"), "off": forms.count("off")}


def template_kwargs(tokenizer, thinking: str, date: str | None = None) -> dict:
    """Extra ``apply_chat_template`` kwargs for the thinking policy and the pinned date.

    Args:
        tokenizer: the tokenizer whose template is used.
        thinking: ``"off"`` (render as inference with thinking disabled), ``"keep"``, or ``"mixed"``
            (rendered as its inference default, `inference_thinking`; training picks per row, `row_thinking`).
        date: YYYY-MM-DD the template sees as today (``data.date``); None: the real today.

    Returns:
        ``{"enable_thinking": <thinking is on>}`` when the template reads ``enable_thinking``, plus
        ``{"chat_template": <the template with strftime_now pinned>}`` when it reads the date and `date` is set.
    """
    on = inference_thinking(thinking) == "keep"
    kw: dict[str, bool | str] = {"enable_thinking": on} if "enable_thinking" in template_text(tokenizer) else {}
    if date is not None and reads_date(tokenizer):
        kw["chat_template"] = pinned_template(tokenizer, date)
    return kw


def describe_kwargs(kw: dict) -> dict:
    """`template_kwargs` for reports (JSON): a pinned template is named, not copied."""
    return {k: ("<pinned date>" if k == "chat_template" else v) for k, v in kw.items()}


def prepare_messages(messages: Sequence[dict], thinking: str) -> list[dict]:
    """Copy messages as render sees them: None values dropped (as apply_chat_template does) and, with
    thinking off, any reasoning text removed.

    With thinking off the model never writes reasoning at inference, so training on it would teach
    a turn the inference prompt (which closes an empty think block) cannot lead to.

    Args:
        messages: the conversation.
        thinking: ``"off"``, ``"keep"`` or ``"mixed"`` (reasoning kept).

    Returns:
        New message dicts (the input is not changed).

    Raises:
        TemplateError: a message is not a dict.
    """
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise TemplateError(f"a message must be a dict with role and content, found {type(m).__name__}")
        m = {k: v for k, v in m.items() if v is not None}
        if thinking == "off":
            for k in _REASONING_KEYS:
                m.pop(k, None)
        out.append(m)
    return out

"""Ollama: the GGUF plus a Modelfile whose Go TEMPLATE renders exactly what the run's chat template renders.

Ollama does not run Jinja; its templates are Go `text/template`. Translating arbitrary Jinja is not
possible, so the TEMPLATE is derived by rendering the run's own template on probe conversations and
reading off the text around each message (system/user/assistant openers and closers, the default-system
block a template writes when there is none, and the generation prompt — which carries the thinking policy
as trained: a `thinking: off` Qwen3 run gets its empty think block, so Ollama never starts thinking).
The derived template is then proved on the run's real conversations with the real Go engine
(`verify_ollama.py`); a template this shape cannot express fails there, never silently.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import TemplateError
from .stage import RunFacts

# Sentinels: plain words that no template rewrites and no tokenizer merges across message boundaries.
_S, _U1, _A1, _U2 = "QXSYSTEMQX", "QXUSERONEQX", "QXASSISTANTQX", "QXUSERTWOQX"


@dataclass(frozen=True)
class TemplateParts:
    """The text the run's template writes around each message (see module doc)."""

    start_without_system: str  # before the first message when it is not a system one (e.g. a default system)
    system_open: str
    system_to_user: str         # after a system message's content, up to the next user's content (Gemma merges
                                # the system prompt into the first user turn, so this is not close + open)
    user_open: str
    user_close: str
    assistant_open: str
    assistant_close: str
    generation: str             # the generation prompt, thinking policy included


def _render(tokenizer, facts: RunFacts, msgs: list[dict], gen: bool) -> str:
    from ..data.render import prepare_messages

    return tokenizer.apply_chat_template(prepare_messages(msgs, facts.thinking), add_generation_prompt=gen,
                                         tokenize=False, **facts.template_kwargs)


def _between(text: str, a: str, b: str) -> str:
    i, j = text.index(a) + len(a), text.index(b)
    return text[i:j]


def derive_parts(tokenizer, facts: RunFacts) -> TemplateParts:
    """Read the per-role text of the run's template off probe renderings.

    Raises:
        TemplateError: the template does not render as opener + content + closer per message.
    """
    sys_, u1, a1, u2 = ({"role": "system", "content": _S}, {"role": "user", "content": _U1},
                        {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2})
    try:
        full = _render(tokenizer, facts, [sys_, u1, a1, u2], True)
        full_nogen = _render(tokenizer, facts, [sys_, u1, a1, u2], False)
        nosys = _render(tokenizer, facts, [u1, a1, u2], True)
        closed = _render(tokenizer, facts, [u1, a1], False)
        user_close = full_nogen[full_nogen.index(_U2) + len(_U2):]
        generation = full[full.index(_U2) + len(_U2) + len(user_close):]
        if not full.endswith(user_close + generation):
            raise ValueError("generation prompt")
        assistant_close = closed[closed.index(_A1) + len(_A1):]
        u_to_a = _between(full, _U1, _A1)
        a_to_u = _between(full, _A1, _U2)
        s_to_u = _between(full, _S, _U1)
        if not (u_to_a.startswith(user_close) and a_to_u.startswith(assistant_close)):
            raise ValueError("closers")
        assistant_open = u_to_a[len(user_close):]
        user_open = a_to_u[len(assistant_close):]
        if not nosys[:nosys.index(_U1)].endswith(user_open):
            raise ValueError("user opener")
        parts = TemplateParts(start_without_system=nosys[:nosys.index(_U1) - len(user_open)],
                              system_open=full[:full.index(_S)], system_to_user=s_to_u,
                              user_open=user_open, user_close=user_close, assistant_open=assistant_open,
                              assistant_close=assistant_close, generation=generation)
    except ValueError as e:  # str.index misses, or a check above
        raise TemplateError(f"the run's chat template does not render as opener + content + closer per message "
                            f"({e}); it cannot be expressed as an Ollama TEMPLATE — export --to gguf and use "
                            "llama.cpp's Jinja template instead") from None
    return parts


def _q(text: str) -> str:
    """A Go template string literal (JSON string syntax is valid Go string syntax)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def go_template(parts: TemplateParts) -> str:
    """The Ollama TEMPLATE: every literal is a quoted Go string, so no whitespace trimming can touch it."""
    return (
        '{{- $last := "" }}'
        '{{- if not (and .Messages (eq (index .Messages 0).Role "system")) }}' + _q(parts.start_without_system)
        + "{{ end }}"
        "{{- range .Messages }}"
        '{{- if eq .Role "system" }}' + _q(parts.system_open) + "{{ .Content }}"
        + '{{- else if eq .Role "user" }}{{ if eq $last "system" }}' + _q(parts.system_to_user) + "{{ else }}"
        + _q(parts.user_open) + "{{ end }}{{ .Content }}" + _q(parts.user_close)
        + '{{- else if eq .Role "assistant" }}' + _q(parts.assistant_open) + "{{ .Content }}"
        + _q(parts.assistant_close) + "{{ end }}{{ $last = .Role }}{{ end }}"
        '{{- if ne $last "assistant" }}' + _q(parts.generation) + "{{ end }}"
    )


def modelfile(gguf_name: str, template: str, facts: RunFacts, *, num_ctx: int) -> str:
    """The Modelfile: FROM, TEMPLATE, SYSTEM (the training default, if any), a stop per end-of-turn token,
    num_ctx."""
    if '"""' in template:
        raise TemplateError('the derived TEMPLATE contains """, which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if facts.system:
        lines.append(f'SYSTEM """{facts.system}"""')
    for tok in dict.fromkeys(facts.eos_tokens):
        lines.append(f"PARAMETER stop {json.dumps(tok, ensure_ascii=False)}")
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"

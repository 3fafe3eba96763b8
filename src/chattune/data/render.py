"""Conversation → ``input_ids`` + ``labels`` from the tokenizer's own chat template.

Nothing here knows any template's markup. A turn's tokens are found the way torchtune and nanochat do
it, made exact: for each trained assistant message ``k`` we render

* ``P_k`` = ``apply_chat_template(messages[:k], add_generation_prompt=True)`` — what the model sees at
  inference when it must write turn ``k``, and
* ``F_k`` = ``apply_chat_template(messages[:k+1])`` — the conversation ending with that turn,

tokenize both exactly as ``apply_chat_template(tokenize=True)`` does, and require that the tokens of
``P_k`` are a prefix of the tokens of ``F_k``. The trained span of turn ``k`` is then
``F_k[len(P_k) : last end-of-turn token + 1]``; whatever the template writes after its end-of-turn
token (Qwen's ``"\\n"``) stays untrained. Masking is by position, never by token id (DeepSeek-V3's pad
token *is* its EOS).

Templates may rewrite earlier turns when a later one is added (Qwen3 drops the ``<think>`` block of
assistant turns before the last user message), so a multi-turn conversation is not always a prefix
of itself. We check instead of assuming: turn ``j`` may share a sequence with a later turn ``t`` only
if ``F_j`` up to its end-of-turn token is a token prefix of ``F_t``. When every turn fits, one
sequence holds them all; otherwise ``multi_turn="split"`` emits one sequence per group of turns that
fit, and ``multi_turn="consistent"`` trains only the turns that fit the full sequence.

Everything is batched: one Jinja render call per batch for prompts and one for full texts, one
fast-tokenizer call for all texts; the per-conversation work is list slicing and comparison (C speed).
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from ..errors import ChattuneError, TemplateError
from ._spans import IGNORE, Rendered, RenderResult, TurnTexts, assemble_exact, encode, explain_merged_whitespace, finish
from ._text_spans import markup, render_by_text
from .chat_templates import read_template
from .template_policy import (
    control_tokens,
    control_tokens_in,
    require_generation_prompt,
    template_text,
    tool_messages,
    tool_support,
    uses_tools,
)
from .thinking import (
    THINKING_POLICIES,
    describe_kwargs,
    inference_thinking,
    prepare_messages,
    row_thinking,
    template_kwargs,
    thinking_split,
)
from .tools import parsed_arguments

__all__ = ["IGNORE", "THINKING_POLICIES", "Rendered", "RenderResult", "apply_template_override", "describe_kwargs",
           "end_of_turn_ids", "inference_thinking", "prepare_messages", "prompt_ids", "render_batch",
           "render_conversation", "row_thinking", "template_kwargs", "thinking_split", "untemplatable_tools", "with_tools"]
LOSS_POLICIES = ("assistant", "last", "all")
MULTI_TURN_POLICIES = ("split", "consistent")

_PROBE_ANSWER = "Probe answer 42."


_template_text = template_text


def apply_template_override(tokenizer, chat_template_path: str | None) -> None:
    """Replace the tokenizer's chat template with a Jinja file, then require that it has one.

    Args:
        tokenizer: a transformers tokenizer (changed in place).
        chat_template_path: a path to a ``.jinja`` file or a shipped template's name (`chat_templates.SHIPPED`),
            or None to keep the tokenizer's own template.

    Raises:
        TemplateError: the file cannot be read, or the tokenizer ends up without a chat template.
    """
    if chat_template_path:
        tokenizer.chat_template = read_template(chat_template_path)
    if not _template_text(tokenizer).strip():
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TemplateError(f"tokenizer '{name}' has no chat template; pass model.chat_template: "
                            "path/to/template.jinja")


def _render_texts(tokenizer, convs: list[list[dict]], gen: bool, kwargs: dict,
                  tools: Sequence[Sequence[dict] | None] = ()) -> list[str | Exception]:
    """Render many conversations, one call per distinct tools list; on a template error, find the bad ones one
    by one. `tools` is per conversation (empty: none has tools)."""
    groups: dict[str, list[int]] = {}
    for i in range(len(convs)):
        t = tools[i] if tools else None
        groups.setdefault(json.dumps(t, sort_keys=True) if t else "", []).append(i)
    res: list[str | Exception] = [""] * len(convs)
    for key, idx in groups.items():
        kw = {**kwargs, **_tools_kw(tools[idx[0]] if key else None)}
        try:
            out = tokenizer.apply_chat_template([convs[i] for i in idx], add_generation_prompt=gen, tokenize=False,
                                                **kw)
            for i, text in zip(idx, out):
                res[i] = text
        except Exception:  # noqa: BLE001 — templates raise anything (jinja2 errors, raise_exception(...))
            for i in idx:
                try:
                    res[i] = tokenizer.apply_chat_template(convs[i], add_generation_prompt=gen, tokenize=False, **kw)
                except Exception as e:  # noqa: BLE001 — kept per conversation: the caller reports it by row
                    res[i] = e
    return res


def _template_eot(tokenizer) -> int:
    """The token the template writes right after an assistant message's content."""
    apply_template_override(tokenizer, None)  # a clear error when there is no template at all
    kw = template_kwargs(tokenizer, "off")
    probe = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": _PROBE_ANSWER}]
    try:
        full = tokenizer.apply_chat_template(probe, tokenize=False, **kw)
    except Exception as e:  # noqa: BLE001 — templates raise anything
        raise TemplateError(f"the chat template cannot render a user/assistant exchange: {type(e).__name__}: "
                            f"{e}") from None
    require_generation_prompt(tokenizer, kw)
    at = full.rfind(_PROBE_ANSWER)
    if at < 0:
        raise TemplateError("the chat template does not render assistant message content; cannot train on it")
    suffix = full[at + len(_PROBE_ANSWER):]
    ids = encode(tokenizer, [suffix])[0] if suffix else []
    special = set(tokenizer.all_special_ids) | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    for i in ids:
        if i in special:
            return int(i)
    if tokenizer.eos_token_id is not None and ids and ids[0] == tokenizer.eos_token_id:
        return int(ids[0])
    raise TemplateError(f"the chat template closes an assistant turn with {suffix!r}, which holds no special "
                        "token; chattune needs an end-of-turn token to stop generation (pass a template "
                        "with model.chat_template)")


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn, detected by rendering a probe conversation.

    Args:
        tokenizer: a tokenizer with a chat template.

    Returns:
        The template's end-of-turn token first (Qwen3/SmolLM2 ``<|im_end|>``, Llama-3 ``<|eot_id|>``,
        Gemma-3 ``<end_of_turn>``, DeepSeek-V3 ``<｜end▁of▁sentence｜>``), then the tokenizer's EOS if it
        differs — use the list for ``generation_config.eos_token_id`` and for stopping.

    Raises:
        TemplateError: the template writes no special token after an assistant message.
    """
    eot = _template_eot(tokenizer)
    ids = [eot]
    eos = tokenizer.eos_token_id
    if isinstance(eos, int) and eos not in ids:
        ids.append(eos)
    return ids


def with_tools(tokenizer, messages: list[dict], tools: Sequence[dict] | None, kw: dict) -> list[dict]:
    """`messages` with tool calls in the form the template reads (`template_policy.tool_messages`); a
    conversation without tools is returned as is, without probing the template."""
    if not uses_tools(messages, tools):
        return messages
    return tool_messages(messages, tools, tool_support(tokenizer, kw))


def untemplatable_tools(conversations: Sequence, tokenizer, thinking: str, date: str | None = None) -> list[str]:
    """Conversations whose tools the chat template would drop, as ``"file, line/row N: why"`` (no rendering: the
    template's tool support is probed once). Training refuses them rather than skip them row by row.

    Args:
        conversations: `chattune.data.types.Conversation` objects.
        tokenizer, thinking, date: as for `render_batch`.
    """
    out = []
    for c in conversations:
        if uses_tools(c.messages, c.tools):
            form = row_thinking(c.messages, thinking)
            try:
                with_tools(tokenizer, prepare_messages(c.messages, form), c.tools, template_kwargs(tokenizer, form, date))
            except TemplateError as e:
                out.append(f"{c.source}, line/row {c.row}: {e}")
    return out


def _tools_kw(tools: Sequence[dict] | None) -> dict:
    return {"tools": list(tools)} if tools else {}


def prompt_ids(tokenizer, messages: list[dict], thinking: str = "off", date: str | None = None,
               tools: Sequence[dict] | None = None) -> list[int]:
    """The tokens inference feeds the model to get the next assistant turn.

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: the conversation so far (usually ending with a user message, or with tool results); assistant
            messages may carry ``tool_calls`` (arguments as a dict or JSON text) and ``tool`` messages answer them.
        thinking: ``"off"``, ``"keep"`` or ``"mixed"`` (its inference default, `inference_thinking`).
        date: the day training pinned (``data.date``), for templates that write today's date.
        tools: the functions the model may call (OpenAI shape, as `chattune.data.tools` documents), or None.

    Returns:
        ``apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
        sanitize_control_tokens=True, **template_kwargs)``: control tokens inside messages are text, as in
        training (`template_policy`); tool calls in the form training renders them.

    Raises:
        TemplateError: tools or tool messages on a template that would drop them (names the template).
    """
    thinking = inference_thinking(thinking)
    kw = template_kwargs(tokenizer, thinking, date)
    msgs = with_tools(tokenizer, prepare_messages(parsed_arguments(messages), thinking), tools, kw)
    return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False,
                                              sanitize_control_tokens=True, **kw, **_tools_kw(tools)))


def _sanitized(tokenizer, convs: list[list[dict]], gen: bool, kw: dict,
               tools: Sequence[Sequence[dict] | None]) -> list[list[int]]:
    """Token ids of conversations that hold control tokens in their messages, encoded as text."""
    return [list(tokenizer.apply_chat_template(c, add_generation_prompt=gen, tokenize=True, return_dict=False,
                                               sanitize_control_tokens=True, **kw, **_tools_kw(t)))
            for c, t in zip(convs, tools)]


def _check_options(loss: str, thinking: str, multi_turn: str, max_length: int | None) -> None:
    for name, value, allowed in (("loss", loss, LOSS_POLICIES), ("thinking", thinking, THINKING_POLICIES),
                                 ("multi_turn", multi_turn, MULTI_TURN_POLICIES)):
        if value not in allowed:
            raise TemplateError(f"{name}={value!r} is not allowed; expected one of {allowed}")
    if max_length is not None and max_length < 1:
        raise TemplateError(f"max_length={max_length} must be at least 1")


def render_batch(conversations: Sequence[Sequence[dict]], tokenizer, *, loss: str = "assistant",
                 thinking: str = "off", multi_turn: str = "split", max_length: int | None = None,
                 eot_ids: Sequence[int] | None = None, fast: bool = True,
                 date: str | None = None, tools: Sequence[Sequence[dict] | None] | None = None) -> list[RenderResult]:
    """Render many conversations at once (batched Jinja renders and batched tokenizer calls).

    Args:
        conversations: lists of ``{"role", "content"[, "reasoning_content"][, "tool_calls"]}`` messages and
            ``tool`` results (`chattune.data.tools`); tool results are never trained.
        tokenizer: a tokenizer with a chat template (fast tokenizers are much faster).
        loss: ``"assistant"`` (every assistant turn), ``"last"`` (the last one) or ``"all"`` (every token).
        thinking: ``"off"``, ``"keep"`` (train on ``reasoning_content``; prompts use enable_thinking=True) or
            ``"mixed"`` (per conversation, `row_thinking`).
        multi_turn: ``"split"`` or ``"consistent"``, for templates that rewrite earlier turns.
        max_length: cut sequences to this many tokens (flagged ``truncated``), or None.
        eot_ids: the template's end-of-turn id first (default: detected with `end_of_turn_ids`).
        fast: tokenize only each sequence's full text (see `_text_spans.plan_turns`); False tokenizes every prompt
            too and compares token lists (the reference path, same result).
        date: the day templates that call ``strftime_now`` see (``data.date``; see `template_policy`).
        tools: per conversation, the functions it may call (``apply_chat_template(tools=...)``) or None.

    Returns:
        One `RenderResult` per conversation, in order; a conversation that cannot be rendered has
        ``error`` set and no sequences (the others are unaffected).
    """
    _check_options(loss, thinking, multi_turn, max_length)
    per_tools: list[Sequence[dict] | None] = list(tools) if tools is not None else [None] * len(conversations)
    if len(per_tools) != len(conversations):
        raise TemplateError(f"{len(per_tools)} tools lists for {len(conversations)} conversations")
    eot = int(eot_ids[0]) if eot_ids else _template_eot(tokenizer)
    opts = dict(loss=loss, multi_turn=multi_turn, max_length=max_length, eot_ids=[eot], fast=fast, date=date)
    if thinking == "mixed":  # each row in its own form: two batches, results back in order
        results = [RenderResult() for _ in conversations]
        for form in ("keep", "off"):
            idx = [i for i, c in enumerate(conversations) if row_thinking(c, "mixed") == form]
            for i, r in zip(idx, render_batch([conversations[i] for i in idx], tokenizer, thinking=form,
                                              tools=[per_tools[i] for i in idx], **opts)):  # type: ignore[arg-type]
                results[i] = r
        return results
    kw = template_kwargs(tokenizer, thinking, date)
    ctrl = control_tokens(tokenizer)
    results = [RenderResult() for _ in conversations]
    prepared: list[list[dict]] = []
    for i, conv in enumerate(conversations):
        try:
            prepared.append(with_tools(tokenizer, prepare_messages(conv, thinking), per_tools[i], kw))
        except ChattuneError as e:
            results[i].error = str(e)
            prepared.append([])

    # Which renders each conversation needs: prompt P_k and full F_k for each trained turn k.
    todo: dict[int, TurnTexts] = {}
    for i, msgs in enumerate(prepared):
        if results[i].error:
            continue
        if not msgs:
            results[i].error = "empty conversation"
        elif loss == "all":
            todo[i] = TurnTexts([len(msgs) - 1])
        else:
            asst = [k for k, m in enumerate(msgs) if m.get("role") == "assistant"]
            if not asst:
                results[i].error = "no assistant message to train"
            else:
                todo[i] = TurnTexts(asst[-1:] if loss == "last" else asst)
    jobs = [(i, k) for i, t in todo.items() for k in t.turns]
    job_tools = [per_tools[i] for i, _ in jobs] if any(per_tools) else []
    f_out = _render_texts(tokenizer, [prepared[i][:k + 1] for i, k in jobs], False, kw, job_tools)
    p_out = [] if loss == "all" else _render_texts(tokenizer, [prepared[i][:k] for i, k in jobs], True, kw, job_tools)
    for (i, k), full, prompt in zip(jobs, f_out, p_out or [""] * len(jobs)):
        if isinstance(full, Exception) or isinstance(prompt, Exception):
            bad = full if isinstance(full, Exception) else prompt
            if results[i].error is None:
                results[i].error = f"the chat template failed on message {k + 1}: {type(bad).__name__}: {bad}"
            continue
        todo[i].full[k] = full
        if loss != "all":
            todo[i].prompt[k] = prompt
    for i in [i for i in todo if results[i].error]:
        del todo[i]
    # Conversations whose messages hold a control token are encoded with sanitize_control_tokens (the
    # token becomes text, as at inference); the others encode identically in one batched call.
    marked = [i for i in todo if control_tokens_in(prepared[i], ctrl)]

    if loss == "all":
        order = [i for i in todo if i not in set(marked)]
        toks = dict(zip(order, encode(tokenizer, [todo[i].full[todo[i].turns[0]] for i in order])))
        toks |= dict(zip(marked, _sanitized(tokenizer, [prepared[i][:todo[i].turns[0] + 1] for i in marked],
                                            False, kw, [per_tools[i] for i in marked])))
        for i in todo:
            ids = toks[i]
            msgs = prepared[i]
            turns = tuple(k for k, m in enumerate(msgs) if m.get("role") == "assistant")
            results[i].sequences.append(finish(ids, [], len(msgs), turns, max_length, train_all=True))
        return results

    plain = {i: t for i, t in todo.items() if i not in set(marked)}
    mk = markup(tokenizer, kw, eot) if fast else None
    exact = render_by_text(plain, mk, tokenizer, multi_turn, max_length, results) if mk is not None else list(plain)
    if exact or marked:
        # One tokenizer call for the reference path: every P_k, then every F_k, in the same order.
        texts = [(i, k) for i in exact for k in todo[i].turns]
        ref = encode(tokenizer, [todo[i].prompt[k] for i, k in texts] + [todo[i].full[k] for i, k in texts])
        ptoks: dict[int, dict[int, list[int]]] = {i: {} for i in [*exact, *marked]}
        ftoks: dict[int, dict[int, list[int]]] = {i: {} for i in [*exact, *marked]}
        for (i, k), p, f in zip(texts, ref, ref[len(texts):]):
            ptoks[i][k], ftoks[i][k] = p, f
        sjobs = [(i, k) for i in marked for k in todo[i].turns]
        stools = [per_tools[i] for i, _ in sjobs]
        for (i, k), p, f in zip(sjobs, _sanitized(tokenizer, [prepared[i][:k] for i, k in sjobs], True, kw, stools),
                                _sanitized(tokenizer, [prepared[i][:k + 1] for i, k in sjobs], False, kw, stools)):
            ptoks[i][k], ftoks[i][k] = p, f
        for i in [*exact, *marked]:
            results[i] = assemble_exact(todo[i].turns, ptoks[i], ftoks[i], (eot,), multi_turn, max_length)
            explain_merged_whitespace(results[i], prepared[i], todo[i], tokenizer)
    return results


def render_conversation(messages: Sequence[dict], tokenizer, *, loss: str = "assistant", thinking: str = "off",
                        multi_turn: str = "split", max_length: int | None = None,
                        date: str | None = None, tools: Sequence[dict] | None = None) -> list[Rendered]:
    """Render one conversation into training sequences (see the module docstring for the guarantee).

    Args:
        messages: ``[{"role": ..., "content": ...}, ...]``; assistant messages may carry ``reasoning_content``.
        tokenizer: a tokenizer with a chat template.
        loss: ``"assistant"``, ``"last"`` or ``"all"``.
        thinking: ``"off"``, ``"keep"`` or ``"mixed"``.
        multi_turn: ``"split"`` or ``"consistent"``.
        max_length: token limit; longer sequences are cut and flagged ``truncated``.
        date: the pinned day for templates that write today's date.
        tools: the functions the conversation may call, or None.

    Returns:
        The sequences: one when the conversation renders prefix-consistently (or with
        ``multi_turn="consistent"``), else one per group of turns that share a consistent prefix.

    Raises:
        TemplateError: nothing in the conversation can be trained (the message says why).
    """
    res = render_batch([messages], tokenizer, loss=loss, thinking=thinking, multi_turn=multi_turn,
                       max_length=max_length, date=date, tools=[tools])[0]
    if res.error:
        raise TemplateError(res.error)
    return res.sequences

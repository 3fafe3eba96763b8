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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import ChattuneError, TemplateError

IGNORE = -100
LOSS_POLICIES = ("assistant", "last", "all")
THINKING_POLICIES = ("off", "keep")
MULTI_TURN_POLICIES = ("split", "consistent")

# transformers aliases these message keys to `reasoning_content` (chat_template_utils._REASONING_FIELDS).
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
_PROBE_ANSWER = "Probe answer 42."


@dataclass
class Rendered:
    """One training sequence.

    Attributes:
        input_ids: the tokens, exactly ``apply_chat_template(messages[:n_messages])`` (cut to
            ``max_length`` when ``truncated``).
        labels: same length; ``-100`` where not trained.
        truncated: the sequence was cut to ``max_length``.
        n_messages: how many leading messages of the conversation the sequence holds.
        trained_turns: indices (into the conversation) of the assistant messages trained here.
    """

    input_ids: list[int]
    labels: list[int]
    truncated: bool
    n_messages: int = 0
    trained_turns: tuple[int, ...] = ()


@dataclass
class RenderResult:
    """What became of one conversation: its sequences, the turns that could not be trained and why."""

    sequences: list[Rendered] = field(default_factory=list)
    skipped_turns: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None


def _template_text(tokenizer) -> str:
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):  # named templates ("default", "tool_use", ...)
        return "\n".join(str(v) for v in tpl.values())
    return tpl or ""


def apply_template_override(tokenizer, chat_template_path: str | None) -> None:
    """Replace the tokenizer's chat template with a Jinja file, then require that it has one.

    Args:
        tokenizer: a transformers tokenizer (changed in place).
        chat_template_path: path to a ``.jinja`` file, or None to keep the tokenizer's own template.

    Raises:
        TemplateError: the file cannot be read, or the tokenizer ends up without a chat template.
    """
    if chat_template_path:
        p = Path(chat_template_path).expanduser()
        try:
            tokenizer.chat_template = p.read_text(encoding="utf-8")
        except OSError as e:
            raise TemplateError(f"cannot read chat template file {p}: {e.strerror or e}") from None
    if not _template_text(tokenizer).strip():
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TemplateError(f"tokenizer '{name}' has no chat template; pass model.chat_template: "
                            "path/to/template.jinja")


def template_kwargs(tokenizer, thinking: str) -> dict:
    """Extra ``apply_chat_template`` kwargs for the thinking policy.

    Args:
        tokenizer: the tokenizer whose template is used.
        thinking: ``"off"`` (render as inference with thinking disabled) or ``"keep"``.

    Returns:
        ``{"enable_thinking": thinking == "keep"}`` when the template reads ``enable_thinking``, else ``{}``.
    """
    if thinking not in THINKING_POLICIES:
        raise TemplateError(f"thinking={thinking!r} is not allowed; expected one of {THINKING_POLICIES}")
    return {"enable_thinking": thinking == "keep"} if "enable_thinking" in _template_text(tokenizer) else {}


def _render_texts(tokenizer, convs: list[list[dict]], gen: bool, kwargs: dict) -> list[str | Exception]:
    """Render many conversations in one call; on a template error, find the bad ones one by one."""
    if not convs:
        return []
    try:
        out = tokenizer.apply_chat_template(convs, add_generation_prompt=gen, tokenize=False, **kwargs)
        return list(out)
    except Exception:  # noqa: BLE001 — templates raise anything (jinja2 errors, raise_exception(...))
        res: list[str | Exception] = []
        for c in convs:
            try:
                res.append(tokenizer.apply_chat_template(c, add_generation_prompt=gen, tokenize=False, **kwargs))
            except Exception as e:  # noqa: BLE001
                res.append(e)
        return res


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    # Exactly what apply_chat_template(tokenize=True) does with its rendered text.
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _template_eot(tokenizer) -> int:
    """The token the template writes right after an assistant message's content."""
    kw = template_kwargs(tokenizer, "off")
    probe = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": _PROBE_ANSWER}]
    full = tokenizer.apply_chat_template(probe, tokenize=False, **kw)
    at = full.rfind(_PROBE_ANSWER)
    if at < 0:
        raise TemplateError("the chat template does not render assistant message content; cannot train on it")
    suffix = full[at + len(_PROBE_ANSWER):]
    ids = _encode(tokenizer, [suffix])[0] if suffix else []
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
        The template's end-of-turn token first (Qwen3/SmolLM2 ``<|im_end|>``, Llama-3.1 ``<|eot_id|>``,
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


def _prepare(messages: Sequence[dict], thinking: str) -> list[dict]:
    """Drop None values (as apply_chat_template does) and, with thinking off, any reasoning text.

    With thinking off the model never writes reasoning at inference, so training on it would teach
    a turn the inference prompt (which closes an empty think block) cannot lead to.
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


def prompt_ids(tokenizer, messages: list[dict], thinking: str = "off") -> list[int]:
    """The tokens inference feeds the model to get the next assistant turn.

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: the conversation so far (usually ending with a user message).
        thinking: ``"off"`` or ``"keep"``, as in training.

    Returns:
        ``apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **template_kwargs)``.
    """
    kw = template_kwargs(tokenizer, thinking)
    return list(tokenizer.apply_chat_template(_prepare(messages, thinking), add_generation_prompt=True,
                                              tokenize=True, return_dict=False, **kw))


def _check_options(loss: str, thinking: str, multi_turn: str, max_length: int | None) -> None:
    for name, value, allowed in (("loss", loss, LOSS_POLICIES), ("thinking", thinking, THINKING_POLICIES),
                                 ("multi_turn", multi_turn, MULTI_TURN_POLICIES)):
        if value not in allowed:
            raise TemplateError(f"{name}={value!r} is not allowed; expected one of {allowed}")
    if max_length is not None and max_length < 1:
        raise TemplateError(f"max_length={max_length} must be at least 1")


def _last_index(ids: list[int], start: int, targets: tuple[int, ...]) -> int:
    """Index of the last occurrence of any target at or after `start`, or -1 (list.index runs in C)."""
    best = -1
    tail = ids[start:]
    tail.reverse()
    for t in targets:
        try:
            best = max(best, len(ids) - 1 - tail.index(t))
        except ValueError:
            pass
    return best


def _finish(ids: list[int], spans: list[tuple[int, int]], n_messages: int, turns: tuple[int, ...],
            max_length: int | None, train_all: bool = False) -> Rendered:
    if train_all:
        labels = list(ids)
    else:
        labels = [IGNORE] * len(ids)
        for s, e in spans:
            labels[s:e] = ids[s:e]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return Rendered(list(ids), labels, truncated, n_messages, turns)


def _assemble(msgs: list[dict], trained: list[int], ptoks: dict[int, list[int]], ftoks: dict[int, list[int]],
              eot: tuple[int, ...], multi_turn: str, max_length: int | None) -> RenderResult:
    res = RenderResult()
    turns: list[tuple[int, int, int]] = []  # (message index, span start, span end exclusive)
    for k in trained:
        p, f = ptoks[k], ftoks[k]
        if f[:len(p)] != p:
            res.skipped_turns.append((k, "the template renders this turn differently from what follows its "
                                         "generation prompt, so inference could never produce it"))
            continue
        e = _last_index(f, len(p), eot)
        if e < 0:
            res.skipped_turns.append((k, "no end-of-turn token after the assistant content"))
            continue
        turns.append((k, len(p), e + 1))
    if not turns:
        res.error = "; ".join(f"message {k + 1}: {why}" for k, why in res.skipped_turns) or \
            "no assistant message to train"
        return res

    def fits(j: tuple[int, int, int], t: int) -> bool:
        end = j[2]
        return ftoks[t][:end] == ftoks[j[0]][:end]

    last = turns[-1][0]
    if multi_turn == "consistent" or all(fits(j, last) for j in turns[:-1]):
        keep = [j for j in turns[:-1] if fits(j, last)] + [turns[-1]]
        for j in turns[:-1]:
            if j not in keep:
                res.skipped_turns.append((j[0], "the template rewrites this turn once later turns follow "
                                                "(multi_turn=consistent trains only turns that match inference)"))
        res.sequences.append(_finish(ftoks[last], [(s, e) for _, s, e in keep], last + 1,
                                     tuple(k for k, _, _ in keep), max_length))
        return res
    # split: one sequence per group, ending at its last turn; earlier turns join it only if they fit.
    pending = list(turns)
    groups: list[list[tuple[int, int, int]]] = []
    while pending:
        t = pending.pop()
        group = [j for j in pending if fits(j, t[0])] + [t]
        pending = [j for j in pending if j not in group]
        groups.append(group)
    for group in reversed(groups):
        t = group[-1][0]
        res.sequences.append(_finish(ftoks[t], [(s, e) for _, s, e in group], t + 1,
                                     tuple(k for k, _, _ in group), max_length))
    return res


def render_batch(conversations: Sequence[Sequence[dict]], tokenizer, *, loss: str = "assistant",
                 thinking: str = "off", multi_turn: str = "split", max_length: int | None = None,
                 eot_ids: Sequence[int] | None = None) -> list[RenderResult]:
    """Render many conversations at once (batched Jinja renders and one tokenizer call).

    Args:
        conversations: lists of ``{"role", "content"[, "reasoning_content"]}`` messages.
        tokenizer: a tokenizer with a chat template (fast tokenizers are much faster).
        loss: ``"assistant"`` (every assistant turn), ``"last"`` (the last one) or ``"all"`` (every token).
        thinking: ``"off"`` or ``"keep"`` (train on ``reasoning_content``; prompts use enable_thinking=True).
        multi_turn: ``"split"`` or ``"consistent"``, for templates that rewrite earlier turns.
        max_length: cut sequences to this many tokens (flagged ``truncated``), or None.
        eot_ids: end-of-turn ids if already known (default: detected with `end_of_turn_ids`).

    Returns:
        One `RenderResult` per conversation, in order; a conversation that cannot be rendered has
        ``error`` set and no sequences (the others are unaffected).
    """
    _check_options(loss, thinking, multi_turn, max_length)
    kw = template_kwargs(tokenizer, thinking)
    eot = tuple(eot_ids) if eot_ids else (_template_eot(tokenizer),)
    prepared: list[list[dict] | None] = []
    results = [RenderResult() for _ in conversations]
    for i, conv in enumerate(conversations):
        try:
            prepared.append(_prepare(conv, thinking))
        except ChattuneError as e:
            results[i].error = str(e)
            prepared.append(None)

    # Which renders each conversation needs: (conversation, message index) → prompt / full text.
    plan: list[tuple[int, list[int]]] = []
    p_jobs: list[tuple[int, int]] = []
    f_jobs: list[tuple[int, int]] = []
    for i, msgs in enumerate(prepared):
        if msgs is None:
            continue
        if not msgs:
            results[i].error = "empty conversation"
            continue
        if loss == "all":
            f_jobs.append((i, len(msgs) - 1))
            plan.append((i, []))
            continue
        asst = [k for k, m in enumerate(msgs) if m.get("role") == "assistant"]
        if not asst:
            results[i].error = "no assistant message to train"
            continue
        trained = asst[-1:] if loss == "last" else asst
        plan.append((i, trained))
        p_jobs += [(i, k) for k in trained]
        f_jobs += [(i, k) for k in trained]

    p_texts = _render_texts(tokenizer, [prepared[i][:k] for i, k in p_jobs], True, kw)
    f_texts = _render_texts(tokenizer, [prepared[i][:k + 1] for i, k in f_jobs], False, kw)
    for (i, k), t in [*zip(p_jobs, p_texts), *zip(f_jobs, f_texts)]:
        if isinstance(t, Exception) and results[i].error is None:
            results[i].error = f"the chat template failed on message {k + 1}: {type(t).__name__}: {t}"
    ok = {i for i, _ in plan if results[i].error is None}
    p_jobs_ok = [(j, t) for j, t in zip(p_jobs, p_texts) if j[0] in ok]
    f_jobs_ok = [(j, t) for j, t in zip(f_jobs, f_texts) if j[0] in ok]
    toks = _encode(tokenizer, [t for _, t in p_jobs_ok] + [t for _, t in f_jobs_ok])
    ptoks: dict[tuple[int, int], list[int]] = {j: x for (j, _), x in zip(p_jobs_ok, toks)}
    ftoks: dict[tuple[int, int], list[int]] = {j: x for (j, _), x in zip(f_jobs_ok, toks[len(p_jobs_ok):])}

    for i, trained in plan:
        if i not in ok:
            continue
        msgs = prepared[i]
        if loss == "all":
            ids = ftoks[(i, len(msgs) - 1)]
            turns = tuple(k for k, m in enumerate(msgs) if m.get("role") == "assistant")
            results[i].sequences.append(_finish(ids, [], len(msgs), turns, max_length, train_all=True))
            continue
        results[i] = _assemble(msgs, trained, {k: ptoks[(i, k)] for k in trained},
                               {k: ftoks[(i, k)] for k in trained}, eot, multi_turn, max_length)
    return results


def render_conversation(messages: Sequence[dict], tokenizer, *, loss: str = "assistant", thinking: str = "off",
                        multi_turn: str = "split", max_length: int | None = None) -> list[Rendered]:
    """Render one conversation into training sequences (see the module docstring for the guarantee).

    Args:
        messages: ``[{"role": ..., "content": ...}, ...]``; assistant messages may carry ``reasoning_content``.
        tokenizer: a tokenizer with a chat template.
        loss: ``"assistant"``, ``"last"`` or ``"all"``.
        thinking: ``"off"`` or ``"keep"``.
        multi_turn: ``"split"`` or ``"consistent"``.
        max_length: token limit; longer sequences are cut and flagged ``truncated``.

    Returns:
        The sequences: one when the conversation renders prefix-consistently (or with
        ``multi_turn="consistent"``), else one per group of turns that share a consistent prefix.

    Raises:
        TemplateError: nothing in the conversation can be trained (the message says why).
    """
    res = render_batch([messages], tokenizer, loss=loss, thinking=thinking, multi_turn=multi_turn,
                       max_length=max_length)[0]
    if res.error:
        raise TemplateError(res.error)
    return res.sequences


def describe_messages(messages: Sequence[dict]) -> str:
    """A short JSON view of a conversation for error messages."""
    s = json.dumps(list(messages), ensure_ascii=False)
    return s if len(s) <= 200 else s[:197] + "..."

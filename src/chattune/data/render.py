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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    apply_template_override(tokenizer, None)  # a clear error when there is no template at all
    kw = template_kwargs(tokenizer, "off")
    probe = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": _PROBE_ANSWER}]
    try:
        full = tokenizer.apply_chat_template(probe, tokenize=False, **kw)
    except Exception as e:  # noqa: BLE001 — templates raise anything
        raise TemplateError(f"the chat template cannot render a user/assistant exchange: {type(e).__name__}: "
                            f"{e}") from None
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


def prepare_messages(messages: Sequence[dict], thinking: str) -> list[dict]:
    """Copy messages as render sees them: None values dropped (as apply_chat_template does) and, with
    thinking off, any reasoning text removed.

    With thinking off the model never writes reasoning at inference, so training on it would teach
    a turn the inference prompt (which closes an empty think block) cannot lead to.

    Args:
        messages: the conversation.
        thinking: ``"off"`` or ``"keep"``.

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
    return list(tokenizer.apply_chat_template(prepare_messages(messages, thinking), add_generation_prompt=True,
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


def _nth_index(ids: list[int], value: int, n: int) -> int:
    """Index of the n-th (1-based) occurrence of `value`, or -1."""
    at = -1
    try:
        for _ in range(n):
            at = ids.index(value, at + 1)
    except ValueError:
        return -1
    return at


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


_REWRITTEN = ("the template rewrites this turn once later turns follow (multi_turn=consistent trains only "
              "turns that match inference)")
_NOT_PREFIX = ("the template renders this turn differently from what follows its generation prompt, so "
               "inference could never produce it")


def _group(turns: list[int], fits: Callable[[int, int], bool], multi_turn: str) -> tuple[list[list[int]], list[int]]:
    """Group trained turns into sequences; each group's last turn is the one whose full render is the sequence.

    Returns:
        ``(groups, dropped)``: ``dropped`` are turns that fit no sequence (only with multi_turn="consistent").
    """
    last = turns[-1]
    if multi_turn == "consistent" or all(fits(j, last) for j in turns[:-1]):
        keep = [j for j in turns[:-1] if fits(j, last)] + [last]
        return [keep], [j for j in turns if j not in keep]
    pending, groups = list(turns), []
    while pending:  # split: a sequence ends at its turn; earlier turns join it only if they fit
        t = pending.pop()
        group = [j for j in pending if fits(j, t)] + [t]
        pending = [j for j in pending if j not in group]
        groups.append(group)
    return groups[::-1], []


def _assemble_exact(trained: list[int], ptoks: dict[int, list[int]], ftoks: dict[int, list[int]],
                    eot: tuple[int, ...], multi_turn: str, max_length: int | None) -> RenderResult:
    """The reference path: tokenize every P_k and F_k and compare token lists."""
    res = RenderResult()
    spans: dict[int, tuple[int, int]] = {}
    for k in trained:
        p, f = ptoks[k], ftoks[k]
        if f[:len(p)] != p:
            res.skipped_turns.append((k, _NOT_PREFIX))
            continue
        e = _last_index(f, len(p), eot)
        if e < 0:
            res.skipped_turns.append((k, "no end-of-turn token after the assistant content"))
            continue
        spans[k] = (len(p), e + 1)
    if not spans:
        res.error = "; ".join(f"message {k + 1}: {why}" for k, why in res.skipped_turns)
        return res
    turns = sorted(spans)
    groups, dropped = _group(turns, lambda j, t: ftoks[t][:spans[j][1]] == ftoks[j][:spans[j][1]], multi_turn)
    res.skipped_turns += [(j, _REWRITTEN) for j in dropped]
    for g in groups:
        res.sequences.append(_finish(ftoks[g[-1]], [spans[j] for j in g], g[-1] + 1, tuple(g), max_length))
    return res


def render_batch(conversations: Sequence[Sequence[dict]], tokenizer, *, loss: str = "assistant",
                 thinking: str = "off", multi_turn: str = "split", max_length: int | None = None,
                 eot_ids: Sequence[int] | None = None, fast: bool = True) -> list[RenderResult]:
    """Render many conversations at once (batched Jinja renders and batched tokenizer calls).

    Args:
        conversations: lists of ``{"role", "content"[, "reasoning_content"]}`` messages.
        tokenizer: a tokenizer with a chat template (fast tokenizers are much faster).
        loss: ``"assistant"`` (every assistant turn), ``"last"`` (the last one) or ``"all"`` (every token).
        thinking: ``"off"`` or ``"keep"`` (train on ``reasoning_content``; prompts use enable_thinking=True).
        multi_turn: ``"split"`` or ``"consistent"``, for templates that rewrite earlier turns.
        max_length: cut sequences to this many tokens (flagged ``truncated``), or None.
        eot_ids: the template's end-of-turn id first (default: detected with `end_of_turn_ids`).
        fast: tokenize only each sequence's full text (see `render_fast.fast_plan`); False tokenizes every prompt
            too and compares token lists (the reference path, same result).

    Returns:
        One `RenderResult` per conversation, in order; a conversation that cannot be rendered has
        ``error`` set and no sequences (the others are unaffected).
    """
    _check_options(loss, thinking, multi_turn, max_length)
    kw = template_kwargs(tokenizer, thinking)
    eot = int(eot_ids[0]) if eot_ids else _template_eot(tokenizer)
    results = [RenderResult() for _ in conversations]
    prepared: list[list[dict]] = []
    for i, conv in enumerate(conversations):
        try:
            prepared.append(prepare_messages(conv, thinking))
        except ChattuneError as e:
            results[i].error = str(e)
            prepared.append([])

    # Which renders each conversation needs: prompt P_k and full F_k for each trained turn k.
    plan: dict[int, list[int]] = {}
    for i, msgs in enumerate(prepared):
        if results[i].error:
            continue
        if not msgs:
            results[i].error = "empty conversation"
        elif loss == "all":
            plan[i] = [len(msgs) - 1]
        else:
            asst = [k for k, m in enumerate(msgs) if m.get("role") == "assistant"]
            if not asst:
                results[i].error = "no assistant message to train"
            else:
                plan[i] = asst[-1:] if loss == "last" else asst
    f_jobs = [(i, k) for i, ks in plan.items() for k in ks]
    p_jobs = [] if loss == "all" else f_jobs
    f_out = _render_texts(tokenizer, [prepared[i][:k + 1] for i, k in f_jobs], False, kw)
    p_out = _render_texts(tokenizer, [prepared[i][:k] for i, k in p_jobs], True, kw)
    for (i, k), t in [*zip(f_jobs, f_out), *zip(p_jobs, p_out)]:
        if isinstance(t, Exception) and results[i].error is None:
            results[i].error = f"the chat template failed on message {k + 1}: {type(t).__name__}: {t}"
            plan.pop(i, None)
    ftext = dict(zip(f_jobs, f_out))
    ptext = dict(zip(p_jobs, p_out))

    if loss == "all":
        todo = list(plan)
        toks = _encode(tokenizer, [ftext[(i, plan[i][0])] for i in todo])
        for i, ids in zip(todo, toks):
            msgs = prepared[i]
            turns = tuple(k for k, m in enumerate(msgs) if m.get("role") == "assistant")
            results[i].sequences.append(_finish(ids, [], len(msgs), turns, max_length, train_all=True))
        return results

    exact = list(plan)
    # The fast path lives in its own module and builds on this one's primitives (imported here, not at
    # the top, so the two modules do not import each other at load time).
    from .render_fast import markup, render_fast

    mk = markup(tokenizer, kw, eot) if fast else None
    if mk is not None:
        exact = render_fast(plan, ptext, ftext, mk, tokenizer, multi_turn, max_length, results)
    if exact:
        jobs = [(i, k) for i in exact for k in plan[i]]
        toks = _encode(tokenizer, [ptext[j] for j in jobs] + [ftext[j] for j in jobs])
        ptoks, ftoks = dict(zip(jobs, toks)), dict(zip(jobs, toks[len(jobs):]))
        for i in exact:
            ks = plan[i]
            results[i] = _assemble_exact(ks, {k: ptoks[(i, k)] for k in ks}, {k: ftoks[(i, k)] for k in ks},
                                         (eot,), multi_turn, max_length)
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

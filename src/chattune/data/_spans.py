"""Label-span plumbing of `chattune.data.render`: the result types, the rendered texts of a
conversation's trained turns, and the exact (token-list) span finder with its turn grouping.

Private to `chattune.data`: `render` is the public face; `_text_spans` is the faster span finder that
builds on these primitives.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

IGNORE = -100

REWRITTEN = ("the template rewrites this turn once later turns follow (multi_turn=consistent trains only "
             "turns that match inference)")
NOT_PREFIX = ("the template renders this turn differently from what follows its generation prompt, so "
              "inference could never produce it")
MERGED = ("the answer starts with whitespace ({ws!r}), which the tokenizer joins with the end of the generation "
          "prompt into one token ({joined!r}), so the answer's tokens cannot follow the inference prompt and the "
          "turn is not trained; remove the leading whitespace from the answer (data.clean.normalize_whitespace: "
          "true trims it)")


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

    @property
    def n_trained(self) -> int:
        """Tokens that carry a loss (labels != -100): the one trained-token count the data reports use."""
        return len(self.labels) - self.labels.count(IGNORE)


@dataclass
class RenderResult:
    """What became of one conversation: its sequences, the turns that could not be trained and why."""

    sequences: list[Rendered] = field(default_factory=list)
    skipped_turns: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None


@dataclass
class TurnTexts:
    """The rendered texts of one conversation's trained turns.

    Attributes:
        turns: the trained assistant message indices ``k``, ascending.
        prompt: ``P_k`` per turn (the generation prompt before turn ``k``); empty with ``loss="all"``.
        full: ``F_k`` per turn (the conversation ending with turn ``k``).
    """

    turns: list[int]
    prompt: dict[int, str] = field(default_factory=dict)
    full: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Span:
    """Token positions ``[start, end)`` of one trained turn inside a sequence."""

    start: int
    end: int


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, exactly what ``apply_chat_template(tokenize=True)`` does with its rendered text."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def last_index(ids: list[int], start: int, targets: tuple[int, ...]) -> int:
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


def nth_index(ids: list[int], value: int, n: int) -> int:
    """Index of the n-th (1-based) occurrence of `value`, or -1."""
    at = -1
    try:
        for _ in range(n):
            at = ids.index(value, at + 1)
    except ValueError:
        return -1
    return at


def finish(ids: list[int], spans: list[Span], n_messages: int, turns: tuple[int, ...],
           max_length: int | None, train_all: bool = False) -> Rendered:
    """A `Rendered` sequence from its tokens and trained spans (every token with `train_all`), cut to `max_length`."""
    if train_all:
        labels = list(ids)
    else:
        labels = [IGNORE] * len(ids)
        for sp in spans:
            labels[sp.start:sp.end] = ids[sp.start:sp.end]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return Rendered(list(ids), labels, truncated, n_messages, turns)


def group(turns: list[int], fits: Callable[[int, int], bool], multi_turn: str) -> tuple[list[list[int]], list[int]]:
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
        members = [j for j in pending if fits(j, t)] + [t]
        pending = [j for j in pending if j not in members]
        groups.append(members)
    return groups[::-1], []


def assemble_exact(trained: list[int], ptoks: dict[int, list[int]], ftoks: dict[int, list[int]],
                   eot: tuple[int, ...], multi_turn: str, max_length: int | None) -> RenderResult:
    """The reference path: tokenize every P_k and F_k and compare token lists."""
    res = RenderResult()
    spans: dict[int, Span] = {}
    for k in trained:
        p, f = ptoks[k], ftoks[k]
        if f[:len(p)] != p:
            res.skipped_turns.append((k, NOT_PREFIX))
            continue
        e = last_index(f, len(p), eot)
        if e < 0:
            res.skipped_turns.append((k, "no end-of-turn token after the assistant content"))
            continue
        spans[k] = Span(len(p), e + 1)
    if not spans:
        res.error = "; ".join(f"message {k + 1}: {why}" for k, why in res.skipped_turns)
        return res
    turns = sorted(spans)
    groups, dropped = group(turns, lambda j, t: ftoks[t][:spans[j].end] == ftoks[j][:spans[j].end], multi_turn)
    res.skipped_turns += [(j, REWRITTEN) for j in dropped]
    for g in groups:
        res.sequences.append(finish(ftoks[g[-1]], [spans[j] for j in g], g[-1] + 1, tuple(g), max_length))
    return res


def explain_merged_whitespace(res: RenderResult, msgs: list[dict], texts: TurnTexts, tokenizer) -> None:
    """Replace the generic `NOT_PREFIX` reason by the real one where an answer's leading whitespace merged with
    the generation prompt's last token (the prompt is a prefix as text, not as tokens)."""
    changed = False
    for n, (k, why) in enumerate(res.skipped_turns):
        content, p, f = msgs[k].get("content"), texts.prompt.get(k), texts.full.get(k)
        if why != NOT_PREFIX or not isinstance(content, str) or not content[:1].isspace() or p is None \
                or f is None or not f.startswith(p):
            continue
        first = encode(tokenizer, [f[len(p.rstrip()):]])[0][:1]
        ws = content[:len(content) - len(content.lstrip())]
        res.skipped_turns[n] = (k, MERGED.format(ws=ws, joined=tokenizer.decode(first) if first else ws))
        changed = True
    if changed and res.error:
        res.error = "; ".join(f"message {k + 1}: {why}" for k, why in res.skipped_turns)

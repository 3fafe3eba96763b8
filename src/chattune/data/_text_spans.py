"""Trained spans found by comparing rendered TEXT: tokenize each training sequence's full text once,
instead of every prompt and every full render, and still prove the same spans (see `plan_turns` for why).

`render.render_batch` uses it by default; the reference path (`_spans.assemble_exact`) tokenizes every
prompt P_k as well as every full render F_k, so roughly twice the text of a single-turn conversation.
Both give identical ``input_ids``/``labels`` (the render tests compare them on every real template).
"""
from __future__ import annotations

from dataclasses import dataclass

from ._spans import REWRITTEN, RenderResult, Span, TurnTexts, encode, finish, group, nth_index


@dataclass(frozen=True)
class Markup:
    """What the text path needs to know about the template's special tokens (see `plan_turns`)."""

    eot_id: int
    eot_text: str
    anchors: tuple[tuple[str, int], ...]  # added tokens the template writes, as (text, id)


def markup(tokenizer, kw: dict, eot: int) -> Markup | None:
    """The template's end-of-turn and anchor tokens, or None when the text path cannot be used."""
    added = {int(i): t for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    if eot not in added:
        return None
    probe = [{"role": "system", "content": "S."}, {"role": "user", "content": "U."},
             {"role": "assistant", "content": "A."}, {"role": "user", "content": "V."}]
    try:
        text = (tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False, **kw)
                + tokenizer.apply_chat_template(probe[1:3], tokenize=False, **kw))
    except Exception:  # noqa: BLE001 — e.g. a template that rejects system messages: exact path only
        return None
    found = [(t.content, i) for i, t in added.items() if t.content and t.content in text]
    # Whitespace tokens (Gemma's "\n", "\n\n") overlap each other and plain text: useless as anchors.
    anchors = tuple((c, i) for c, i in found if c.strip() and not any(c != o and c in o for o, _ in found))
    return Markup(eot, added[eot].content, anchors)


@dataclass(frozen=True)
class Anchor:
    """The last added token inside a prompt P_k: its char end and text (``(0, "")`` when P_k has none)."""

    end: int = 0
    text: str = ""


@dataclass(frozen=True)
class TurnPlan:
    """How one conversation's trained turns are grouped and where each turn sits in its full text.

    Attributes:
        groups: trained turns per sequence; each group's last turn's full render is the sequence.
        dropped: turns that fit no sequence (multi_turn="consistent").
        ends: per turn, the char end of its end-of-turn text in F_k.
        anchor: per turn, the last added token of P_k.
    """

    groups: list[list[int]]
    dropped: list[int]
    ends: dict[int, int]
    anchor: dict[int, Anchor]


def plan_turns(texts: TurnTexts, mk: Markup, multi_turn: str) -> TurnPlan | None:
    """Group turns by comparing rendered TEXT, so only each sequence's full text needs tokenizing.

    Why this is exact: tokenizers cut the text at added (special) tokens before anything else, so the
    tokens left of an added token never depend on the text right of it. Hence if two renders agree as
    text up to and including an added token, they agree as tokens up to it. `find_spans` then checks
    the short tail of each prompt after its last added token against the sequence's tokens, and counts
    added tokens to be sure every occurrence in the text became one token. Anything unexpected returns
    None and the conversation takes the reference path (`_spans.assemble_exact`).
    """
    ends: dict[int, int] = {}
    anchor: dict[int, Anchor] = {}
    for k in texts.turns:
        p, f = texts.prompt[k], texts.full[k]
        if not f.startswith(p):
            return None
        at = f.rfind(mk.eot_text)
        if at < len(p):
            return None
        ends[k] = at + len(mk.eot_text)
        best = Anchor()
        for a, _ in mk.anchors:
            i = p.rfind(a)
            if i >= 0 and i + len(a) > best.end:
                best = Anchor(i + len(a), a)
        anchor[k] = best
    full = texts.full
    groups, dropped = group(texts.turns, lambda j, t: full[t].startswith(full[j][:ends[j]]), multi_turn)
    return TurnPlan(groups, dropped, ends, anchor)


def find_spans(ids: list[int], seq_text: str, members: list[int], tp: TurnPlan, tails: dict[int, list[int]],
               mk: Markup) -> list[Span] | None:
    """The trained spans of `members` inside one sequence's tokens, or None when a count or tail disagrees.

    Args:
        ids: the sequence's tokens.
        seq_text: its text (F of the group's last turn).
        members: the group's turns.
        tp: the conversation's plan.
        tails: per turn, the tokens of P_k after its anchor.
        mk: the template's markup.
    """
    if seq_text.count(mk.eot_text) != ids.count(mk.eot_id):
        return None
    anchor_ids = dict(mk.anchors)
    spans = []
    for j in members:
        a = tp.anchor[j]
        if a.text:
            a_id = anchor_ids[a.text]
            if seq_text.count(a.text) != ids.count(a_id):
                return None
            i_a = nth_index(ids, a_id, seq_text.count(a.text, 0, a.end))
            if i_a < 0:
                return None
        else:
            i_a = -1
        tail = tails[j]
        s = i_a + 1 + len(tail)
        if ids[i_a + 1:s] != tail:
            return None
        e = nth_index(ids, mk.eot_id, seq_text.count(mk.eot_text, 0, tp.ends[j]))
        if e < s:  # also catches e == -1
            return None
        spans.append(Span(s, e + 1))
    return spans


def render_by_text(todo: dict[int, TurnTexts], mk: Markup, tokenizer, multi_turn: str, max_length: int | None,
                   results: list[RenderResult]) -> list[int]:
    """Fill ``results[i]`` for each conversation ``i`` of `todo` whose spans the text path can prove.

    Returns:
        The conversations left for the reference path.
    """
    exact: list[int] = []
    plans: dict[int, TurnPlan] = {}
    for i, texts in todo.items():
        tp = plan_turns(texts, mk, multi_turn)
        if tp is None:
            exact.append(i)
        else:
            plans[i] = tp
    # One tokenizer call: every sequence's full text, then each distinct prompt tail ("assistant\n"
    # repeats: encoded once).
    seq_texts = [todo[i].full[g[-1]] for i, tp in plans.items() for g in tp.groups]
    tail_text = {i: {j: todo[i].prompt[j][tp.anchor[j].end:] for g in tp.groups for j in g}
                 for i, tp in plans.items()}
    unique = list(dict.fromkeys(t for per in tail_text.values() for t in per.values()))
    toks = encode(tokenizer, seq_texts + unique)
    tail_of = dict(zip(unique, toks[len(seq_texts):]))
    seq_toks = iter(toks[:len(seq_texts)])
    for i, tp in plans.items():
        res = RenderResult(skipped_turns=[(j, REWRITTEN) for j in tp.dropped])
        tails = {j: tail_of[t] for j, t in tail_text[i].items()}
        ok = True
        for g in tp.groups:
            ids = next(seq_toks)  # consumed even after a failure, so later conversations stay aligned
            spans = find_spans(ids, todo[i].full[g[-1]], g, tp, tails, mk) if ok else None
            if spans is None:
                ok = False
                continue
            res.sequences.append(finish(ids, spans, g[-1] + 1, tuple(g), max_length))
        if ok:
            results[i] = res
        else:
            exact.append(i)
    return exact

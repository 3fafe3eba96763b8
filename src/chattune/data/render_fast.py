"""The fast path of `render.render_batch`: tokenize each training sequence's full text once, instead of
every prompt and every full render, and still prove the same spans (see `fast_plan` for why).

The exact path tokenizes every prompt P_k as well as every full render F_k, so roughly twice the text of
a single-turn conversation; both paths give identical ``input_ids``/``labels`` (tests/test_render.py
compares them on every real template).
"""
from __future__ import annotations

from dataclasses import dataclass

from .render import _REWRITTEN, RenderResult, _encode, _finish, _group, _nth_index


@dataclass
class Markup:
    """What the fast path needs to know about the template's special tokens (see `fast_plan`)."""

    eot_id: int
    eot_text: str
    anchors: list[tuple[str, int]]  # added tokens the template writes, as (text, id)


def markup(tokenizer, kw: dict, eot: int) -> Markup | None:
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
    anchors = [(c, i) for c, i in found if c.strip() and not any(c != o and c in o for o, _ in found)]
    return Markup(eot, added[eot].content, anchors)


def fast_plan(trained: list[int], ptext: dict[int, str], ftext: dict[int, str], mk: Markup,
              multi_turn: str) -> tuple[list[list[int]], list[int], dict[int, int], dict[int, tuple[int, str]]] | None:
    """Group turns by comparing rendered TEXT, so only each sequence's full text needs tokenizing.

    Why this is exact: tokenizers cut the text at added (special) tokens before anything else, so the
    tokens left of an added token never depend on the text right of it. Hence if two renders agree as
    text up to and including an added token, they agree as tokens up to it. `fast_spans` then checks
    the short tail of each prompt after its last added token against the sequence's tokens, and counts
    added tokens to be sure every occurrence in the text became one token. Anything unexpected returns
    None and the conversation takes `render._assemble_exact`.

    Returns:
        ``(groups, dropped, ends, anchor)`` or None: ``ends[k]`` = char end of turn k's end-of-turn text;
        ``anchor[k]`` = (char end, text) of the last added token in P_k (``(0, "")`` when it has none).
    """
    ends: dict[int, int] = {}
    anchor: dict[int, tuple[int, str]] = {}
    for k in trained:
        p, f = ptext[k], ftext[k]
        if not f.startswith(p):
            return None
        at = f.rfind(mk.eot_text)
        if at < len(p):
            return None
        ends[k] = at + len(mk.eot_text)
        best = (0, "")
        for a, _ in mk.anchors:
            i = p.rfind(a)
            if i >= 0 and i + len(a) > best[0]:
                best = (i + len(a), a)
        anchor[k] = best
    groups, dropped = _group(trained, lambda j, t: ftext[t].startswith(ftext[j][:ends[j]]), multi_turn)
    return groups, dropped, ends, anchor


def fast_spans(ids: list[int], seq_text: str, group: list[int], ptext: dict[int, str], ends: dict[int, int],
               anchor: dict[int, tuple[int, str]], tails: dict[int, list[int]], mk: Markup,
               anchor_ids: dict[str, int]) -> list[tuple[int, int]] | None:
    if seq_text.count(mk.eot_text) != ids.count(mk.eot_id):
        return None
    spans = []
    for j in group:
        a_end, a_text = anchor[j]
        if a_text:
            a_id = anchor_ids[a_text]
            if seq_text.count(a_text) != ids.count(a_id):
                return None
            i_a = _nth_index(ids, a_id, seq_text.count(a_text, 0, a_end))
            if i_a < 0:
                return None
        else:
            i_a = -1
        tail = tails[j]
        s = i_a + 1 + len(tail)
        if ids[i_a + 1:s] != tail:
            return None
        e = _nth_index(ids, mk.eot_id, seq_text.count(mk.eot_text, 0, ends[j]))
        if e < s:  # also catches e == -1
            return None
        spans.append((s, e + 1))
    return spans


def render_fast(plan: dict[int, list[int]], ptext: dict, ftext: dict, mk: Markup, tokenizer, multi_turn: str,
                max_length: int | None, results: list[RenderResult]) -> list[int]:
    """Fill `results` for the conversations the fast path can prove; return the others."""
    exact: list[int] = []
    plans = {}
    for i, ks in plan.items():
        fp = fast_plan(ks, {k: ptext[(i, k)] for k in ks}, {k: ftext[(i, k)] for k in ks}, mk, multi_turn)
        if fp is None:
            exact.append(i)
        else:
            plans[i] = fp
    seq_jobs = [(i, g[-1]) for i, (groups, *_ ) in plans.items() for g in groups]
    tail_jobs = [(i, j) for i, (groups, *_ ) in plans.items() for g in groups for j in g]
    tail_texts = [ptext[(i, j)][plans[i][3][j][0]:] for i, j in tail_jobs]
    unique = list(dict.fromkeys(tail_texts))  # tails repeat ("assistant\n"): encode each once
    toks = _encode(tokenizer, [ftext[j] for j in seq_jobs] + unique)
    seq_toks = dict(zip(seq_jobs, toks))
    tail_of = dict(zip(unique, toks[len(seq_jobs):]))
    tails = {job: tail_of[t] for job, t in zip(tail_jobs, tail_texts)}
    anchor_ids = dict(mk.anchors)
    for i, (groups, dropped, ends, anchor) in plans.items():
        res = RenderResult(skipped_turns=[(j, _REWRITTEN) for j in dropped])
        for g in groups:
            t = g[-1]
            ids = seq_toks[(i, t)]
            spans = fast_spans(ids, ftext[(i, t)], g, {j: ptext[(i, j)] for j in g}, ends, anchor,
                               {j: tails[(i, j)] for j in g}, mk, anchor_ids)
            if spans is None:
                break
            res.sequences.append(_finish(ids, spans, t + 1, tuple(g), max_length))
        else:
            results[i] = res
            continue
        exact.append(i)
    return exact

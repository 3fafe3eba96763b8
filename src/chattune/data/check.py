"""`chattune data check`: what a data file holds and whether chattune will train it the way inference runs.

`check_data` returns a plain report dict (the CLI prints it); `verify_sequences` re-checks the loss-mask
guarantee of `render.py` literally against ``apply_chat_template``, independent of how render found it.
"""
from __future__ import annotations

import functools
import itertools
import random
import statistics
from collections.abc import Sequence
from typing import Any

from ..config import DataConfig, DataSource
from ..errors import ChattuneError
from .render import (
    IGNORE,
    Rendered,
    describe_kwargs,
    end_of_turn_ids,
    inference_thinking,
    prepare_messages,
    render_batch,
    row_thinking,
    template_kwargs,
    thinking_split,
    untemplatable_tools,
    with_tools,
)
from .template_policy import control_tokens, control_tokens_in, reads_date, today
from .tools import located_problems

HIST_EDGES = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
OK, WARNINGS, ERRORS = 0, 1, 2


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """Contiguous trained spans ``(start, end)`` of a label list."""
    runs, start = [], None
    for i, lab in enumerate([*labels, IGNORE]):
        if lab != IGNORE and start is None:
            start = i
        elif lab == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


def verify_sequences(messages: Sequence[dict], seqs: Sequence[Rendered], tokenizer, *, thinking: str = "off",
                     loss: str = "assistant", eot: int | None = None, date: str | None = None,
                     tools: Sequence[dict] | None = None) -> list[str]:
    """Re-check (a), (b), (c) for one conversation's rendered sequences.

    (a) tokens before each trained turn == ``apply_chat_template(messages[:k], add_generation_prompt=True)``;
    (b) each sequence == ``apply_chat_template(messages[:n])``; (c) each trained turn ends with the
    end-of-turn token and nothing after it is trained. Truncated sequences are checked as prefixes.

    Args:
        messages: the conversation as given to render.
        seqs: what `render_conversation` returned for it.
        tokenizer: the same tokenizer.
        thinking: the thinking policy used (``"mixed"``: the conversation's own form, `render.row_thinking`).
        loss: the loss policy used (``"all"`` checks (b) and that every token is trained).
        eot: the template's end-of-turn id, when the caller already has it (default: detected).
        date: the pinned day, for templates that write today's date.
        tools: the functions the conversation may call, as rendered.

    Returns:
        Problems found, as sentences; empty when the guarantee holds.
    """
    thinking = row_thinking(messages, thinking)
    kw = template_kwargs(tokenizer, thinking, date)
    msgs = with_tools(tokenizer, prepare_messages(messages, thinking), tools, kw)
    eot = end_of_turn_ids(tokenizer)[0] if eot is None else eot
    tools_kw = {"tools": list(tools)} if tools else {}

    def chat(m: list[dict], gen: bool) -> list[int]:  # inference's call (control tokens in content are text)
        return list(tokenizer.apply_chat_template(m, add_generation_prompt=gen, tokenize=True, return_dict=False,
                                                  sanitize_control_tokens=True, **kw, **tools_kw))

    problems: list[str] = []
    for n, r in enumerate(seqs, 1):
        ids, labels = r.input_ids, r.labels
        full = chat(msgs[:r.n_messages], False)
        want = full[:len(ids)] if r.truncated else full
        if ids != want or len(labels) != len(ids):
            problems.append(f"sequence {n}: tokens differ from apply_chat_template of its {r.n_messages} messages")
            continue
        if loss == "all":
            if labels != ids:
                problems.append(f"sequence {n}: loss=all but some tokens are not trained")
            continue
        runs = _runs(labels)
        if not r.truncated and len(runs) != len(r.trained_turns):
            problems.append(f"sequence {n}: {len(runs)} trained spans for {len(r.trained_turns)} trained turns")
            continue
        for (s, e), k in zip(runs, r.trained_turns):
            if msgs[k].get("role") != "assistant":
                problems.append(f"sequence {n}: trains message {k + 1}, which is not an assistant message")
            if ids[:s] != chat(msgs[:k], True):
                problems.append(f"sequence {n}: the tokens before turn {k + 1} are not the inference prompt")
            if labels[s:e] != ids[s:e]:
                problems.append(f"sequence {n}: labels of turn {k + 1} differ from its tokens")
            if not (r.truncated and e == len(ids)) and ids[e - 1] != eot:
                problems.append(f"sequence {n}: turn {k + 1} does not end with the end-of-turn token")
    return problems


def _hist(lengths: list[int]) -> list[dict]:
    out = []
    for lo, hi in itertools.pairwise((0, *HIST_EDGES)):
        count = sum(1 for x in lengths if lo < x <= hi)
        if count or hi <= max(lengths, default=0):
            out.append({"range": f"{lo + 1}-{hi}", "count": count})
    top = HIST_EDGES[-1]
    if count := sum(1 for x in lengths if x > top):  # the open last bin only when something is in it
        out.append({"range": f">{top}", "count": count})
    return out


def _length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    s = sorted(lengths)
    return {"min": s[0], "median": int(statistics.median(s)), "p95": s[min(len(s) - 1, int(0.95 * len(s)))],
            "max": s[-1], "mean": round(sum(s) / len(s), 1)}


def check_data(paths: Sequence[str], *, tokenizer=None, max_length: int | None = None, fmt: str = "auto",
               system: str | None = None, loss: str = "assistant", thinking: str = "off",
               multi_turn: str = "split", sample: int = 200, seed: int = 0) -> dict[str, Any]:
    """Report on data files: shape, counts, empty/duplicate rows and, with a tokenizer, token lengths,
    the share over ``max_length``, the trained-token share and a fidelity re-check on a sample.

    Args:
        paths: data files.
        tokenizer: a tokenizer with a chat template, or None for a data-only report.
        max_length: token limit to check against (default: the config default, 1024).
        fmt: input shape, or "auto".
        system: system prompt for conversations without one.
        loss, thinking, multi_turn: render options, as in training.
        sample: how many conversations to re-verify literally (seeded sample).
        seed: sampling seed.

    Returns:
        ``{"files", "conversations", "duplicates_removed", "skipped_rows", "turns", "chars", "thinking" (rows
        rendered with and without thinking, and the inference default), "tools" (tool use and its problems),
        "tokens" (with a tokenizer), "control_tokens" and "fidelity" (with a tokenizer), "warnings", "errors",
        "exit_code"}``;
        exit_code is 0 clean, 1 warnings, 2 errors.
    """
    from .formats import load_conversations

    data_cfg = DataConfig(system=system, loss=loss, thinking=thinking, multi_turn=multi_turn,
                          **({"max_length": max_length} if max_length else {}))
    report: dict[str, Any] = {"warnings": [], "errors": []}
    try:
        convs, loaded = load_conversations([DataSource(path=str(p), format=fmt) for p in paths], data_cfg)
    except ChattuneError as e:
        report["errors"].append(str(e))
        report["exit_code"] = ERRORS
        return report
    report["files"] = [{k: f.get(k) for k in ("path", "format", "records", "conversations", "skipped")}
                       for f in loaded["files"]]
    report["conversations"] = len(convs)
    report["duplicates_removed"] = loaded["duplicates_removed"]
    skipped: dict[str, int] = {}
    for f in loaded["files"]:
        for reason, n in (f.get("skipped") or {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    report["skipped_rows"] = skipped
    report["turns"] = _length_stats([sum(m["role"] == "assistant" for m in c.messages) for c in convs])
    report["chars"] = {
        "prompt": _length_stats([sum(len(m["content"]) for m in c.messages if m["role"] != "assistant") for c in convs]),
        "answer": _length_stats([sum(len(m["content"]) for m in c.messages if m["role"] == "assistant") for c in convs]),
    }
    report["thinking"] = {"policy": thinking, "rows": thinking_split([c.messages for c in convs], thinking),
                          "inference_default": inference_thinking(thinking)}
    _tool_report(report, convs)
    if skipped:
        report["warnings"].append(f"{sum(skipped.values())} row(s) skipped: " +
                                  ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    if loaded["duplicates_removed"]:
        report["warnings"].append(f"{loaded['duplicates_removed']} duplicate conversation(s) removed")
    if tokenizer is not None and convs:
        _token_report(report, convs, tokenizer, data_cfg, sample, seed)
    report["exit_code"] = ERRORS if report["errors"] else WARNINGS if report["warnings"] else OK
    return report


def _tool_report(report: dict, convs: list) -> None:
    """Tool use of the conversations and every problem of it (`tools.tool_problems`), each with file and row."""
    problems = located_problems(convs)
    report["tools"] = {
        "rows_with_tools": sum(1 for c in convs if c.tools),
        "calls": sum(len(m.get("tool_calls") or []) for c in convs for m in c.messages),
        "results": sum(1 for c in convs for m in c.messages if m["role"] == "tool"),
        "functions": sorted({t["function"]["name"] for c in convs for t in c.tools or []}),
        "problems": [f"{level}: {text}" for level, text in problems],
    }
    for level in ("error", "warning"):
        found = [text for lv, text in problems if lv == level]
        if found:
            report[level + "s"].append(f"{len(found)} tool-call {level}(s) (listed under tool problems), e.g. "
                                       f"{found[0]}")


def _control_token_report(report: dict, convs: list, tokenizer) -> None:
    """Every row whose messages hold a control token of the tokenizer: training and inference encode it as
    text (`template_policy`), which is rarely what such data meant."""
    tokens = control_tokens(tokenizer)
    rows = []
    for c in convs:
        for k, tok in control_tokens_in(c.messages, tokens):
            rows.append(f"{c.source}, line/row {c.row}: message {k + 1} ({c.messages[k].get('role')}) holds {tok!r}")
    report["control_tokens"] = rows
    if rows:
        report["warnings"].append(
            f"{len(rows)} message(s) hold a control token of the tokenizer (listed under control tokens); they are "
            f"trained and prompted as plain text, never as the token, e.g. {rows[0]}")


def _token_report(report: dict, convs: list, tokenizer, d: DataConfig, sample: int, seed: int) -> None:
    msgs = [c.messages for c in convs]
    tools = [c.tools for c in convs]
    if reads_date(tokenizer):
        d = d.model_copy(update={"date": d.date or today()})
        report["warnings"].append(f"the chat template writes today's date; checked as {d.date}. Training pins the "
                                  "day it starts (or data.date) and inference renders with that same day")
    _control_token_report(report, convs, tokenizer)
    refused = untemplatable_tools(convs, tokenizer, d.thinking, d.date)
    if refused:
        report["errors"].append(f"{len(refused)} conversation(s) use tools the chat template cannot render (training "
                                f"refuses them), e.g. {refused[0]}")
    lengths, first_trained, trained, errors, skipped_turns, n_seq = [], [], 0, [], 0, 0
    eot = end_of_turn_ids(tokenizer)
    render = functools.partial(render_batch, tokenizer=tokenizer, eot_ids=eot, loss=d.loss, thinking=d.thinking,
                               multi_turn=d.multi_turn, date=d.date)
    for i in range(0, len(msgs), 512):
        for c, res in zip(convs[i:i + 512], render(msgs[i:i + 512], tools=tools[i:i + 512])):
            if res.error:
                errors.append(f"{c.source}, line/row {c.row}: {res.error}")
            skipped_turns += len(res.skipped_turns)
            for r in res.sequences:
                n_seq += 1
                lengths.append(len(r.input_ids))
                trained += r.n_trained
                first_trained.append(next((j for j, x in enumerate(r.labels) if x != IGNORE), len(r.labels)))
    over = sum(1 for x in lengths if x > d.max_length)
    dropped = sum(1 for f in first_trained if f >= d.max_length)
    total = sum(lengths)
    report["tokens"] = {
        "sequences": n_seq, "total": total, "trained": trained,
        "trained_share": round(trained / total, 4) if total else 0.0,
        "lengths": _length_stats(lengths), "histogram": _hist(lengths), "max_length": d.max_length,
        "over_max_length": over, "over_share": round(over / n_seq, 4) if n_seq else 0.0,
        "would_drop": dropped, "render_errors": len(errors), "render_error_examples": errors[:5],
        "skipped_turns": skipped_turns, "date": d.date,
        "template_kwargs": describe_kwargs(template_kwargs(tokenizer, d.thinking, d.date)),
    }
    if over:
        report["warnings"].append(f"{over} of {n_seq} sequence(s) exceed max_length={d.max_length} and will be "
                                  f"truncated ({dropped} lose every trained token and will be dropped)")
    if errors:
        report["warnings"].append(f"{len(errors)} conversation(s) cannot be rendered, e.g. {errors[0]}")
    if skipped_turns:
        report["warnings"].append(f"{skipped_turns} assistant turn(s) will not be trained (the template renders "
                                  "them differently from inference)")
    if not n_seq:
        report["errors"].append("no conversation can be rendered into a training sequence")

    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(convs)), min(sample, len(convs))))
    failed = []
    results = render([msgs[i] for i in picked], tools=[tools[i] for i in picked])
    picked = [i for i, res in zip(picked, results) if not res.error]  # render errors are reported above
    results = [res for res in results if not res.error]
    for i, res in zip(picked, results):
        problems = verify_sequences(msgs[i], res.sequences, tokenizer, thinking=d.thinking, loss=d.loss,
                                    eot=eot[0], date=d.date, tools=tools[i])
        if problems:
            failed.append(f"{convs[i].source}, line/row {convs[i].row}: {problems[0]}")
    report["fidelity"] = {"checked": len(picked), "failed": len(failed), "examples": failed[:5]}
    if failed:
        report["errors"].append(f"fidelity check failed on {len(failed)} of {len(picked)} sampled conversations, "
                                f"e.g. {failed[0]}")

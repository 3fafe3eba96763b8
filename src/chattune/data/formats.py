"""Records → conversations: detect each file's shape, map columns, convert, clean, dedupe.

Shapes (auto-detected per file, or named with ``format:`` in the data source):

- alpaca: instruction, output [, input, system, history = [[q, a], ...]]
- qa: question/answer or query/response [, system]
- prompt_completion: prompt, completion [, system]
- messages: ``messages: [{role, content[, reasoning_content][, tool_calls]}]`` (OpenAI; ``tool`` results) [, tools]
- sharegpt: ``conversations: [{from, value}]`` (human/gpt/system; LLaMA-Factory's function_call/observation)
  [, system, tools]
- text: raw documents in ``text`` → continuation pairs (see `split_text`)

Field names match in any case; ``columns:`` maps our names to the file's (``{instruction: 问题}``).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..config import DataConfig, DataSource, TextSplitConfig
from ..errors import DataError
from .clean import clean_text, dedupe
from .hub import source_identity
from ._rows import MESSAGE_KEYS as _MESSAGE_KEYS
from ._rows import Row as _Row
from ._rows import Skip as _Skip
from ._messages import json_cell, message_list, row_tools
from .readers import read_records
from .types import Conversation

FORMATS = ("alpaca", "qa", "prompt_completion", "messages", "sharegpt", "text")
# Detection order and the field sets that identify each shape (any one alternative).
_REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "messages": (("messages",),),
    "sharegpt": (("conversations",),),
    "alpaca": (("instruction", "output"),),
    "qa": (("question", "answer"), ("query", "response")),
    "prompt_completion": (("prompt", "completion"),),
    "text": (("text",),),
}
_SHAPE_FIELDS = {"alpaca": "instruction, output[, input, system, history]",
                 "qa": "question, answer | query, response", "prompt_completion": "prompt, completion",
                 "messages": "messages: [{role, content}]", "sharegpt": "conversations: [{from, value}]",
                 "text": "text"}
# Without answers (files to predict on) the question alone identifies a single-turn shape.
_PROMPT_ONLY: dict[str, tuple[tuple[str, ...], ...]] = {
    "alpaca": (("instruction",),), "qa": (("question",), ("query",)), "prompt_completion": (("prompt",),)}
SHAPES_HELP = ", ".join(f"{k} ({v})" for k, v in _SHAPE_FIELDS.items())
_USED = {"instruction", "input", "output", "system", "history", "question", "answer", "query", "response",
         "prompt", "completion", "messages", "conversations", "text", "tools"}
# Sentence ends, with any closing quotes/brackets that follow them.
_SENTENCE_END = re.compile(r"(?:[。！？!?]|\.(?=\s|$))[”’\"')）」』]*|\n+")


def _alternatives(shape: str, answers: bool) -> tuple[tuple[str, ...], ...]:
    if shape in ("messages", "sharegpt"):  # either container key, whatever the format is called
        return _REQUIRED["messages"] + _REQUIRED["sharegpt"]
    return _REQUIRED[shape] + (() if answers else _PROMPT_ONLY.get(shape, ()))


def _shape_of(row: _Row) -> str | None:
    for shape, alternatives in _REQUIRED.items():
        alternatives = alternatives if row.answers else _alternatives(shape, False)
        if any(all(f in row.fields for f in alt) for alt in alternatives):
            return shape
    return None


def _rows(records: list, path: str, columns: dict[str, str], answers: bool = True) -> list[_Row]:
    unit = "line" if Path(path).suffix.lower() in (".json", ".jsonl") else "row"
    pairs = [r if isinstance(r, tuple) else (i, r) for i, r in enumerate(records, start=1)]
    columns = {str(k).strip().lower(): str(v) for k, v in columns.items()}
    rows = [_Row(rec, num, path, unit, columns, answers) for num, rec in pairs]
    if rows and columns:
        unknown = sorted(set(columns) - _USED - _MESSAGE_KEYS)
        if unknown:
            raise DataError(f"unknown field name(s) {unknown} in `columns:`; expected some of {sorted(_USED)}",
                            file=path, field="columns")
        first = {str(k).strip().lower() for k in pairs[0][1]}
        for ours, theirs in columns.items():
            if ours not in _MESSAGE_KEYS and theirs.strip().lower() not in first:
                raise rows[0].error(f"`columns:` maps '{ours}' to '{theirs}', but there is no such column; "
                                    f"columns found: {list(pairs[0][1])}", theirs)
    return rows


def detect_format(records: list, path: str | Path, *, columns: dict[str, str] | None = None) -> str:
    """The shape of one file, from its records' field names.

    Args:
        records: ``read_records`` output (``[(number, record)]``) or plain dicts.
        path: the file, for error messages.
        columns: the data source's column map (our name -> the file's column name).

    Returns:
        One of `FORMATS`.

    Raises:
        DataError: no known shape (lists the columns found and the shapes accepted), or a row whose
            shape differs from the first row's (names that row).
    """
    return _detect(_rows(records, str(path), columns or {}))


def _detect(rows: list[_Row]) -> str:
    if not rows:
        raise DataError("no records; expected at least one")
    first = rows[0]
    shape = _shape_of(first)
    if shape is None:
        raise first.error(f"no known data shape: columns found {first.keys()}; expected one of {SHAPES_HELP}; "
                          "or map your column names with `columns:` in the data source (e.g. "
                          "{instruction: 问题, output: 答案})")
    for row in rows[1:]:
        other = _shape_of(row)
        if other is None:
            _check_fields(row, shape, first_num=first.num)
        elif other != shape:
            raise row.error(f"this record looks like {other} but the first record ({first.unit} {first.num}) "
                            f"is {shape}; one file must hold one shape (columns found: {row.keys()})")
    return shape


def _check_fields(row: _Row, shape: str, first_num: int | None = None) -> None:
    alternatives = _alternatives(shape, row.answers)
    if any(all(f in row.fields for f in alt) for alt in alternatives):
        return
    missing = [f for f in alternatives[0] if f not in row.fields]
    origin = f" (like the first record, {row.unit} {first_num})" if first_num is not None else ""
    raise row.error(f"missing field(s) {missing} needed by the {shape} shape{origin}; columns found: "
                    f"{row.keys()}; expected {shape} ({_SHAPE_FIELDS[shape]}), or map names with `columns:`",
                    missing[0])


# ---------------------------------------------------------------- one row → messages


def _history(row: _Row) -> list[dict]:
    h = json_cell(row.fields.get("history"))
    if h is None or h == "" or (isinstance(h, float) and math.isnan(h)):
        return []
    if not isinstance(h, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in h):
        raise row.error(f"found {json.dumps(h, ensure_ascii=False, default=str)[:80]}; expected a list of "
                        "[question, answer] pairs", "history")
    out = []
    for q, a in h:
        out += [{"role": "user", "content": row.text("history", q, use_value=True)},
                {"role": "assistant", "content": row.text("history", a, use_value=True)}]
    return out


def _single_turn(row: _Row, shape: str) -> list[dict]:
    f = row.fields
    if shape == "alpaca":
        instruction, extra = row.text("instruction"), row.text("input")
        user = f"{instruction}\n{extra}" if instruction.strip() and extra.strip() else instruction + extra
        answer = row.text("output")
        msgs = _history(row)
    elif shape == "qa":
        q, a = ("question", "answer") if "question" in f else ("query", "response")
        user, answer, msgs = row.text(q), row.text(a), []
    else:
        user, answer, msgs = row.text("prompt"), row.text("completion"), []
    system = row.text("system")
    msgs = ([{"role": "system", "content": system}] if system else []) + msgs + [{"role": "user", "content": user}]
    if row.answers or answer.strip():
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def _cut(doc: str, ratio: float) -> int:
    """Index to cut `doc` at: the sentence end nearest ``ratio * len``, else the nearest space."""
    target = ratio * len(doc)
    ends = [m.end() for m in _SENTENCE_END.finditer(doc) if 0 < m.end() < len(doc.rstrip())]
    if not ends:
        ends = [m.start() for m in re.finditer(r"\s", doc) if 0 < m.start()]
    if not ends:
        return max(1, round(target))
    return min(ends, key=lambda e: abs(e - target))


def split_text(doc: str, cfg: TextSplitConfig) -> tuple[str, str]:
    """Turn one document into a (prompt, completion) continuation pair.

    Args:
        doc: the cleaned document.
        cfg: prefix, minimum lengths and the cut ratio.

    Returns:
        ``(prompt_prefix + first part, rest)``, cut at a sentence end (。！？.!? or a line break) near
        ``prompt_ratio`` of the text.

    Raises:
        _Skip: "text_too_short" or "completion_too_short" (counted in the report).
    """
    doc = doc.strip()
    if len(doc) < cfg.min_chars:
        raise _Skip("text_too_short")
    at = _cut(doc, cfg.prompt_ratio)
    head, tail = doc[:at].rstrip(), doc[at:].strip()
    if len(tail) < cfg.min_completion_chars or not head:
        raise _Skip("completion_too_short")
    return cfg.prompt_prefix + head, tail


def _convert(row: _Row, shape: str, data_cfg: DataConfig, default_system: str | None,
             source_tools: list[dict] | None = None) -> Conversation:
    if shape == "text":
        prompt, completion = split_text(clean_text(row.text("text"), data_cfg.clean), data_cfg.text)
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    else:
        # The message dicts are fresh from the converters, so they are cleaned in place.
        msgs = message_list(row) if shape in ("messages", "sharegpt") else _single_turn(row, shape)
        if not msgs:
            raise _Skip("no_assistant")
        cc = data_cfg.clean
        empty_output = empty_prompt = False
        for m in msgs:
            m["content"] = clean_text(m["content"], cc)
            if "reasoning_content" in m:
                m["reasoning_content"] = clean_text(m["reasoning_content"], cc)
            if not m["content"]:
                empty_output |= m["role"] == "assistant" and not m.get("reasoning_content") and not m.get("tool_calls")
                empty_prompt |= m["role"] == "user"
        if empty_output or empty_prompt:
            raise _Skip("empty_output" if empty_output else "empty_prompt")
        if msgs[0]["role"] == "system" and not msgs[0]["content"]:
            msgs = msgs[1:]
    if default_system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": default_system})
    meta = {k: v for k, v in row.fields.items() if k not in _USED and isinstance(v, (str, int, float, bool))}
    return Conversation(messages=msgs, source=row.path, row=row.num, meta=meta, tools=row_tools(row, source_tools))


def conversations_from_records(records: list, source: DataSource, data_cfg: DataConfig | None = None, *,
                               require_answer: bool = True) -> tuple[list[Conversation], dict]:
    """Convert one file's records (no dedupe).

    Args:
        records: ``read_records`` output.
        source: the data source (format, columns, system).
        data_cfg: cleaning, text splitting and the default system prompt.
        require_answer: see `load_conversations`.

    Returns:
        ``(conversations, {"format", "records", "conversations", "skipped": {reason: count}})``.

    Raises:
        DataError: bad shape or value (names file, line/row, field), or no usable row at all.
    """
    data_cfg = data_cfg or DataConfig()
    rows = _rows(records, source.label, source.columns, require_answer)
    if source.format == "auto":
        shape = _detect(rows)
    else:
        shape = source.format
        for row in rows:
            _check_fields(row, shape)
    system = source.system if source.system is not None else data_cfg.system
    convs: list[Conversation] = []
    skipped: dict[str, int] = {}
    for row in rows:
        try:
            convs.append(_convert(row, shape, data_cfg, system, source.tools))
        except _Skip as s:
            skipped[s.reason] = skipped.get(s.reason, 0) + 1
    if not convs:
        hint = {"empty_output": "every answer is empty; expected the assistant's text in each row",
                "text_too_short": f"every document is shorter than data.text.min_chars={data_cfg.text.min_chars}"}
        top = max(skipped, key=lambda reason: skipped[reason])
        answer = {"alpaca": "output", "qa": "answer" if "answer" in rows[0].fields else "response",
                  "prompt_completion": "completion", "text": "text"}.get(shape)
        field = rows[0].origin.get(answer, answer) if answer else ("messages" if shape == "messages" else
                                                                    "conversations")
        raise DataError(f"no usable conversation in {len(rows)} records (skipped: {skipped}); "
                        f"{hint.get(top, 'check the field values')}", file=source.label, field=field)
    return convs, {"format": shape, "records": len(rows), "conversations": len(convs), "skipped": skipped}


def load_conversations(sources: list[DataSource], data_cfg: DataConfig, *,
                       require_answer: bool = True) -> tuple[list[Conversation], dict]:
    """Read, convert, clean and dedupe every source.

    Args:
        sources: the data files (``data_cfg.train`` or ``data_cfg.eval``).
        data_cfg: cleaning, text splitting, default system prompt.
        require_answer: True (training, eval) drops unanswered trailing user turns and skips rows
            with an empty answer. False (files to predict on) keeps a conversation that ends with the
            user, and accepts single-turn files without an answer column (prompt, instruction,
            question/query alone).

    Returns:
        ``(conversations, report)`` where report is ``{"files": [{"path", "sha256", "format", "records",
        "conversations", "skipped": {reason: count}}], "duplicates_removed": int, "conversations": int}``.
        System prompt precedence: the row's own > ``source.system`` > ``data_cfg.system``.

    Raises:
        DataError: any unreadable file or bad record (names file, line/row and field).
    """
    all_convs: list[Conversation] = []
    files = []
    for src in sources:
        convs, info = conversations_from_records(read_records(src), src, data_cfg, require_answer=require_answer)
        files.append({**source_identity(src), **info})
        all_convs += convs
    removed = 0
    if data_cfg.clean.dedupe:
        all_convs, removed = dedupe(all_convs)
    return all_convs, {"files": files, "duplicates_removed": removed, "conversations": len(all_convs)}


def read_conversations(source: DataSource | str | Path | list, data_cfg: DataConfig | None = None, *,
                       require_answer: bool = True) -> list[Conversation]:
    """Conversations of one or more files, without the report (the public convenience).

    Args:
        source: a path, a `DataSource`, or a list of either.
        data_cfg: cleaning etc. (default `DataConfig()`).
        require_answer: see `load_conversations`.

    Returns:
        The conversations, cleaned and deduplicated as ``data_cfg.clean`` says.
    """
    items = source if isinstance(source, list) else [source]
    sources = [s if isinstance(s, DataSource) else DataSource(path=str(s)) for s in items]
    return load_conversations(sources, data_cfg or DataConfig(), require_answer=require_answer)[0]

"""The message-list shapes (OpenAI ``messages``, ShareGPT ``conversations``) → the one message shape,
tool calls and results included (private to `chattune.data.formats`; the tool shape is `tools`'s)."""
from __future__ import annotations

import json
from typing import Any

from ._rows import Row
from .tools import (
    CALL_ROLES,
    RESULT_ROLES,
    ToolShapeError,
    name_results,
    openai_calls,
    parse_tools,
    result_content,
    sharegpt_calls,
)

ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
         "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
         **{r: "tool" for r in RESULT_ROLES}, **{r: "assistant" for r in CALL_ROLES}}


def json_cell(v: Any) -> Any:
    """A JSON list written into a CSV/xlsx cell, parsed; anything else unchanged."""
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            pass
    return v


def row_tools(row: Row, source_tools: list[dict] | None) -> list[dict] | None:
    """The functions a row may call: its own ``tools`` field, else its data source's ``tools:``.

    Raises:
        DataError: a ``tools`` value that is not a list of named functions (names file, row, field).
    """
    try:
        return parse_tools(row.fields.get("tools")) or parse_tools(source_tools)
    except ToolShapeError as e:
        raise row.error(f"tools {e}", "tools") from None


def _content(row: Row, key: str, m: dict, ck: str | None, where: str) -> str:
    content = m.get(ck) if ck is not None else None
    if isinstance(content, list) and content and all(isinstance(p, dict) and p.get("type") == "text"
                                                     for p in content):
        content = "".join(str(p.get("text") or "") for p in content)  # OpenAI text content parts
    return row.text(key, content, use_value=True, where=f"{where}.{ck}")


def _parallel_results(before: list[dict], value: Any) -> list[dict] | None:
    """LLaMA-Factory answers a turn of n parallel calls with one observation: a JSON list of n results. It becomes
    n tool messages, one per call, as OpenAI writes them (None when the observation is anything else)."""
    calls = before[-1].get("tool_calls") if before and before[-1]["role"] == "assistant" else None
    if not calls or len(calls) < 2 or not isinstance(value, str):
        return None
    try:
        items = json.loads(value)
    except json.JSONDecodeError:
        return None
    if not isinstance(items, list) or len(items) != len(calls):
        return None
    return [{"role": "tool", "content": result_content(item) if not isinstance(item, str) else item}
            for item in items]


def message_list(row: Row) -> list[dict]:
    """The messages of one ``messages``/``conversations`` row, tool calls and results in the shape `tools` documents.

    Raises:
        DataError: a message or tool field that cannot be read (names file, row, field and what was expected).
    """
    key = "messages" if "messages" in row.fields else "conversations"
    value = json_cell(row.fields[key])
    if not isinstance(value, list) or not value:
        raise row.error(f"found {json.dumps(value, ensure_ascii=False, default=str)[:80]}; expected a non-empty "
                        "list of messages like [{\"role\": \"user\", \"content\": ...}]", key)
    cols = row.columns
    role_keys = [cols.get("role", "role"), cols.get("from", "from")]
    content_keys = [cols.get("content", "content"), cols.get("value", "value")]
    out: list[dict] = []
    for i, m in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise row.error(f"{where} is {type(m).__name__}; expected an object with role and content", key)
        rk = next((k for k in role_keys if k in m), None)
        ck = next((k for k in content_keys if k in m), None)
        raw_role = str(m[rk]).strip().lower() if rk is not None else ""
        role = ROLES.get(raw_role)
        calls_only = role == "assistant" and (m.get("tool_calls") or m.get("function_call"))
        if rk is None or (ck is None and not calls_only):
            raise row.error(f"{where} has keys {list(m)}; expected role/content (OpenAI) or from/value "
                            "(ShareGPT); map other names with `columns: {role: ..., content: ...}`", key)
        if role is None:
            raise row.error(f"{where}.{rk} is {m[rk]!r}; expected one of {sorted(ROLES)}", key)
        if role == "system" and i != 0:
            raise row.error(f"{where} is a system message; expected a system message only first", key)
        try:
            if raw_role in CALL_ROLES:  # LLaMA-Factory: the turn's value is the call(s) as JSON
                msg = {"role": role, "content": "", "tool_calls": sharegpt_calls(m.get(ck), f"{where}.{ck}")}
            elif role == "tool":
                split = _parallel_results(out, m.get(ck)) if raw_role == "observation" else None
                if split:
                    out += split
                    continue
                parts = m.get(ck)
                text = _content(row, key, m, ck, where) if isinstance(parts, list) and parts and all(
                    isinstance(p, dict) and p.get("type") == "text" for p in parts) else result_content(parts)
                msg = {"role": role, "content": row.text(key, text, use_value=True, where=f"{where}.{ck}")}
                for k in ("tool_call_id", "name"):
                    if m.get(k) not in (None, ""):
                        msg[k] = str(m[k])
            else:
                msg = {"role": role, "content": _content(row, key, m, ck, where)}
                calls = openai_calls(m, where) if role == "assistant" else []
                if calls:
                    msg["tool_calls"] = calls
        except ToolShapeError as e:
            raise row.error(str(e), key) from None
        if role == "assistant" and m.get("reasoning_content") not in (None, ""):
            msg["reasoning_content"] = row.text(key, m["reasoning_content"], use_value=True,
                                                where=f"{where}.reasoning_content")
        out.append(msg)
    while row.answers and out and out[-1]["role"] != "assistant":
        out.pop()  # trailing user turns (and unanswered tool results) have no answer to learn
    system = row.text("system") if "system" in row.fields else ""
    if system and out and out[0]["role"] != "system":  # LLaMA-Factory keeps the system prompt in its own column
        out.insert(0, {"role": "system", "content": system})
    name_results(out)
    return out

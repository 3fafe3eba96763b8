"""Normalise any supported file into one shape: messages JSONL, Alpaca JSON/JSONL, or an xlsx sheet.

Everything is written atomically (a crash or a bad row never leaves a half-written file).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import DataConfig, DataSource
from ..errors import DataError
from ..fsutil import atomic_path
from .formats import FORMATS, load_conversations
from .types import Conversation

OUT_SUFFIXES = (".jsonl", ".json", ".xlsx")  # what `convert` writes (a shape round-trips through each)
RECORD_SUFFIXES = (*OUT_SUFFIXES, ".csv")     # what `write_records` writes (predictions too)
TARGETS = ("messages", "alpaca", "prompt_completion")
_DEFAULT_TARGET = {".jsonl": "messages", ".json": "alpaca", ".xlsx": "prompt_completion"}


def write_records(rows: list[dict], out_path: str | Path, *, columns: dict[str, str] | None = None) -> int:
    """Write plain records atomically as .jsonl, .json (an array), .xlsx or .csv.

    Args:
        rows: one dict per record; in .xlsx and .csv a list or dict value becomes its JSON text (a cell
            holds text).
        out_path: the target; its suffix picks the container.
        columns: tables only: rename keys to headers (e.g. ``{"prompt": "Prompt"}``); the sheet
            is written by pandas with its index, like the tutorials' ``train.xlsx``.

    Returns:
        The number of records written.

    Raises:
        DataError: an unsupported suffix.
    """
    out = check_record_suffix(out_path)
    suffix = out.suffix.lower()
    with atomic_path(out) as tmp:
        if suffix == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        elif suffix == ".json":
            tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        else:
            import pandas as pd

            df = pd.DataFrame([{k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                                for k, v in r.items()} for r in rows])
            if columns:
                df = df.rename(columns=columns)
            if suffix == ".csv":
                df.to_csv(tmp, index=False, encoding="utf-8")
            else:  # engine named explicitly: the temp file's suffix is not .xlsx.
                df.to_excel(tmp, index=True, engine="openpyxl")
    return len(rows)


def check_record_suffix(out_path: str | Path) -> Path:
    """`out_path` as a Path when `write_records` can write its suffix (call it before long work).

    Raises:
        DataError: an unsupported suffix (names the file and the suffixes allowed).
    """
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in RECORD_SUFFIXES:
        raise DataError(f"cannot write {suffix or 'a file without suffix'!r}; expected one of "
                        f"{', '.join(RECORD_SUFFIXES)}", file=str(out))
    return out


def _single_turn(conv: Conversation, target: str) -> tuple[str | None, list[tuple[str, str]]]:
    """(system, [(user, assistant), ...]) or a DataError for shapes the target cannot hold."""
    msgs = conv.messages
    system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
    turns = msgs[1:] if system is not None else msgs
    pairs = []
    for i in range(0, len(turns), 2):
        pair = turns[i:i + 2]
        if [m["role"] for m in pair] != ["user", "assistant"]:
            raise DataError(f"roles {[m['role'] for m in turns]} do not alternate user/assistant; the {target} "
                            "shape cannot hold them: convert to .jsonl (messages) instead",
                            file=conv.source, row=conv.row)
        if pair[1].get("reasoning_content"):
            raise DataError(f"the answer has reasoning_content, which the {target} shape cannot hold; convert "
                            "to .jsonl (messages) instead", file=conv.source, row=conv.row)
        pairs.append((pair[0]["content"], pair[1]["content"]))
    if target == "prompt_completion" and len(pairs) != 1:
        raise DataError(f"a {len(pairs)}-turn conversation; prompt_completion holds one turn: use --to "
                        "alpaca (history) or .jsonl (messages)", file=conv.source, row=conv.row)
    return system, pairs


def _row(conv: Conversation, target: str, xlsx: bool) -> dict:
    if target == "messages":
        return {"messages": conv.messages, **({"tools": conv.tools} if conv.tools else {})}
    if conv.tools:
        raise DataError(f"the row declares tools, which the {target} shape cannot hold; convert to .jsonl "
                        "(messages) instead", file=conv.source, row=conv.row, field="tools")
    system, pairs = _single_turn(conv, target)
    (user, answer) = pairs[-1]
    row: dict[str, Any]
    if target == "alpaca":
        row = {"instruction": user, "input": "", "output": answer}
        if len(pairs) > 1:
            history = [list(p) for p in pairs[:-1]]
            # A cell holds text: the history goes in as JSON, which the reader parses back.
            row["history"] = json.dumps(history, ensure_ascii=False) if xlsx else history
    else:
        row = {"prompt": user, "completion": answer}
    if system is not None:
        row["system"] = system
    return row


def convert_file(in_path: str | Path, out_path: str | Path, *, fmt: str = "auto", to: str | None = None,
                 data_cfg: DataConfig | None = None) -> int:
    """Read one file in any supported shape and write it in one normalised shape.

    Args:
        in_path: input file (any type `read_records` reads).
        out_path: ``.jsonl`` (default messages: ``{"messages": [...]}`` per line), ``.json``
            (default alpaca array) or ``.xlsx`` (default Prompt/Completion columns, pandas index).
        fmt: the input shape, or "auto" to detect it.
        to: the output shape: "messages" (.jsonl only), "alpaca" (instruction/input/output[/history])
            or "prompt_completion" (single-turn); None picks the default for the suffix.
        data_cfg: cleaning, dedupe and text-splitting options (default `DataConfig()`).

    Returns:
        The number of conversations written.

    Raises:
        DataError: bad input, an unsupported output suffix or a conversation the target cannot hold;
            nothing is written then.
    """
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise DataError(f"cannot write {suffix or 'a file without suffix'!r}; expected one of "
                        f"{', '.join(OUT_SUFFIXES)}", file=str(out))
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown input format {fmt!r}; expected auto or one of {', '.join(FORMATS)}", field="format")
    target = to or _DEFAULT_TARGET[suffix]
    if target not in TARGETS:
        raise DataError(f"unknown output shape {target!r}; expected one of {', '.join(TARGETS)}", field="to")
    if target == "messages" and suffix != ".jsonl":
        raise DataError("the messages shape is written as .jsonl; use an output path ending in .jsonl",
                        file=str(out))
    if Path(in_path).resolve() == out.resolve():
        raise DataError("the output would overwrite the input; choose another output path", file=str(out))
    cfg = data_cfg or DataConfig()
    convs, _ = load_conversations([DataSource(path=str(in_path), format=fmt)], cfg)
    rows = [_row(c, target, suffix == ".xlsx") for c in convs]
    headers = None
    if suffix == ".xlsx" and target == "prompt_completion":
        headers = {"prompt": "Prompt", "completion": "Completion", "system": "System"}
    return write_records(rows, out, columns=headers)

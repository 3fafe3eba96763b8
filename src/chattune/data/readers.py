"""Files → records: JSON, JSONL, CSV/TSV, xlsx, parquet and `datasets.save_to_disk` folders (Hub datasets and
Hub-style folders: `chattune.data.hub`).

Every record comes with the number a user needs to find it: the 1-based line where it starts for
JSON/JSONL (also inside a JSON array), the 1-based data row for tables. Text files are UTF-8 with or
without BOM (CRLF fine); anything else must be named with ``encoding:`` in the data source.
"""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

from ..config import DataSource
from ..errors import DataError
from .hub import is_hub_folder, read_hub_records

TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv")
SUFFIXES = (*TEXT_SUFFIXES, ".xlsx", ".parquet")
# Keys that mean "this object is one conversation", not a wrapper around a list of records.
_RECORD_LIST_KEYS = ("messages", "conversations", "history")
# pandas writes its index as a column with an empty header, read back as "Unnamed: 0".
_UNNAMED = re.compile(r"^Unnamed: \d+$")
_WS = " \t\r\n"


def _as_source(source: DataSource | str | Path) -> DataSource:
    return source if isinstance(source, DataSource) else DataSource(path=str(source))


def read_records(source: DataSource | str | Path) -> list[tuple[int, dict]]:
    """Read every record of one data file.

    Args:
        source: the data source (a bare path is accepted too). Uses ``path``, ``encoding``,
            ``sheet`` (xlsx) and ``split`` (DatasetDict folders).

    Returns:
        ``[(number, record), ...]`` where number is the 1-based line where the record starts
        (.json/.jsonl) or the 1-based data row (.csv/.tsv/.xlsx/.parquet/save_to_disk folders).
        Empty cells are None.

    Raises:
        DataError: missing or empty file, unknown type, bad encoding, malformed JSON (with the line).
    """
    src = _as_source(source)
    if src.hub is not None:
        return read_hub_records(src)
    path = Path(src.label)
    if not path.exists():
        raise DataError(f"data file not found (working directory: {Path.cwd()})", file=str(path))
    if is_hub_folder(path):
        records = read_hub_records(src)
    elif path.is_dir():
        records = _read_saved_dataset(path, src.split)
    else:
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            text = _decode(path, src.encoding)
            if suffix == ".jsonl":
                records = _parse_jsonl(text, path)
            elif suffix == ".json":
                records = _parse_json(text, path)
            else:
                records = _read_delimited(text, path, "\t" if suffix == ".tsv" else ",")
        elif suffix == ".xlsx":
            records = _read_xlsx(path, src.sheet)
        elif suffix == ".parquet":
            records = _read_parquet(path)
        else:
            raise DataError(f"unsupported file type {suffix or '(none)'!r}; expected one of "
                            f"{', '.join(SUFFIXES)} or a folder written by datasets.save_to_disk",
                            file=str(path))
    if not records:
        raise DataError("the file holds no records (it is empty); expected at least one row", file=str(path))
    return records


# ---------------------------------------------------------------- text decoding


def _decode(path: Path, encoding: str | None) -> str:
    raw = path.read_bytes()
    enc = (encoding or "utf-8").lower().replace("_", "-")
    if enc in ("utf-8", "utf8"):
        enc = "utf-8-sig"  # accept a BOM
    try:
        text = raw.decode(enc)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}; expected a Python codec name such as utf-8 or gbk",
                        file=str(path), field="encoding") from None
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise DataError("the file is UTF-16 (it starts with a UTF-16 byte-order mark): add `encoding: utf-16` "
                            "to this data source, or re-save the file as UTF-8", file=str(path)) from None
        hint = ("it looks like GBK/GB18030 (common for files saved by Excel or Notepad in Chinese Windows): "
                "add `encoding: gbk` to this data source, or re-save the file as UTF-8"
                if _decodes(raw, "gb18030") else
                "set the file's encoding in the data source (e.g. `encoding: gbk` or `encoding: latin-1`), "
                "or re-save the file as UTF-8")
        raise DataError(f"not valid {encoding or 'UTF-8'} (byte 0x{raw[e.start]:02x} at offset {e.start}); {hint}",
                        file=str(path), row=line) from None
    return text.lstrip("\ufeff")


def _decodes(raw: bytes, enc: str) -> bool:
    try:
        raw.decode(enc)
        return True
    except UnicodeDecodeError:
        return False


# ---------------------------------------------------------------- JSON / JSONL

_decoder = json.JSONDecoder()


def _bad_json(e: json.JSONDecodeError, path: Path) -> DataError:
    return DataError(f"not valid JSON: {e.msg} (column {e.colno})", file=str(path), row=e.lineno)


def _need_object(obj: Any, path: Path, line: int, where: str) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"found a JSON {type(obj).__name__} {where}; expected an object "
                        "like {\"instruction\": ..., \"output\": ...}", file=str(path), row=line)
    return obj


def _parse_jsonl(text: str, path: Path) -> list[tuple[int, dict]]:
    out = []
    # Split on "\n" only: str.splitlines would also split on U+2028 etc., which JSON allows raw in strings.
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.strip(_WS)
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e.msg} (column {e.colno}); each line of a .jsonl file must be "
                            "one complete JSON object", file=str(path), row=i) from None
        out.append((i, _need_object(obj, path, i, "on this line")))
    return out


class _Lines:
    """Line number of a character offset, counted incrementally (offsets only grow)."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _expect(text: str, i: int, chars: str, what: str, path: Path) -> int:
    if i >= len(text) or text[i] not in chars:
        found = repr(text[i]) if i < len(text) else "the end of the file"
        raise DataError(f"not valid JSON: expected {what}, found {found}", file=str(path),
                        row=text.count("\n", 0, i) + 1)
    return i


def _decode_at(text: str, i: int, path: Path) -> tuple[Any, int]:
    try:
        return _decoder.raw_decode(text, i)
    except json.JSONDecodeError as e:
        raise _bad_json(e, path) from None


def _array_items(text: str, i: int, lines: _Lines, path: Path) -> tuple[list[tuple[int, Any]], int]:
    """Parse the JSON array starting at text[i] == '[' keeping each item's start line."""
    items: list[tuple[int, Any]] = []
    i = _skip_ws(text, i + 1)
    if i < len(text) and text[i] == "]":
        return items, i + 1
    while True:
        start = _skip_ws(text, i)
        obj, i = _decode_at(text, start, path)
        items.append((lines.at(start), obj))
        i = _expect(text, _skip_ws(text, i), ",]", "',' or ']' after an array item", path)
        if text[i] == "]":
            return items, i + 1
        i += 1


def _parse_json(text: str, path: Path) -> list[tuple[int, dict]]:
    lines = _Lines(text)
    i = _skip_ws(text, 0)
    if i >= len(text):
        return []
    first = text[i]
    if first == "[":
        items, end = _array_items(text, i, lines, path)
        records = items
    elif first == "{":
        _, end = _decode_at(text, i, path)
        if _skip_ws(text, end) < len(text):
            # Something follows the first object: a JSONL file saved as .json.
            return _parse_jsonl(text, path)
        records, end = _object_records(text, i, lines, path)
    else:
        obj, end = _decode_at(text, i, path)
        raise DataError(f"found a JSON {type(obj).__name__} at the top level; expected an array of records "
                        "or an object holding one list of records (e.g. {\"data\": [...]})", file=str(path), row=1)
    rest = _skip_ws(text, end)
    if rest < len(text):
        raise DataError(f"not valid JSON: extra data after the top-level array, found {text[rest]!r}",
                        file=str(path), row=text.count("\n", 0, rest) + 1)
    return [(line, _need_object(obj, path, line, "as an array item")) for line, obj in records]


def _object_records(text: str, i: int, lines: _Lines, path: Path) -> tuple[list[tuple[int, Any]], int]:
    """A top-level object: either a wrapper holding one list of records, or a single record."""
    lists: dict[str, list[tuple[int, Any]]] = {}
    keys: list[str] = []
    j = _skip_ws(text, i + 1)
    if j < len(text) and text[j] == "}":
        return [], j + 1
    while True:
        j = _expect(text, _skip_ws(text, j), '"', "a quoted key", path)
        key, j = _decode_at(text, j, path)
        j = _expect(text, _skip_ws(text, j), ":", "':' after a key", path) + 1
        j = _skip_ws(text, j)
        if j < len(text) and text[j] == "[":
            lists[key], j = _array_items(text, j, lines, path)
        else:
            _, j = _decode_at(text, j, path)
        keys.append(key)
        j = _expect(text, _skip_ws(text, j), ",}", "',' or '}' after a value", path)
        if text[j] == "}":
            end = j + 1
            break
        j += 1
    record_lists = {k: v for k, v in lists.items() if v and all(isinstance(o, dict) for _, o in v)}
    if any(k.lower() in _RECORD_LIST_KEYS for k in keys) or not lists:
        # One conversation (e.g. {"messages": [...]}) or one flat record.
        return [(1, json.loads(text[i:end]))], end
    if not record_lists:
        if all(not v for v in lists.values()):
            return [], end  # {"data": []}: an empty file in a wrapper
        return [(1, json.loads(text[i:end]))], end  # one flat record that happens to hold a list
    if len(record_lists) > 1:
        raise DataError(f"the top-level object holds several lists of records ({', '.join(record_lists)}); "
                        "expected exactly one (e.g. {\"data\": [...]})", file=str(path), row=1)
    return next(iter(record_lists.values())), end


# ---------------------------------------------------------------- tables


def _clean_cell(v: Any) -> Any:
    # NaN is how pandas spells an empty cell.
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _frame_records(df, path: Path) -> list[tuple[int, dict]]:
    cols = [c for c in df.columns if not (isinstance(c, str) and _UNNAMED.match(c)) and c != "__index_level_0__"]
    df = df[cols]
    names = [str(c) for c in cols]
    return [(n, {k: _clean_cell(v) for k, v in zip(names, row, strict=True)})
            for n, row in enumerate(df.itertuples(index=False, name=None), start=1)]


def _read_delimited(text: str, path: Path, sep: str) -> list[tuple[int, dict]]:
    import pandas as pd

    if not text.strip():
        return []
    # A CRLF file puts CRLF inside multi-line quoted cells too: that is the file's line ending, not data.
    text = text.replace("\r\n", "\n")
    try:
        # dtype=str and no NA guessing: "NA" or "null" in a cell is text a user meant, not a missing value.
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        raise DataError(f"cannot parse as {'TSV' if sep == chr(9) else 'CSV'}: {e}", file=str(path),
                        row=int(m.group(1)) if m else None) from None
    return [(n, {k: (v if v != "" else None) for k, v in rec.items()}) for n, rec in _frame_records(df, path)]


def _read_xlsx(path: Path, sheet: str | int | None) -> list[tuple[int, dict]]:
    import pandas as pd

    try:
        book = pd.ExcelFile(path, engine="openpyxl")
    except Exception as e:  # noqa: BLE001 — openpyxl raises many types for a broken or non-xlsx file
        raise DataError(f"cannot open as .xlsx: {e}", file=str(path)) from None
    with book:
        names = book.sheet_names
        if sheet is None:
            sheet = 0
        if isinstance(sheet, int) and not 0 <= sheet < len(names) or isinstance(sheet, str) and sheet not in names:
            raise DataError(f"no sheet {sheet!r}; the workbook has sheets {names}", file=str(path), field="sheet")
        # dtype=object keeps each cell's own type: an int column with an empty cell stays int, not 3.0.
        df = book.parse(sheet_name=sheet, dtype=object)
    return _frame_records(df, path)


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 — pyarrow raises ArrowInvalid/OSError for a broken file
        raise DataError(f"cannot read as parquet: {e}", file=str(path)) from None
    # to_pylist keeps nested lists/dicts (messages) as Python objects; pandas would give numpy arrays.
    drop = [c for c in table.column_names if c == "__index_level_0__" or _UNNAMED.match(c)]
    if drop:
        table = table.drop_columns(drop)
    return [(n, {k: _clean_cell(v) for k, v in rec.items()}) for n, rec in enumerate(table.to_pylist(), start=1)]


def _read_saved_dataset(path: Path, split: str | None) -> list[tuple[int, dict]]:
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise DataError("a folder is read only when datasets.save_to_disk wrote it (dataset_info.json or "
                        "dataset_dict.json); expected a data file or such a folder", file=str(path))
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 — datasets raises FileNotFoundError/ValueError for broken folders
        raise DataError(f"cannot load with datasets.load_from_disk: {e}", file=str(path)) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        if split is None:
            if len(splits) != 1 and "train" not in splits:
                raise DataError(f"the folder holds splits {splits}; set `split:` in the data source",
                                file=str(path), field="split")
            split = "train" if "train" in splits else splits[0]
        if split not in ds:
            raise DataError(f"no split {split!r}; the folder holds {splits}", file=str(path), field="split")
        ds = ds[split]
    elif split is not None:
        raise DataError(f"split {split!r} given, but the folder holds a single Dataset (no splits); remove "
                        "`split:`", file=str(path), field="split")
    return [(n, {k: _clean_cell(v) for k, v in rec.items()}) for n, rec in enumerate(ds.to_list(), start=1)]

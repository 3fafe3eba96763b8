"""One input record as the format converters see it (private to `chattune.data.formats`): field names
normalised through the `columns:` mapping, and errors that name file, row and the file's own column."""
from __future__ import annotations

import datetime as _dt
import json
import math
from typing import Any

from ..errors import DataError

MESSAGE_KEYS = {"role", "content", "from", "value"}


class Skip(Exception):
    """A row that yields no conversation; `reason` is counted in the report."""

    def __init__(self, reason: str):
        self.reason = reason


class Row:
    """One record with normalised field names and the context its errors need."""

    def __init__(self, rec: dict, num: int, path: str, unit: str, columns: dict[str, str], answers: bool = True):
        self.num, self.path, self.unit, self.columns, self.answers = num, path, unit, columns, answers
        self.fields: dict[str, Any] = {}
        self.origin: dict[str, str] = {}  # our name -> the file's column name, for error messages
        mapped = {theirs.strip().lower(): ours for ours, theirs in columns.items() if ours not in MESSAGE_KEYS}
        replaced = set(mapped.values())
        for key, value in rec.items():
            low = str(key).strip().lower()
            if low in mapped:
                ours = mapped[low]
            elif low in replaced:
                continue  # the file's own column of that name is replaced by the `columns:` mapping
            else:
                ours = low
            if ours in self.fields and str(key) != ours:
                continue  # a second spelling ("Text" and "text"): keep the lower-case one
            self.fields[ours], self.origin[ours] = value, str(key)

    def error(self, msg: str, field: str | None = None) -> DataError:
        named = self.origin.get(field, field) if field is not None else None
        return DataError(msg, file=self.path, row=self.num, field=named, unit=self.unit)

    def keys(self) -> list[str]:
        return [self.origin[k] for k in self.fields]

    def text(self, name: str, value: Any = None, *, use_value: bool = False, where: str | None = None) -> str:
        """The field as text: numbers become str, empty/NaN become "", a list/dict is an error."""
        v = value if use_value else self.fields.get(name)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, (_dt.datetime, _dt.date)):
            return v.isoformat()
        preview = json.dumps(v, ensure_ascii=False, default=str)[:80]
        raise self.error(f"found {type(v).__name__} {preview}{' in ' + where if where else ''}; expected text "
                         "(a string or a number)", name)

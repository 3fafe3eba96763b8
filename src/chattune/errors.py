"""The errors chattune raises on bad input. The CLI prints them and exits with `exit_code`."""
from __future__ import annotations


class ChattuneError(Exception):
    """A user-facing error: the message says what was wrong and how to fix it."""

    exit_code = 2


class ConfigError(ChattuneError):
    """A bad config key or value; the message names the key, the value and what is allowed.

    `problems` holds the same message split per key, ``(dotted key, line)``, for front ends that show
    each line next to its field (the browser UI); the CLI prints the whole message.
    """

    def __init__(self, message: str, *, problems: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.problems = problems


class DataError(ChattuneError):
    """Bad input data. Names the file, the line/row and the field, what was found and what was expected."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None, unit: str = "line"):
        self.file, self.row, self.field = file, row, field
        where = []
        if file:
            where.append(str(file))
        if row is not None:
            where.append(f"{unit} {row}")
        if field:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class TemplateError(ChattuneError):
    """The chat template is missing or cannot be used as asked."""


class ModelError(ChattuneError):
    """A model or run directory cannot be loaded."""

"""The one draw loop of the synthetic generators: rows whose user sentences are all different."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def draw_unique(total: int, draw: Callable[[], tuple[str, T]], *, hint: str = "") -> list[T]:
    """Call `draw` until `total` rows with distinct keys are found, in draw order (a repeated key is skipped).

    Args:
        total: rows wanted.
        draw: returns ``(key, row)``; the key is the user sentence, unique across train and test.
        hint: said after the error (what to lower).

    Returns:
        The rows.

    Raises:
        ValueError: 20 × `total` + 1000 draws did not find them (the key space is too small for `total`).
    """
    seen: set[str] = set()
    rows: list[T] = []
    attempts = 0
    while len(rows) < total:
        attempts += 1
        if attempts > 20 * total + 1000:  # a guard against a loop, not a limit real sizes reach
            raise ValueError(f"could not draw {total} unique sentences" + (f"; {hint}" if hint else ""))
        key, row = draw()
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows

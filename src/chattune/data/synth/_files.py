"""The output checks every synthetic-data writer makes before writing anything."""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError


def check_outputs(out: str | Path, test_out: str | Path | None, n_test: int, suffixes: tuple[str, ...],
                  why: str = "") -> None:
    """Refuse a bad train/test file pair before anything is generated or written (`why`: said after a bad suffix).

    Raises:
        DataError: a suffix not in `suffixes`, `n_test` > 0 without `test_out` (or the reverse), or the same path
            twice.
    """
    paths = [Path(out)] + ([Path(test_out)] if test_out is not None else [])
    for p in paths:
        if p.suffix.lower() not in suffixes:
            raise DataError(f"cannot write {p.suffix or 'a file without suffix'!r}; expected one of "
                            f"{', '.join(suffixes)}" + (f" ({why})" if why else ""), file=str(p))
    if n_test > 0 and test_out is None:
        raise DataError(f"--split {n_test} needs --test-out PATH for the held-out rows", field="test_out")
    if test_out is not None and n_test <= 0:
        raise DataError("--test-out given without --split N (the number of test rows)", field="split")
    if len(paths) == 2 and paths[0].resolve() == paths[1].resolve():
        raise DataError("--out and --test-out are the same file", file=str(out))

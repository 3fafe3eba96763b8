"""Progress as plain lines, for output that is not a terminal (a log file, CI, nohup).

A rich live bar draws nothing when its console is not a terminal, so a long `train` or `eval` with
redirected output printed nothing for minutes. `ProgressLines` prints one line at start, then at most
one every `interval_s` seconds, and one at the end: done/total, rate, elapsed and ETA.
"""
from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 30.0


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressLines:
    """Rate-limited progress lines.

    Args:
        label: what is counted, e.g. "train step" or "generating".
        emit: prints one line (e.g. ``console.print`` or ``print``).
        interval_s: least seconds between two lines (default `DEFAULT_INTERVAL_S`, read at construction).
        clock: time source (tests pass a fake one).
    """

    def __init__(self, label: str, emit: Callable[[str], None], interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.emit = emit
        self.interval_s = DEFAULT_INTERVAL_S if interval_s is None else interval_s
        self.clock = clock
        self._last: float | None = None  # when it last printed
        self._last_done: int | None = None  # `done` it last printed
        self._t0 = clock()  # counting starts now; `start` restarts it
        self._done0 = 0

    def start(self, done: int = 0) -> None:
        """Mark the start (`done` > 0 when resuming: the rate counts this session's work only)."""
        self._t0 = self.clock()
        self._last = None
        self._done0 = done

    def update(self, done: int, total: int | None, extra: str = "", *, final: bool = False) -> bool:
        """Print a line if the interval has passed (or it is the first, or `final` and `done` was not
        printed yet); returns whether it printed."""
        now = self.clock()
        if final and done == self._last_done:
            return False  # already said
        if not final and self._last is not None and now - self._last < self.interval_s:
            return False
        self._last, self._last_done = now, done
        elapsed = now - self._t0
        rate = (done - self._done0) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label} {done}/{total}" + (f" ({100 * done / total:.0f}%)" if total else "")]
        if extra:
            parts.append(extra)
        parts.append(f"elapsed {_clock(elapsed)}")
        if total and rate > 0 and done < total:
            parts.append(f"ETA {_clock((total - done) / rate)}")
        self.emit(", ".join(parts))
        return True

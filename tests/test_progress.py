"""Plain progress lines for output that is not a terminal: a steady interval, rate and ETA."""
from __future__ import annotations

from chattune.progress import ProgressLines


def test_progress_lines_come_at_a_steady_interval_with_rate_and_eta():
    now = [100.0]
    out: list[str] = []
    p = ProgressLines("train step", out.append, interval_s=30, clock=lambda: now[0])
    p.start(done=10)  # resumed at step 10: the rate counts this session's steps only
    printed = []
    for step in range(11, 111):
        now[0] += 1.0  # one step per second
        printed.append(p.update(step, 110, "loss 1.0"))
    assert printed.count(True) == 4  # first update, then every 30 s: steps 11, 41, 71, 101
    assert out[1] == "train step 41/110 (37%), loss 1.0, elapsed 0:31, ETA 1:09"
    assert p.update(110, 110, final=True) and out[-1] == "train step 110/110 (100%), elapsed 1:40"
    assert not p.update(110, 110, final=True)  # the end is said once

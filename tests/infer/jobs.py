"""Drive an engine the way the HTTP layer does: submit `Job`s from an event loop and collect what they get."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from chattune.infer.engine import Job, Sampling, Started
from chattune.infer.generate import Completion


def greedy(max_new_tokens: int = 16, stop: tuple[str, ...] = ()) -> Sampling:
    return Sampling(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=None, stop=stop)


@dataclass(eq=False)
class LeavingJob(Job):
    """A job whose client leaves as its `leave_after`-th delta is handed over. The cancel is set in the
    engine's own thread, at that delivery, so the engine meets it at its next check however fast the rest of
    the answer comes (a client reading deltas in its own loop could be slower than a tiny model's whole
    answer: then there is nothing left to cancel)."""

    leave_after: int = 1
    delivered: int = 0

    def deliver(self, item) -> None:
        super().deliver(item)
        if isinstance(item, str):
            self.delivered += 1
            if self.delivered >= self.leave_after:
                self.cancel.set()


async def collect(engine, model: str, messages: list[dict], *, stream: bool, sampling: Sampling,
                  cancel_after: int | None = None) -> list:
    """Every item the job receives, up to its Completion/APIError (or, its client leaving as the
    `cancel_after`-th delta is handed over (`LeavingJob`), until nothing more arrives for a second)."""
    loop = asyncio.get_running_loop()
    common = dict(model=model, messages=messages, sampling=sampling, stream=stream, loop=loop, out=asyncio.Queue())
    job = Job(**common) if cancel_after is None else LeavingJob(**common, leave_after=cancel_after)
    engine.submit(job)
    items: list = []
    while True:
        try:
            item = await asyncio.wait_for(job.out.get(), timeout=1.0 if job.cancel.is_set() else 300)
        except asyncio.TimeoutError:
            return items
        items.append(item)
        if not isinstance(item, (str, Started)):
            return items


def answer(items: list) -> tuple[str, Completion]:
    """(the concatenated deltas, the final Completion) of one job's items."""
    final = items[-1]
    assert isinstance(final, Completion), items
    return "".join(i for i in items if isinstance(i, str)), final


def run(coro):
    return asyncio.run(coro)

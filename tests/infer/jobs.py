"""Drive an engine the way the HTTP layer does: submit `Job`s from an event loop and collect what they get."""
from __future__ import annotations

import asyncio

from chattune.infer.engine import Job, Sampling, Started
from chattune.infer.generate import Completion


def greedy(max_new_tokens: int = 16, stop: tuple[str, ...] = ()) -> Sampling:
    return Sampling(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=None, stop=stop)


async def collect(engine, model: str, messages: list[dict], *, stream: bool, sampling: Sampling,
                  cancel_after: int | None = None) -> list:
    """Every item the job receives, up to its Completion/APIError (or, cancelled after `cancel_after`
    deltas, until nothing more arrives for a second)."""
    loop = asyncio.get_running_loop()
    job = Job(model=model, messages=messages, sampling=sampling, stream=stream, loop=loop, out=asyncio.Queue())
    engine.submit(job)
    items: list = []
    while True:
        try:
            item = await asyncio.wait_for(job.out.get(), timeout=1.0 if job.cancel.is_set() else 300)
        except asyncio.TimeoutError:
            return items
        items.append(item)
        if cancel_after is not None and sum(isinstance(i, str) for i in items) >= cancel_after:
            job.cancel.set()
        if not isinstance(item, (str, Started)):
            return items


def answer(items: list) -> tuple[str, Completion]:
    """(the concatenated deltas, the final Completion) of one job's items."""
    final = items[-1]
    assert isinstance(final, Completion), items
    return "".join(i for i in items if isinstance(i, str)), final


def run(coro):
    return asyncio.run(coro)

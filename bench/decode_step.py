"""Decode-step time of the hf engine's continuous batch (`chattune serve --engine hf`), N rows at once.

    .venv/bin/python bench/decode_step.py runs/demo/run                      # 64 greedy rows, 2 rounds
    .venv/bin/python bench/decode_step.py runs/demo/run --rows 1 16 64 --penalty 1.05
    .venv/bin/python bench/decode_step.py --smoke                            # tiny random model, seconds

Rows are admitted into one `hf_lane.Lane` (the engine's own batch, no HTTP) and prefilled; then every
decode step with all N rows still running is timed (wall and this process's CPU time). Variants, one table
row each per round, interleaved: ``greedy`` (the run's generation_config as it is: greedy rows that need
no logits processor take the batch's argmax) and, with --penalty, ``greedy+rp`` (the same rows with
repetition_penalty set, so every row runs its own logits processors: `sampling.RowSampler`). Also the time
to admit one request (render + its sampler). Times on a shared CPU are noisy: compare rows of one
invocation, read the CPU column, and mind the load average printed before and after.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import _smoke
import torch

from chattune.infer.engine import Job, Sampling
from chattune.infer.generate import Generator
from chattune.infer.hf_lane import Lane, Run


def measure(gen: Generator, rows: int, steps: int) -> tuple[float, float, float, int]:
    """(median wall ms, median CPU ms per decode step with all `rows` running, ms to admit one request,
    steps timed)."""
    loop = asyncio.new_event_loop()
    lane, run = Lane(gen.model, gen.pad_token_id, multi_adapter=False, prefill_tokens=1 << 20), Run(gen)
    convs = [[{"role": "user", "content": f"你们{i % 12 + 1}月{i % 28 + 1}号去杭州市玩吗？"}] for i in range(rows)]
    t0 = time.perf_counter()
    for conv in convs:
        s = Sampling(max_new_tokens=steps + 64, temperature=0.0, top_p=1.0, seed=None, stop=())
        lane.admit(Job(gen.name, conv, s, False, loop, asyncio.Queue()), run)
    admit = (time.perf_counter() - t0) / rows * 1e3
    while len(lane.rows) < rows and len(lane):
        lane.turn()
    wall, cpu = [], []
    for _ in range(steps):
        if len(lane.rows) < rows:  # a row ended: the batch is no longer N rows
            break
        w, c = time.perf_counter(), time.process_time()
        lane.turn()
        wall.append((time.perf_counter() - w) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    loop.close()
    if not wall:
        return float("nan"), float("nan"), admit, 0
    return statistics.median(wall), statistics.median(cpu), admit, len(wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="smollm2-135m-instruct", help="run dir, model folder or alias")
    ap.add_argument("--rows", type=int, nargs="+", default=[64], help="batch sizes, one table row each")
    ap.add_argument("--steps", type=int, default=10, help="decode steps timed per row count")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--penalty", type=float, default=None, help="also time the rows with this repetition_penalty")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--smoke", action="store_true", help="tiny random model, 4 rows, 3 steps, 1 round")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.rows, args.steps, args.rounds, args.penalty = str(_smoke.tiny_model_dir()), [4], 3, 1, 1.3
    torch.set_num_threads(args.threads)
    gen = Generator.from_path(args.model)
    config = gen.model.generation_config
    plain = config.repetition_penalty
    variants = [("greedy", plain)] + ([("greedy+rp", args.penalty)] if args.penalty else [])
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{'variant':<10} | {'rows':>4} | {'round':>5} | {'step wall ms':>12} | {'step CPU ms':>11} | "
          f"{'admit ms':>8} | steps")
    for rnd in range(1, args.rounds + 1):
        for rows in args.rows:
            for name, penalty in variants:
                config.repetition_penalty = penalty  # what the run's generation_config.json would say
                wall, cpu, admit, n = measure(gen, rows, args.steps)
                print(f"{name:<10} | {rows:>4} | {rnd:>5} | {wall:>12.1f} | {cpu:>11.1f} | {admit:>8.2f} | {n}")
    config.repetition_penalty = plain
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()

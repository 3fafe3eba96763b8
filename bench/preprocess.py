"""Preprocessing speed and fidelity: chattune's build path vs the tutorial approach, on city-date data.

    .venv/bin/python bench/preprocess.py [--n 20000] [--repeats 1]
    .venv/bin/python bench/preprocess.py --smoke          # 200 rows: checks that it runs, in seconds

chattune: JSONL file → `build_datasets` (read, convert, render with the tokenizer's own chat template,
loss mask by spans, cache). Cold = empty cache; cached = the same call again.
Tutorial (github.com/owenliang/qwen-sft style): hand-built ChatML prompt text, one ``tokenizer(...)``
call per example with ``padding="max_length"`` to 512, a Python search for the assistant header, pad
positions masked by token id, in ``datasets.map`` one example at a time.

Columns: examples/s and real (non-pad) tokens/s, the tokens stored per example (padding included),
and fidelity = share of sampled examples whose tokens before the answer equal what inference feeds
the model (``apply_chat_template(..., add_generation_prompt=True)``) and whose trained span ends at the
end-of-turn token. Numbers vary with machine load: compare columns from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers import AutoTokenizer

from chattune.config import config_from_dict
from chattune.data.dataset import build_datasets
from chattune.data.render import IGNORE, end_of_turn_ids, prompt_ids, render_batch

ASSETS = Path(os.environ.get("CHATTUNE_ASSETS", Path.home() / ".cache" / "chattune" / "assets"))


def rows_for(n: int) -> list[dict]:
    """`n` synthetic city+date rows (prompt, completion), seeded."""
    from chattune.data.synth.city_date import generate_city_date

    return generate_city_date(n, seed=0)[0]


def tutorial_map(tok, rows: list[dict]):
    """The tutorial pipeline, as written in the popular Qwen SFT notebooks (hand-built ChatML)."""
    import datasets

    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    pad = tok.pad_token_id

    def process(example):
        text = (f"<|im_start|>user\n{example['prompt']}<|im_end|>\n"
                f"<|im_start|>assistant\n{example['completion']}<|im_end|>\n")
        enc = tok(text, padding="max_length", max_length=512, truncation=True)
        ids = enc["input_ids"]
        start = 0
        for i in range(len(ids) - len(header) + 1):  # Python search for the assistant header
            if ids[i:i + len(header)] == header:
                start = i + len(header)
                break
        labels = [-100] * start + ids[start:]
        labels = [x if x != pad else -100 for x in labels]  # masking by id: the DeepSeek trap
        return {"input_ids": ids, "attention_mask": enc["attention_mask"], "labels": labels}

    ds = datasets.Dataset.from_list(rows)
    return ds.map(process, remove_columns=ds.column_names)


def fidelity_tutorial(tok, ds, rows, idx) -> float:
    eot = end_of_turn_ids(tok)[0]
    ok = 0
    for i in idx:
        ids, labels = ds[i]["input_ids"], ds[i]["labels"]
        prompt = prompt_ids(tok, [{"role": "user", "content": rows[i]["prompt"]}])
        trained = [j for j, x in enumerate(labels) if x != IGNORE]
        ok += ids[:len(prompt)] == prompt and bool(trained) and trained[0] == len(prompt) and ids[trained[-1]] == eot
    return ok / len(idx)


def fidelity_chattune(tok, ds, rows, idx) -> float:
    from chattune.data.check import verify_sequences
    from chattune.data.render import Rendered

    ok = 0
    for i in idx:
        msgs = [{"role": "user", "content": rows[i]["prompt"]}, {"role": "assistant", "content": rows[i]["completion"]}]
        r = Rendered(ds[i]["input_ids"], ds[i]["labels"], False, 2, (1,))
        ok += not verify_sequences(msgs, [r], tok)
    return ok / len(idx)


def timed(fn, repeats: int):
    """Median wall seconds, median CPU seconds of this process (excludes worker processes), result."""
    times, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return (statistics.median(times), statistics.median(cpus)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sample", type=int, default=300, help="examples checked for fidelity")
    ap.add_argument("--smoke", action="store_true", help="200 rows, 50 checked (checks that the bench runs)")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.sample = 200, 50

    tok = AutoTokenizer.from_pretrained(ASSETS / "tokenizers" / "qwen3")
    rows = rows_for(args.n)
    work = Path(tempfile.mkdtemp(prefix="chattune-bench-"))
    data = work / "city_date.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"]},
                                       ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    convs = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]
             for r in rows]
    idx = random.Random(0).sample(range(args.n), min(args.sample, args.n))
    table = []

    def build(num_proc: int, cold: bool):
        def run():
            cache = work / f"cache-np{num_proc}"
            if cold:
                shutil.rmtree(cache, ignore_errors=True)
            cfg = config_from_dict({"data": {"train": str(data), "cache_dir": str(cache),
                                             "num_proc": num_proc, "max_length": 512}})
            return build_datasets(cfg, tok)
        return run

    for num_proc in (1, 2):
        cold, (ds, _, rep) = timed(build(num_proc, cold=True), args.repeats)
        tokens = rep["train"]["tokens"]
        fid = fidelity_chattune(tok, ds, rows, idx)
        if fid < 1.0:  # chattune's rendering is proven per turn: anything less is a bug, not a slow run
            raise SystemExit(f"chattune fidelity {fid:.1%} < 100% (num_proc={num_proc})")
        table.append((f"chattune build_datasets, cold, num_proc={num_proc}", cold, len(ds), tokens, tokens / len(ds),
                      fid, num_proc == 1))
        warm, (ds, _, rep) = timed(build(num_proc, cold=False), args.repeats)
        assert rep["cache_hit"]
        table.append((f"chattune build_datasets, cached, num_proc={num_proc}", warm, len(ds), tokens,
                      tokens / len(ds), fid, True))

    def render_only(fast: bool):
        return [render_batch(convs[i:i + 512], tok, fast=fast) for i in range(0, len(convs), 512)]

    for fast in (True, False):
        t, _ = timed(lambda fast=fast: render_only(fast), args.repeats)
        table.append((f"chattune render_batch only ({'fast' if fast else 'reference'} path, 1 process)", t,
                      args.n, tokens, tokens / args.n, None, True))

    t, tds = timed(lambda: tutorial_map(tok, rows), args.repeats)
    real = sum(sum(m) for m in tds["attention_mask"])
    table.append(("tutorial: per-example tokenizer(), header search, pad to 512", t, len(tds), real, 512,
                  fidelity_tutorial(tok, tds, rows, idx), True))

    print(f"\n{args.n} city-date examples, real Qwen3 tokenizer, {os.cpu_count()} CPUs "
          f"(load avg {os.getloadavg()[0]:.1f}), median of {args.repeats}\n")
    head = (f"{'pipeline':<66} {'wall s':>7} {'examples/s':>11} {'tokens/s':>10} {'cpu s':>6} {'ex/cpu-s':>9} "
            f"{'stored tok/ex':>13} {'fidelity':>9}")
    print(head)
    print("-" * len(head))
    for name, (secs, cpu), n, toks, per, fid, cpu_ok in table:
        f = "-" if fid is None else f"{fid:.0%}"
        c = f"{cpu:>6.2f} {n / max(cpu, 1e-9):>9,.0f}" if cpu_ok else f"{'n/a':>6} {'n/a':>9}"
        print(f"{name:<66} {secs:>7.2f} {n / secs:>11,.0f} {toks / secs:>10,.0f} {c} {per:>13.1f} {f:>9}")


if __name__ == "__main__":
    main()

"""Training throughput on CPU, side by side: chattune's default recipe vs TRL's SFTTrainer (best CPU
settings) vs the common tutorial recipe, on the same 200 city+date examples and SmolLM2-135M-Instruct
(LoRA r16 all-linear everywhere).

Each recipe runs in its own subprocess (so peak RSS is its own, read from ru_maxrss) and reports real
(non-pad) tokens per second over the steps after a warm-up, counted by the Trainer from the attention
mask (``include_num_input_tokens_seen="non_padding"``), the same way for all three.

    .venv/bin/python bench/train_throughput.py                       # the three recipes, 2 interleaved rounds
    .venv/bin/python bench/train_throughput.py --recipes chattune chattune-packed --steps 30
    .venv/bin/python bench/train_throughput.py --recipes chattune chattune-qlora --threads 1   # LoRA vs QLoRA
    .venv/bin/python bench/train_throughput.py --profile             # where chattune's step time goes
    .venv/bin/python bench/train_throughput.py --smoke               # every recipe on a tiny model, seconds

chattune runs through `chattune.train.trainer.train` (the product route, config overrides only); TRL and
the tutorial recipe are the baselines it is measured against.

Numbers go in reports and docs, never in tests. The CPU is shared: compare ratios from one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _smoke

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "city_date_train.jsonl"
RECIPES = {
    "chattune": "chattune defaults: fp32, dynamic padding grouped by length, batch 8, no recompute, logits at "
                "trained tokens",
    "chattune-random": "chattune defaults + train.group_by_length=false",
    "chattune-packed": "chattune defaults + train.packing=true",
    "chattune-drop05": "chattune defaults + method.lora.dropout=0.05 (the LoRA config TRL and tutorial run here)",
    "chattune-qlora": "chattune defaults + method.type=qlora (NF4 + double quant base, fp32 compute)",
    "trl": "TRL SFTTrainer: fp32, no recompute, dynamic padding, batch 8, completion-only loss",
    "tutorial": "HF Trainer: pad to 512, recompute, bf16, adafactor, batch 2 x accum 8",
}
# Overrides that turn chattune's defaults into each chattune variant.
VARIANTS = {"chattune": {}, "chattune-random": {"train": {"group_by_length": False}},
            "chattune-packed": {"train": {"packing": True}}, "chattune-drop05": {"method": {"lora": {"dropout": 0.05}}},
            "chattune-qlora": {"method": {"type": "qlora"}}}
WARMUP_MARKS = 2  # micro-batches (or steps) not timed: first-call allocations and lazy init


def rows(n: int) -> list[dict]:
    lines = DATA.read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(x) for x in lines]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")


def timer_callback():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        """(wall time, process CPU time, real tokens seen) after every micro-batch, and logged losses."""

        def __init__(self):
            self.marks: list[tuple[float, float, int]] = []
            self.losses: list[float] = []

        def _mark(self, state):
            self.marks.append((time.perf_counter(), time.process_time(), state.num_input_tokens_seen))

        def on_substep_end(self, args, state, control, **kw):  # micro-batches inside an accumulation
            self._mark(state)

        def on_step_end(self, args, state, control, **kw):
            self._mark(state)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return Timer()


def model_source() -> str:
    """The model every recipe trains: SmolLM2-135M-Instruct (the default alias, its GGUF converted once to
    safetensors), or the tiny random model under --smoke."""
    if os.environ.get(_smoke.ENV):
        return os.environ[_smoke.ENV]
    from chattune.config import ModelConfig
    from chattune.model.load import resolve_source

    return resolve_source(ModelConfig())


# ------------------------------------------------------------------------------------------- recipes

def chattune_raw(steps: int, n: int, tmp: Path) -> dict:
    """chattune's defaults on `n` rows for `steps` optimizer steps (no trackers, no checkpoint)."""
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(n)), encoding="utf-8")
    return {"model": {"name_or_path": model_source()}, "data": {"train": str(data), "cache_dir": str(tmp / "cache")},
            "train": {"max_steps": steps, "report_to": ["none"], "logging_steps": 5, "save_steps": 10_000},
            "output_dir": str(tmp / "run")}


def run_chattune(steps: int, n: int, tmp: Path, variant: str = "chattune"):
    from chattune.config import config_from_dict, deep_merge
    from chattune.train.trainer import train

    cfg = config_from_dict(deep_merge(chattune_raw(steps, n, tmp), VARIANTS[variant]))
    timer = timer_callback()
    train(cfg, callbacks=[timer])
    return timer


def run_trl(steps: int, n: int, tmp: Path):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    src = model_source()
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                      "completion": [{"role": "assistant", "content": r["completion"]}]}
                                     for r in rows(n)])
    args = SFTConfig(output_dir=str(tmp / "trl"), per_device_train_batch_size=8, max_steps=steps,
                     learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03,
                     gradient_checkpointing=False, bf16=False, use_cpu=True, packing=False, padding_free=False,
                     completion_only_loss=True, max_length=1024, logging_steps=5, save_strategy="no",
                     report_to="none", include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
                     seed=42, disable_tqdm=True)
    timer = timer_callback()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=lora_config(), callbacks=[timer])
    trainer.train()
    return timer


def run_tutorial(steps: int, n: int, tmp: Path, max_len: int = 512, accum: int = 8):
    """The recipe most Chinese LoRA tutorials copy (self-llm style): each example tokenized alone and
    padded to 512, gradient checkpointing, a bf16 model, adafactor, batch 2 x accumulation 8."""
    import datasets
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    src = model_source()
    tok = AutoTokenizer.from_pretrained(src)

    def encode(r):
        prompt = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=True,
                                         add_generation_prompt=True, return_dict=False)
        answer = tok(r["completion"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids = (prompt + answer)[:max_len]
        labels = ([-100] * len(prompt) + answer)[:max_len]
        pad = max_len - len(ids)
        return {"input_ids": ids + [tok.pad_token_id] * pad, "attention_mask": [1] * len(ids) + [0] * pad,
                "labels": labels + [-100] * pad}

    ds = datasets.Dataset.from_list([encode(r) for r in rows(n)])
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    model.enable_input_require_grads()
    model = get_peft_model(model, lora_config())
    args = TrainingArguments(output_dir=str(tmp / "tut"), per_device_train_batch_size=2, gradient_accumulation_steps=accum,
                             max_steps=steps, learning_rate=1e-4, gradient_checkpointing=True, bf16=True,
                             optim="adafactor", use_cpu=True, logging_steps=1, save_strategy="no", report_to="none",
                             include_num_input_tokens_seen="non_padding", seed=42, disable_tqdm=True)
    timer = timer_callback()
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[timer],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True))
    trainer.train()
    return timer


def worker(name: str, steps: int, n: int, smoke: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if name in VARIANTS:
            timer = run_chattune(steps, n, tmp, name)
        elif name == "trl":
            timer = run_trl(steps, n, tmp)
        elif name == "tutorial":
            # smoke: the tiny model keeps Qwen3's 152k vocabulary, whose bf16 logits at 512 padded
            # positions dominate on CPU; shorter and fewer micro-batches run the same code
            timer = run_tutorial(steps, n, tmp, *((64, 3) if smoke else ()))
        else:
            raise SystemExit(f"unknown recipe {name}")
    (t0, c0, k0), (t1, c1, k1) = timer.marks[WARMUP_MARKS - 1], timer.marks[-1]
    return {"recipe": name, "batches_timed": len(timer.marks) - WARMUP_MARKS, "real_tokens": k1 - k0,
            "seconds": round(t1 - t0, 2), "real_tok_per_s": round((k1 - k0) / (t1 - t0), 1),
            "real_tok_per_cpu_s": round((k1 - k0) / (c1 - c0), 1),
            "loss_first": timer.losses[0] if timer.losses else None,
            "loss_last": timer.losses[-1] if timer.losses else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


# ------------------------------------------------------------------------------------------- profile

def profile(n_steps: int = 2) -> None:
    """Where chattune's training step goes (forward + backward + optimizer, batch 8), by op group:
    `chattune.train.trainer.train` itself under the torch profiler, one untimed step then `n_steps`."""
    import torch
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as tprofile
    from transformers import AutoConfig, TrainerCallback

    from chattune.config import config_from_dict
    from chattune.train.trainer import train

    torch.set_num_threads(1)  # CPU time of one thread: stable on a shared machine
    prof = tprofile(activities=[ProfilerActivity.CPU], record_shapes=True,
                    schedule=schedule(wait=0, warmup=1, active=n_steps, repeat=1))
    cpu_marks: list[float] = []

    class Step(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:  # the profiler's warm-up step is done: the timed steps start
                cpu_marks.append(time.process_time())

        def on_step_end(self, args, state, control, **kw):
            prof.step()

    timer = timer_callback()
    with tempfile.TemporaryDirectory() as d:
        cfg = config_from_dict(chattune_raw(n_steps + 1, 64, Path(d)))
        with prof:
            train(cfg, callbacks=[Step(), timer])
    wall = time.process_time() - cpu_marks[0] if cpu_marks else float("nan")
    vocab = AutoConfig.from_pretrained(model_source()).vocab_size
    r = cfg.method.lora.r
    groups: dict[str, float] = {}
    for ev in prof.key_averages(group_by_input_shape=True):
        name, shapes = ev.key, str(ev.input_shapes)
        if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
            if name in ("aten::matmul", "aten::linear"):
                continue  # wrappers: their mm/addmm children are counted
            g = (f"lm_head ({vocab} vocab) matmuls" if str(vocab) in shapes else
                 f"LoRA matmuls (rank {r})" if f", {r}]" in shapes or f"[{r}," in shapes else "frozen linear matmuls")
        elif "scaled_dot_product" in name or "attention" in name:
            g = "attention (sdpa)"
        elif any(k in name for k in ("log_softmax", "nll_loss", "cross_entropy")):
            g = f"cross-entropy ({vocab} vocab)"
        elif any(k in name for k in ("_foreach", "adam", "lerp", "addcdiv")):
            g = "optimizer"
        elif "dropout" in name or "bernoulli" in name:
            g = "LoRA dropout"
        else:
            continue
        groups[g] = groups.get(g, 0.0) + ev.self_cpu_time_total / 1e6
    tokens = timer.marks[-1][2] - timer.marks[0][2]  # real tokens of the timed steps
    print(f"\nprofile: {n_steps} steps of batch 8, {tokens} real tokens, {wall:.2f} CPU s on 1 thread "
          f"({tokens / wall:.0f} tok/CPU-s under the profiler)")
    print(f"{'group':34} {'self CPU s':>10} {'share':>14}")
    for g, s in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"{g:34} {s:10.2f} {100 * s / wall:13.1f}%")
    print(f"{'other (norms, rope, activations, python)':34} {wall - sum(groups.values()):10.2f} "
          f"{100 * (wall - sum(groups.values())) / wall:13.1f}%")


# ------------------------------------------------------------------------------------------- main

def main() -> None:
    """Run the recipes interleaved, round after round, each in its own process, and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="+", default=["chattune", "trl", "tutorial"], choices=list(RECIPES))
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per recipe (tutorial: --tutorial-steps)")
    ap.add_argument("--tutorial-steps", type=int, default=1,
                    help="each tutorial step is 8 micro-batches of 2 examples padded to 512 (timed per micro-batch)")
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each recipe reports its best")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (default: torch's choice). 1 makes tok/CPU-s a stable measure "
                    "on a shared machine (no OpenMP spin-waiting behind descheduled threads)")
    ap.add_argument("--profile", action="store_true", help="profile chattune's step instead")
    ap.add_argument("--smoke", action="store_true", help="every recipe for a few steps on a tiny random model "
                    "(checks that the bench runs; its numbers mean nothing)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.worker:
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        print("RESULT " + json.dumps(worker(a.worker, a.steps, a.examples)), flush=True)
        return
    if a.smoke:
        _smoke.tiny_model_dir()  # exported to the worker subprocesses through the environment
        a.steps, a.tutorial_steps, a.examples, a.rounds = 3, 1, 24, 1
    if a.profile:
        profile(1 if a.smoke else 2)
        return
    model_source()  # convert the GGUF once, outside the timed subprocesses
    # The CPU is shared and its load changes by the minute: recipes run interleaved, round after round,
    # and each reports its best round (the one least slowed by other processes) and the median.
    runs: dict[str, list[dict]] = {}
    failed: list[str] = []
    for rnd in range(a.rounds):
        for name in a.recipes:
            steps = a.tutorial_steps if name == "tutorial" else a.steps
            if name == "tutorial" and rnd > 0:
                continue  # minutes per round; one is enough to show the gap
            t = time.perf_counter()
            if a.smoke:  # in this process: three more torch imports would cost more than the runs
                res = worker(name, steps, a.examples, smoke=True)
            else:
                p = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(steps),
                                    "--examples", str(a.examples),
                                    *(["--threads", str(a.threads)] if a.threads else [])], capture_output=True, text=True)
                line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
                if p.returncode or line is None:
                    print(f"{name} failed (exit {p.returncode}):\n{p.stderr[-3000:]}", file=sys.stderr)
                    failed.append(name)
                    continue
                res = json.loads(line[7:])
            res["process_s"] = round(time.perf_counter() - t, 1)
            runs.setdefault(name, []).append(res)
            print(f"  round {rnd + 1} {name}: {res['real_tok_per_s']} real tok/s, {res['real_tok_per_cpu_s']} "
                  f"tok/CPU-s, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    results = []
    for rs in runs.values():
        best = max(rs, key=lambda r: r["real_tok_per_s"])
        results.append({**best, "median_tok_per_s": statistics.median(r["real_tok_per_s"] for r in rs),
                        "rounds": len(rs),
                        "real_tok_per_cpu_s": max(r["real_tok_per_cpu_s"] for r in rs),
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)})
    ref = next((r["real_tok_per_s"] for r in results if r["recipe"] == "trl"), None)
    model = "tiny random Qwen3 (smoke)" if a.smoke else "SmolLM2-135M-Instruct"
    print(f"\n{model}, LoRA r16 all-linear, {a.examples} city+date examples, {os.cpu_count()} CPUs, "
          f"torch threads {a.threads or __import__('torch').get_num_threads()}, best of {a.rounds} interleaved rounds")
    ref_cpu = next((r["real_tok_per_cpu_s"] for r in results if r["recipe"] == "trl"), None)
    print(f"{'recipe':17} {'real tok/s':>10} {'median':>7} {'vs TRL':>7} {'tok/CPU-s':>9} {'vs TRL':>7} "
          f"{'peak RSS MB':>11} {'batches':>7} {'loss first→last':>17}  what")
    for r in results:
        vs = f"{r['real_tok_per_s'] / ref:.2f}x" if ref else "-"
        vs_cpu = f"{r['real_tok_per_cpu_s'] / ref_cpu:.2f}x" if ref_cpu else "-"
        loss = (f"{r['loss_first']:.3f}→{r['loss_last']:.3f}" if r["loss_first"] is not None else "-")
        print(f"{r['recipe']:17} {r['real_tok_per_s']:10.1f} {r['median_tok_per_s']:7.1f} {vs:>7} "
              f"{r['real_tok_per_cpu_s']:9.1f} {vs_cpu:>7} "
              f"{r['peak_rss_mb']:11d} {r['batches_timed']:7d} {loss:>17}  {RECIPES[r['recipe']]}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

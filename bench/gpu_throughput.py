"""Training throughput: the tutorial recipe (HF Trainer + PEFT, padded to max length) against chattune's
default and each fast-path switch, on random-init Qwen3 at real data lengths.

    python bench/gpu_throughput.py                                   # GPU: 0.6B, 4B, 8B; seq 2048; bf16
    python bench/gpu_throughput.py --models 0.6B --variants chattune,+packing
    python bench/gpu_throughput.py --device cpu --tiny               # the harness on CPU (< 2 min, fp32)

Per model and variant it prints: real (non-pad) tokens/s, MFU, peak memory, the share of computed
positions that were padding, and the speed-up over the tutorial recipe. Weights are random (their values
don't change speed); shapes are Qwen3's (PERF.md). LoRA r16 all-linear on every variant.

Variants (each trains the same examples in the same order, batch B sequences per step):
  hf-pad      plain Trainer + peft.get_peft_model, every example padded to --seq, gradient checkpointing on
              (the self-llm / tutorial recipe), SDPA
  chattune    chattune's defaults, built as `chattune.train.trainer.train` builds them: `fast_path` plan
              (attention, recompute), Collator with dynamic padding and logits only at trained positions,
              chattune's TrainingArguments (`train.trainer.training_arguments`)
  +packing    + padding-free packing (one row, position_ids): flash-attention varlen when installed, else SDPA
              with a block-diagonal mask
  +liger      + Liger kernels (fused RMSNorm/RoPE/SwiGLU, linear-cross-entropy); GPU + liger-kernel only
  +compile    + torch.compile
  all         packing + liger + compile

Data: huanhuan.json (/work/shared/data, else examples/data/huanhuan_200.json) repeated, as the tutorials
format it (system prompt + one exchange), plus 10% synthetic long single-turn samples (many records joined)
so lengths run from ~30 tokens up to --seq. Rendered by chattune's data pipeline (real Qwen3 template).

MFU = useful FLOPs / time / peak. Useful FLOPs count real tokens only (padding is waste, not work):
per token 4N + 6·N_lora (LoRA; PERF.md), plus causal attention 6·L·H·d·s for a token in a sequence of
length s (exact per sequence). Peak: 989 TFLOP/s on H100/H200 (dense bf16), else a measured matmul.

Tokenizer: the real Qwen3 tokenizer from chattune's asset cache (`make setup`), or --tokenizer DIR.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MODELS = {  # PERF.md: vocab 151,936, head_dim 128
    "0.6B": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 intermediate_size=3072, tie_word_embeddings=True),
    "1.7B": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 intermediate_size=6144, tie_word_embeddings=True),
    "4B": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=9728, tie_word_embeddings=True),
    "8B": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=12288, tie_word_embeddings=False),
    # The CPU harness check: same code path, small enough for 2 cores. Its vocabulary is cut to 8,192 (token ids
    # taken modulo 8,192): a 151,936-row output layer would be 90% of the work and make each step take seconds.
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=768, tie_word_embeddings=True, head_dim=64, vocab_size=8192),
}
QWEN3_VOCAB = 151936
VARIANTS = ["hf-pad", "chattune", "+packing", "+liger", "+compile", "all"]
SWITCHES = {"chattune": {}, "+packing": {"packing": True}, "+liger": {"use_liger_kernel": True},
            "+compile": {"torch_compile": True},
            "all": {"packing": True, "use_liger_kernel": True, "torch_compile": True}}
SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛"
H100_BF16_PEAK = 989e12


# ------------------------------------------------------------------------------------------------ data


def huanhuan_records() -> list[dict]:
    for p in (Path("/work/shared/data/huanhuan.json"), REPO / "examples" / "data" / "huanhuan_200.json"):
        if p.is_file():
            return json.loads(p.read_text(encoding="utf-8"))
    raise SystemExit("no huanhuan data: expected /work/shared/data/huanhuan.json or examples/data/huanhuan_200.json")


def write_data(path: Path, n: int, seq: int, seed: int = 0) -> Path:
    """`n` conversations: huanhuan exchanges, and every 10th a long one joining records up to ~0.3-1.2 × seq."""
    recs = huanhuan_records()
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            if i % 10 == 9:
                target_chars = int(rng.uniform(0.3, 1.2) * seq * 1.3)  # ~1.3 chars per token in this Chinese text
                user, answer = [], []
                while sum(map(len, answer)) + sum(map(len, user)) < target_chars:
                    r = rng.choice(recs)
                    user.append(r["instruction"] + r.get("input", ""))
                    answer.append(r["output"])
                msgs = [{"role": "user", "content": "\n".join(user)}, {"role": "assistant", "content": "".join(answer)}]
            else:
                r = recs[i % len(recs)]
                msgs = [{"role": "user", "content": r["instruction"] + r.get("input", "")},
                        {"role": "assistant", "content": r["output"]}]
            f.write(json.dumps({"messages": [{"role": "system", "content": SYSTEM}, *msgs]}, ensure_ascii=False) + "\n")
    return path


def tokenizer_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    root = Path(os.environ.get("CHATTUNE_ASSETS", Path.home() / ".cache" / "chattune" / "assets"))
    d = root / "tokenizers" / "qwen3"
    if not (d / "tokenizer.json").is_file():
        raise SystemExit(f"Qwen3 tokenizer missing at {d}: run `make setup`, or pass --tokenizer DIR")
    return d


# ------------------------------------------------------------------------------------------------ measuring


class CountingCollator:
    """Wraps a collator and records, per micro-batch, real tokens, computed positions and Σ s² (for attention)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, features):
        batch = self.inner(features)
        lengths = [len(f["input_ids"]) for f in features]
        positions = batch["input_ids"].numel()
        self.calls.append((sum(lengths), positions, sum(s * s for s in lengths)))
        return batch


def pad_to_max(pad_id: int, seq: int):
    """The tutorial collation: every example padded to the full max length."""
    import torch

    def collate(features):
        ids = torch.full((len(features), seq), pad_id, dtype=torch.long)
        labels = torch.full((len(features), seq), -100, dtype=torch.long)
        mask = torch.zeros((len(features), seq), dtype=torch.long)
        for i, f in enumerate(features):
            n = min(len(f["input_ids"]), seq)
            ids[i, :n] = torch.tensor(f["input_ids"][:n])
            labels[i, :n] = torch.tensor(f["labels"][:n])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


class PeakMemory:
    """GPU: max_memory_allocated. CPU: peak RSS growth over the run, sampled every 20 ms."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = 0
        else:
            import psutil

            proc = psutil.Process()
            self.base = proc.memory_info().rss
            self.peak = self.base

            def sample():
                while not self._stop.wait(0.02):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
        return False

    @property
    def gib(self) -> float:
        return (self.peak - self.base) / 1024 ** 3


def step_timer(device: str):
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    return StepTimer()


def peak_flops(device: str) -> tuple[float, str]:
    """Peak FLOP/s to divide by: the H100/H200 dense bf16 spec, or a measured large matmul."""
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name()
        if "H100" in name or "H200" in name:
            return H100_BF16_PEAK, f"{name}: 989 TFLOP/s dense bf16 (spec)"
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = 1024, torch.float32, 10
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    flops = 2 * n ** 3 * reps / (time.perf_counter() - t)
    return flops, f"{device}: measured {n}x{n} {str(dtype).split('.')[-1]} matmul {flops / 1e12:.3f} TFLOP/s"


# ------------------------------------------------------------------------------------------------ variants


def full_shape(shape: dict) -> dict:
    return {"vocab_size": QWEN3_VOCAB, "head_dim": 128, **shape}


def build_model(shape: dict, attn: str, device: str, dtype):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(rope_theta=1e6, max_position_embeddings=32768, attention_bias=False, **full_shape(shape))
    torch.manual_seed(0)
    with torch.device(device):  # built in place, in its dtype: an 8B model never exists in fp32
        model = Qwen3ForCausalLM._from_config(cfg, dtype=dtype, attn_implementation=attn)
    return model


def run_variant(name: str, args, shape: dict, pad_id: int, train_ds, peak: float) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from chattune.config import load_config
    from chattune.data.collate import Collator
    from chattune.errors import ConfigError
    from chattune.model.adapters import apply_method
    from chattune.train import fast_path
    from chattune.train.fast_path import ModelShape, flops_per_token
    from chattune.train.trainer import supports_trained_logits_only, training_arguments

    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    steps = args.warmup + args.steps
    out_dir = tempfile.mkdtemp(prefix=f"bench_{name}_")
    common = dict(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=args.batch,
                  learning_rate=2e-4, lr_scheduler_type="constant", save_strategy="no", logging_steps=10 ** 6,
                  report_to="none", disable_tqdm=True, seed=0, data_seed=0, remove_unused_columns=False,
                  dataloader_num_workers=0)
    timer = step_timer(device)
    if name == "hf-pad":
        from peft import LoraConfig, get_peft_model

        attn, gc_on = "sdpa", True
        model = build_model(shape, attn, device, dtype)
        model.config.use_cache = False
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        targs = TrainingArguments(**common, bf16=dtype == torch.bfloat16, use_cpu=device == "cpu",
                                  activation_checkpointing=True)
        collator = CountingCollator(pad_to_max(pad_id, args.seq))
    else:
        sw = SWITCHES[name]
        if device == "cpu" and sw.get("torch_compile") and not args.cpu_compile:
            return {"variant": name, "skipped": "CPU: compiling takes minutes on 2 cores (--cpu-compile to force)"}
        cfg = load_config(None, [f"data.max_length={args.seq}", f"train.batch_size={args.batch}",
                                 "train.report_to=[none]", "method.lora.r=16",
                                 *[f"train.{k}={str(v).lower()}" for k, v in sw.items()]])
        try:
            plan = fast_path.resolve_fast_path(cfg, device, model_config=full_shape(shape))
        except ConfigError as e:  # a switch this machine cannot run (Liger without CUDA, ...)
            return {"variant": name, "skipped": str(e)}
        attn, gc_on = plan["attn_implementation"], plan["gradient_checkpointing"]
        run_cfg = fast_path.apply_plan(cfg, plan)  # as chattune.train.trainer.train does
        model = build_model(shape, attn, device, dtype)
        fast_path.prepare_model(model)
        model, _ = apply_method(model, run_cfg)
        base = training_arguments(run_cfg, run_dir=out_dir, has_eval=False, device=device, dtype=dtype, model=model)
        over = {**common, **fast_path.training_args(plan)}
        over = {k: v for k, v in over.items() if k in {f.name for f in dataclasses.fields(base)}}
        targs = dataclasses.replace(base, **over)
        collator = CountingCollator(Collator(pad_id, packing=cfg.train.packing,
                                            trained_logits_only=supports_trained_logits_only(model, run_cfg)))

    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collator, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # keep the table readable
    row = {"variant": name, "attn": attn, "gc": gc_on}
    try:
        with PeakMemory(device) as mem:
            out = trainer.train()
    except torch.cuda.OutOfMemoryError:
        row["skipped"] = "out of GPU memory"
        return row
    finally:
        del trainer, model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        if name in ("+compile", "all"):
            torch._dynamo.reset()
    w, n = args.warmup, steps  # the collator runs ahead (prefetch): count the batches the measured steps used
    calls = collator.calls[w:n]
    secs = timer.times[n - 1] - timer.times[w - 1]
    real, positions, sq = (sum(c[i] for c in calls) for i in range(3))
    mshape = ModelShape.from_config(full_shape(shape))
    dense = flops_per_token(mshape, 0.0, "lora", 16)
    attn_flops = 6 * mshape.layers * mshape.heads * mshape.head_dim * sq
    useful = dense * real + attn_flops
    row.update(tok_s=real / secs, mfu=useful / secs / peak, mem_gib=mem.gib, pad=1 - real / positions,
               step_s=secs / len(calls), loss=out.training_loss)
    return row


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--tiny", action="store_true", help="the CPU harness config: tiny model, seq 256, few steps")
    ap.add_argument("--models", default=None, help="comma list of " + ",".join(MODELS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seq", type=int, default=None, help="max length (default 2048; 256 with --tiny)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 8; 4 with --tiny)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; 1 with --tiny)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; 5 with --tiny)")
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the Qwen3 asset)")
    ap.add_argument("--cpu-compile", action="store_true", help="also run the torch.compile variants on CPU")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: on a shared machine, spinning OpenMP threads cost more than they add)")
    args = ap.parse_args(argv)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny
    args.seq = args.seq or (256 if tiny else 2048)
    args.batch = args.batch or (4 if tiny else 8)
    args.warmup = args.warmup or (1 if tiny else 3)
    args.steps = args.steps or (5 if tiny else 10)
    models = (args.models or ("tiny" if tiny else "0.6B,4B,8B")).split(",")
    variants = args.variants.split(",")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    import datasets
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from chattune.config import load_config
    from chattune.data.dataset import build_datasets

    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir(args.tokenizer))
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_throughput_"))
    data = write_data(work / "train.jsonl", args.examples, args.seq)
    cfg = load_config(None, [f"data.train={data}", f"data.max_length={args.seq}", f"data.cache_dir={work / 'cache'}"])
    train_ds, _, report = build_datasets(cfg, tok)
    lengths = sorted(train_ds["length"] if "length" in train_ds.column_names else map(len, train_ds["input_ids"]))
    peak, peak_note = peak_flops(args.device)
    print(f"data: {len(train_ds)} examples, tokens median {lengths[len(lengths) // 2]}, p90 "
          f"{lengths[int(len(lengths) * 0.9)]}, max {lengths[-1]} (max_length {args.seq})")
    print(f"peak: {peak_note}; batch {args.batch} sequences/step, {args.warmup} warm-up + {args.steps} timed steps, "
          f"{'bf16' if args.device == 'cuda' else 'fp32'}, LoRA r16 all-linear")

    header = (f"{'model':<6} {'variant':<10} {'attn':<18} {'gc':<4} {'tok/s':>9} {'MFU':>7} {'peak GiB':>9} "
              f"{'pad':>5} {'s/step':>7} {'vs hf-pad':>9}")
    print(header)
    print("-" * len(header))
    for m in models:
        base_tps = None
        vocab = full_shape(MODELS[m])["vocab_size"]
        ds, pad_id = train_ds, tok.pad_token_id
        if vocab < len(tok):  # the tiny model: fold token ids into its small vocabulary (lengths unchanged)
            ds = train_ds.map(lambda b: {"input_ids": [[i % vocab for i in r] for r in b["input_ids"]],
                                         "labels": [[t if t < 0 else t % vocab for t in r] for r in b["labels"]]},
                              batched=True)
            pad_id %= vocab
        for v in variants:
            row = run_variant(v, args, MODELS[m], pad_id, ds, peak)
            if "skipped" in row:
                print(f"{m:<6} {v:<10} skipped: {row['skipped']}", flush=True)
                continue
            base_tps = row["tok_s"] if v == "hf-pad" else base_tps
            ratio = f"{row['tok_s'] / base_tps:.2f}x" if base_tps else "-"
            print(f"{m:<6} {v:<10} {row['attn']:<18} {'on' if row['gc'] else 'off':<4} {row['tok_s']:>9.0f} "
                  f"{100 * row['mfu']:>6.1f}% {row['mem_gib']:>9.2f} {100 * row['pad']:>4.0f}% "
                  f"{row['step_s']:>7.3f} {ratio:>9}", flush=True)


if __name__ == "__main__":
    main()

"""Training throughput through the product route: `chattune.train` on random-init Qwen3 shapes, against the
tutorial recipe (HF Trainer + PEFT, every example padded to max length) on the same data.

    python bench/gpu_throughput.py                          # GPU: Qwen3 0.6B, 4B, 8B shapes; seq 2048; bf16
    python bench/gpu_throughput.py --models 8B --variants packed,qlora
    python bench/gpu_throughput.py --device cpu --tiny      # the same code on a tiny Qwen3 on CPU (fp32)
    python bench/gpu_throughput.py --smoke                  # seconds: CI checks the bench still runs

Every chattune variant is one `chattune.train(cfg)` call on a model folder written here with random weights
(their values don't change speed) and the shapes of chattune's table (`chattune.plan.KNOWN_MODELS`); the run
plan decides attention, recompute and Liger exactly as for users, and its memory estimate is printed next to
the measured peak. LoRA r16 all-linear everywhere.

Variants: ``hf-pad`` the tutorial recipe (pad to max length, recompute on, LoRA dropout 0.1, SDPA);
``padded`` chattune's defaults (dynamic padding, length grouping, logits only where trained); ``packed``
+ padding-free packing; ``liger`` packed + Liger kernels (CUDA + liger-kernel); ``sdpa`` packed with
attention forced to SDPA (only when the plan picked a flash kernel); ``qlora`` packed with a 4-bit NF4 base
(the largest model only).

Numbers: real (non-pad) tokens/s over the timed steps (after warm-up); MFU = useful FLOPs / time / peak, with
useful FLOPs per real token = 4N + 6·N_lora + causal attention 6·L·H·d·s (`chattune.plan.flops_per_token`,
s = the data's token-weighted mean length); peak = 790 TFLOP/s (bf16 matmul measured on an H200) on CUDA, a
measured fp32 matmul on CPU. Memory: ``torch.cuda.max_memory_allocated`` (CUDA) or the growth of the
process's peak RSS (CPU), against the plan's estimate without the CUDA context it adds.

Tokenizer: the real Qwen3 tokenizer from chattune's asset cache (`make setup`), or --tokenizer DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

BF16_PEAK = 790e12  # bf16 dense matmul measured on the H200 this script is sized for
MODELS = {"0.6B": "Qwen/Qwen3-0.6B", "1.7B": "Qwen/Qwen3-1.7B", "4B": "Qwen/Qwen3-4B", "8B": "Qwen/Qwen3-8B"}
# The CPU shapes: the same architecture and the real 151k vocabulary, small enough for 2 cores.
TINY = {"tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=32, intermediate_size=256),
        "smoke": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=16, intermediate_size=64)}
VARIANTS = ["hf-pad", "padded", "packed", "liger", "sdpa", "qlora"]
SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛"


def write_data(path: Path, n: int, seq: int, seed: int = 0) -> Path:
    """`n` huanhuan exchanges as the tutorials format them; every 10th joins records up to ~0.3-1.2 × seq."""
    recs = json.loads((REPO / "examples" / "data" / "huanhuan_200.json").read_text(encoding="utf-8"))
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            picked = [recs[i % len(recs)]]
            if i % 10 == 9:
                target = int(rng.uniform(0.3, 1.2) * seq * 1.3)  # ~1.3 characters per token in this text
                while sum(len(r["instruction"]) + len(r["output"]) for r in picked) < target:
                    picked.append(rng.choice(recs))
            msgs = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": "\n".join(r["instruction"] + r.get("input", "") for r in picked)},
                    {"role": "assistant", "content": "".join(r["output"] for r in picked)}]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    return path


def tokenizer_dir(arg: str | None) -> Path:
    from chattune.fsutil import cache_root

    d = Path(arg) if arg else Path(os.environ.get("CHATTUNE_ASSETS", cache_root() / "assets")) / "tokenizers" / "qwen3"
    if not (d / "tokenizer.json").is_file():
        raise SystemExit(f"Qwen3 tokenizer missing at {d}: run `make setup`, or pass --tokenizer DIR")
    return d


def model_config(name: str):
    from transformers import Qwen3Config

    from chattune.plan import KNOWN_MODELS, known_name

    fields = dict(KNOWN_MODELS[known_name(MODELS[name])]) if name in MODELS else \
        {**KNOWN_MODELS["qwen/qwen3-0.6b"], **TINY[name], "tie_word_embeddings": True}
    fields.pop("model_type")
    return Qwen3Config(**fields)


def write_model(name: str, folder: Path, tok_dir: Path, device: str) -> Path:
    """A random-init Qwen3 of shape `name` saved as a model folder (built on the device, in bf16 on CUDA)."""
    import torch
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(model_config(name), dtype=dtype)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


class Meter:
    """Step end times and real-token counts (callback), and peak memory (CUDA allocator or sampled RSS)."""

    def __init__(self, device: str):
        from transformers import TrainerCallback

        self.device, self.times, self.tokens, self.base, self.peak = device, [], [], 0, 0
        self._stop = threading.Event()
        meter = self

        class StepMeter(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if meter.device == "cuda":
                    import torch

                    torch.cuda.synchronize()
                meter.times.append(time.perf_counter())
                meter.tokens.append(state.num_input_tokens_seen)

        self.callback = StepMeter()

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()
            self.base = self.peak = proc.memory_info().rss

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

    def rate(self, warmup: int) -> tuple[float, int, float]:
        """(real tokens/s, real tokens, seconds) over the steps after `warmup`."""
        secs = self.times[-1] - self.times[warmup - 1]
        toks = self.tokens[-1] - self.tokens[warmup - 1]
        return toks / secs, toks, secs


def run_chattune(variant: str, args, folder: Path, data: Path, work: Path) -> dict:
    """One `chattune.train` run; the switches are config overrides, nothing else differs from a user's run."""
    import chattune
    from chattune.errors import ChattuneError

    over = [f"model.name_or_path={folder}", f"data.train={data}", f"data.max_length={args.seq}",
            f"data.cache_dir={work / 'cache'}", f"train.batch_size={args.batch}",
            f"train.max_steps={args.warmup + args.steps}", f"train.save_steps={10 ** 6}", "train.report_to=[none]",
            "train.logging_steps=1000000", "train.scheduler=constant", "train.warmup_ratio=0", "method.lora.r=16",
            f"output_dir={work / ('run_' + variant + '_' + folder.name)}"]
    over += {"padded": [], "packed": ["train.packing=true"],
             "liger": ["train.packing=true", "train.use_liger_kernel=true"],
             "sdpa": ["train.packing=true", "model.attn_implementation=sdpa"],
             "qlora": ["train.packing=true", "method.type=qlora"]}[variant]
    if variant != "liger":
        over.append("train.use_liger_kernel=false")  # Liger only where measured on purpose
    cfg = chattune.load_config(None, over)
    meter = Meter(args.device)
    try:
        with meter:
            result = chattune.train(cfg, callbacks=[meter.callback])
    except ChattuneError as e:  # a switch this machine cannot run (Liger without CUDA, ...)
        return {"skipped": str(e).splitlines()[0]}
    plan, est = result.plan, result.plan.memory
    return {"meter": meter, "attn": plan.attention, "gc": plan.gradient_checkpointing, "loss": result.train_loss,
            "predicted": (est.total - est.overhead) if est else None}


def run_tutorial(args, folder: Path, train_ds, pad_id: int, work: Path) -> dict:
    """The tutorial recipe: HF Trainer + PEFT, every example padded to max length, recompute on, SDPA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    cuda = args.device == "cuda"
    meter = Meter(args.device)

    def collate(features):
        ids = torch.full((len(features), args.seq), pad_id, dtype=torch.long)
        labels = torch.full((len(features), args.seq), -100, dtype=torch.long)
        mask = torch.zeros((len(features), args.seq), dtype=torch.long)
        for i, f in enumerate(features):
            n = min(len(f["input_ids"]), args.seq)
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"][:n]), torch.tensor(f["labels"][:n]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    with meter:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if cuda else torch.float32,
                                                     attn_implementation="sdpa", device_map=args.device)
        model.config.use_cache = False
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
        targs = TrainingArguments(
            output_dir=str(work / "hf_pad"), max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch,
            learning_rate=2e-4, lr_scheduler_type="constant", save_strategy="no", logging_steps=10 ** 6,
            report_to="none", disable_tqdm=True, seed=0, remove_unused_columns=False, bf16=cuda, use_cpu=not cuda,
            activation_checkpointing=True, include_num_input_tokens_seen="non_padding", dataloader_num_workers=0)
        trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collate,
                          callbacks=[meter.callback])
        trainer.remove_callback(PrinterCallback)
        out = trainer.train()
    del trainer, model
    return {"meter": meter, "attn": "sdpa", "gc": True, "loss": out.training_loss, "predicted": None}


def peak_flops(device: str) -> tuple[float, str]:
    import torch

    if device == "cuda":
        return BF16_PEAK, "790 TFLOP/s bf16 (matmul measured on an H200)"
    n, reps = 512, 5
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    flops = 2 * n ** 3 * reps / (time.perf_counter() - t)
    return flops, f"cpu: measured {n}x{n} fp32 matmul {flops / 1e9:.1f} GFLOP/s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--tiny", action="store_true", help="CPU harness: a tiny Qwen3, seq 256, few steps")
    ap.add_argument("--smoke", action="store_true", help="seconds: the smallest model, 2 timed steps, CPU")
    ap.add_argument("--models", default=None, help="comma list of " + ",".join([*MODELS, *TINY]))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seq", type=int, default=None, help="max length (default 2048; 256 tiny, 128 smoke)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default 4; 2 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; 1 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 6; 3 tiny, 2 smoke)")
    ap.add_argument("--examples", type=int, default=None, help="conversations (default 1000; 60 on CPU)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the Qwen3 asset)")
    ap.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    args = ap.parse_args(argv)

    import torch

    small = args.tiny or args.smoke
    args.device = args.device or ("cpu" if small or not torch.cuda.is_available() else "cuda")
    cpu = args.device == "cpu"
    args.seq = args.seq or (128 if args.smoke else 256 if small else 2048)
    args.batch = args.batch or (2 if cpu else 4)
    args.warmup = args.warmup or (1 if cpu else 2)
    args.steps = args.steps or (2 if args.smoke else 3 if cpu else 6)
    args.examples = args.examples or (60 if cpu else 1000)
    models = (args.models or ("smoke" if args.smoke else "tiny" if small else "0.6B,4B,8B")).split(",")
    variants = args.variants.split(",")
    if args.smoke:
        variants = [v for v in variants if v in ("hf-pad", "packed")]
    if cpu:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from chattune.config import load_config
    from chattune.data.dataset import build_datasets
    from chattune.plan import flops_per_token, shape_of

    hf_logging.set_verbosity_error()
    tok_dir = tokenizer_dir(args.tokenizer)
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_throughput_"))
    data = write_data(work / "train.jsonl", args.examples, args.seq)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = load_config(None, [f"data.train={data}", f"data.max_length={args.seq}", f"data.cache_dir={work / 'cache'}",
                             f"model.name_or_path={tok_dir}"])
    from chattune.model.load import load_tokenizer

    ctok = load_tokenizer(cfg.model)
    train_ds, _, _ = build_datasets(cfg, ctok)
    lengths = [len(x) for x in train_ds["input_ids"]]
    s_mean = sum(s * s for s in lengths) / sum(lengths)  # token-weighted mean length: exact attention FLOPs
    peak, peak_note = peak_flops(args.device)
    print(f"data: {len(lengths)} examples, median {sorted(lengths)[len(lengths) // 2]} tokens, max {max(lengths)} "
          f"(max_length {args.seq}); batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps; "
          f"peak {peak_note}", flush=True)
    header = ["model", "variant", "attn", "recompute", "tok/s", "MFU", "peak GiB", "plan GiB", "vs hf-pad", "loss"]
    rows: list[list[str]] = []
    print(" | ".join(header), flush=True)
    for m in models:
        folder = write_model(m, work / f"model_{m}", tok_dir, args.device)
        shape = shape_of(model_config(m))
        base, packed_attn = None, None
        for v in variants:
            if v == "qlora" and m != models[-1]:
                continue  # 4-bit on the largest shape only
            if v == "sdpa" and packed_attn in (None, "sdpa"):
                res = {"skipped": "the plan picked SDPA for packed (no flash-attention here): nothing to compare"}
            elif v == "hf-pad":
                res = run_tutorial(args, folder, train_ds, tok.pad_token_id or 0, work)
            else:
                res = run_chattune(v, args, folder, data, work)
            packed_attn = res.get("attn") if v == "packed" else packed_attn
            if "skipped" in res:
                row = [m, v, "-", "-", "-", "-", "-", "-", "-", f"skipped: {res['skipped']}"]
            else:
                meter = res["meter"]
                tps, toks, secs = meter.rate(args.warmup)
                method = "qlora" if v == "qlora" else "lora"
                mfu = flops_per_token(shape, s_mean, method, 16) * toks / secs / peak
                base = tps if v == "hf-pad" else base
                mem = (meter.peak - meter.base) / 1024 ** 3
                pred = f"{res['predicted'] / 1024 ** 3:.1f}" if res["predicted"] else "-"
                row = [m, v, res["attn"], "on" if res["gc"] else "off", f"{tps:.0f}", f"{100 * mfu:.1f}%",
                       f"{mem:.2f}", pred, f"{tps / base:.2f}x" if base else "-", f"{res['loss']:.3f}"]
            rows.append(row)
            print(" | ".join(row), flush=True)
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                       *("| " + " | ".join(r) + " |" for r in rows)])
    print("\n" + table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"{peak_note}\n\n{table}\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

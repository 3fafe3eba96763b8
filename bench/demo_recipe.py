"""Recipe search for `chattune demo`, through the product: each recipe is `chattune.demo.run_demo` (the
same synthesise → evaluate base → train → evaluate tuned road as `chattune demo`) with config overrides
on top of the task's recipe (`chattune.demo_tasks`), so a recipe found here is a recipe the demo runs.

    .venv/bin/python bench/demo_recipe.py                                   # the demo recipe
    .venv/bin/python bench/demo_recipe.py --recipes n300_lr2e3_d0,demo      # named recipes, one table
    .venv/bin/python bench/demo_recipe.py --n-train 300 train.lr=3e-3 method.lora.r=8   # ad hoc
    .venv/bin/python bench/demo_recipe.py --task weather-tool               # the tool-calling demo's recipe
    .venv/bin/python bench/demo_recipe.py --smoke                           # tiny model, seconds

Prints, per recipe: train rows, optimizer steps, train tokens/s, wall seconds of the training stage,
process CPU seconds of the whole recipe (the steadier number on a shared machine), and the task's scores of the
base and the tuned model on the held-out rows: city-date exact / all-JSON-fields match; weather-tool the share of
rows needing the tool that call it, argument accuracy, and the rows answered with a call they did not need
(spurious) or with an unreadable call (malformed).
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
# The weather-tool demo recipe is n{demo}_s{share}: see chattune.demo_tasks.WEATHER_TOOL_RECIPE.
TOOL_RECIPES: dict[str, tuple[int, list[str]]] = {
    "demo": (0, []),  # 0: the task's own n_train
}
TASK_RECIPES = {"city-date": RECIPES, "weather-tool": TOOL_RECIPES}
SMOKE = ["train.max_steps=2", "eval.max_new_tokens=4", "eval.batch_size=4"]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(name: str, n_train: int | None, overrides: list[str], *, n_test: int, seed: int, model: str | None,
        out: Path, console, task: str) -> dict:
    """One recipe through `run_demo`; the row of the table."""
    from chattune.demo import run_demo

    cpu = cpu_seconds()
    s = run_demo(model=model, n_train=n_train, n_test=n_test, out=out / name, overrides=overrides, seed=seed,
                 console=console, task=task)
    stage = {x["name"].split(" ")[0]: x["seconds"] for x in s["stages"]}
    base, tuned = s["metrics"]["base"], s["metrics"]["tuned"]
    row = {"recipe": name, "n_train": s["n_train"], "steps": s["train"]["steps"],
           "tok_s": s["train"]["tokens_per_s"] or 0.0, "train_s": stage["train"], "cpu_s": cpu_seconds() - cpu}
    if task == "city-date":
        return {**row, "base exact": f"{base['exact']:.0%}", "exact": f"{tuned['exact']:.0%}",
                "fields": f"{tuned['json_fields']:.0%}"}
    n_answer = s["n_test"] - tuned["tool_expected"]
    return {**row, "base calls": f"{base['tool_call_name_acc'] or 0:.0%}",
            "calls": f"{tuned['tool_call_name_acc'] or 0:.0%}", "args": f"{tuned['tool_arg_acc'] or 0:.0%}",
            "spurious": f"{tuned['tool_spurious']}/{n_answer}", "malformed": str(tuned["tool_malformed"])}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen recipes one after another and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="key.sub=value on top of each recipe (ad hoc search)")
    ap.add_argument("--task", default="city-date", choices=sorted(TASK_RECIPES), help="the demo task")
    ap.add_argument("--recipes", default="demo", help="comma list of the task's recipes; city-date: " +
                    ",".join(RECIPES) + "; weather-tool: " + ",".join(TOOL_RECIPES))
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
        if name not in TASK_RECIPES[args.task]:
            raise SystemExit(f"unknown recipe {name!r}; known: {', '.join(TASK_RECIPES[args.task])}")
    extra = list(args.overrides)
    n_test = args.n_test
    tasks = [args.task]
    if args.smoke:  # each task's demo recipe
        args.model, args.n_train, n_test, extra = str(_smoke.tiny_model_dir()), 8, 4, extra + SMOKE
        tasks = list(TASK_RECIPES)
    console = Console(stderr=True)
    for task in tasks:
        with tempfile.TemporaryDirectory(prefix="demo_recipe_") as tmp:
            out = args.out or Path(tmp)
            rows = []
            for name in names:
                n_train, overrides = TASK_RECIPES[task][name]
                rows.append(run(name, args.n_train or n_train or None, overrides + extra, n_test=n_test,
                                seed=args.seed, model=args.model, out=out / task, console=console, task=task))
        table(rows, task, n_test, args.seed)
    return 0


def table(rows: list[dict], task: str, n_test: int, seed: int) -> None:
    """Print one task's recipes as a table."""
    import torch

    scores = list(rows[0])[6:]
    print(f"\n{'recipe':<20} {'n':>4} {'steps':>5} {'tok/s':>6} {'train s':>8} {'cpu s':>7} " +
          " ".join(f"{k:>10}" for k in scores))
    for r in rows:
        print(f"{r['recipe']:<20} {r['n_train']:>4} {r['steps']:>5} {r['tok_s']:>6.0f} {r['train_s']:>8.0f} "
              f"{r['cpu_s']:>7.0f} " + " ".join(f"{r[k]:>10}" for k in scores))
    print(f"({n_test} held-out rows ({task}), data seed {seed}, torch threads {torch.get_num_threads()}, "
          f"load avg {os.getloadavg()[0]:.1f}; cpu s = the whole recipe, both evaluations included)")


if __name__ == "__main__":
    sys.exit(main())

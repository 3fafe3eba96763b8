"""The main job: watch a real model learn a task, with proof, in one command.

`run_demo` composes the library and owns none of its logic:

1. prepare model    ``model.load.resolve_source`` (the SmolLM2 GGUF becomes cached safetensors on first use)
2. synthesise       ``data.synth``: train + held-out test rows (no sentence in both)
3. evaluate base    ``infer.evaluate.evaluate`` on the test set, with the prompts and chat template training will
                    use (``rundir.load.load_untrained``)
4. train            ``train.trainer.train`` (LoRA, the task's recipe)
5. evaluate tuned   the same test set through the run dir
6. report           ``report.write_report``: report.md / report.html / loss.png

The tasks and their recipes are in `chattune.demo_tasks` (``--task``: city-date, the default, or weather-tool).
Pass ``--config`` to run a task with another recipe; the demo fills in the data files and output_dir either way.

The demo folder (``--out``, default runs/demo)::

    data/train.jsonl, data/test.jsonl     the synthesised rows
    eval_base/, eval_tuned/               predictions.jsonl + metrics.json of each evaluation
    run/                                  the training run dir (adapter, metrics.jsonl, chattune.yaml, ...)
    train.yaml                            the exact training config (chattune train train.yaml)
    demo.json                             every number the report shows
    report.md, report.html, loss.png      the proof
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from .config import Config, DataSource, config_from_dict, deep_merge, load_config, parse_overrides
from .demo_tasks import CITY_DATE_RECIPE, DemoTask, demo_task, shown_reference
from .errors import ChattuneError
from .fsutil import atomic_write_text

DEMO_RECIPE = CITY_DATE_RECIPE  # the default task's
DEMO_N_TRAIN = 300
DEMO_N_TEST = 100
DEMO_SEED = 0
DEFAULT_TASK = "city-date"
DEFAULT_OUT = "runs/demo"
N_EXAMPLES = 10              # example predictions in the report: the first N test sentences, not picked

# What a demo folder holds; an existing folder with only these names is an earlier demo and is replaced.
_DEMO_ITEMS = {"data", "eval_base", "eval_tuned", "run", "train.yaml", "demo.json", "report.md", "report.html",
               "loss.png"}


def demo_config(*, config: str | Path | Config | None = None, model: str | None = None,
                overrides: list[str] | None = None, task: str = DEFAULT_TASK) -> Config:
    """The training config the demo uses (before it fills in data files and output_dir).

    Args:
        config: a YAML path, a `Config`, or None for the task's recipe.
        model: replaces model.name_or_path.
        overrides: ``key.sub=value`` strings applied last.
        task: the demo task whose recipe is the default (`chattune.demo_tasks.TASKS`).

    Returns:
        The validated config.

    Raises:
        ConfigError: a bad file, key or value (the message names it).
        ChattuneError: an unknown task.
    """
    if isinstance(config, Config):
        cfg = config_from_dict({**config.model_dump(mode="json")}, "<config>")
        if overrides:
            cfg = config_from_dict(deep_merge(cfg.model_dump(mode="json"), parse_overrides(overrides)), "<config>")
    elif config is not None:
        cfg = load_config(config, overrides)
    else:
        raw = json.loads(json.dumps(_task(task).recipe))  # deep copy
        cfg = config_from_dict(deep_merge(raw, parse_overrides(overrides or [])), "<demo recipe>")
    if model:
        cfg.model.name_or_path = model
    return cfg


def _task(name: str) -> DemoTask:
    try:
        return demo_task(name)
    except ValueError as e:
        raise ChattuneError(str(e)) from None


def _prepare_out(out: Path, console) -> None:
    """Make `out` ready: create it, or replace an earlier demo there; refuse any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise ChattuneError(f"--out {out} is a file; pass a folder")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        foreign = sorted(n for n in names if n not in _DEMO_ITEMS and not n.startswith("."))
        if foreign:
            raise ChattuneError(f"--out {out} already holds files the demo did not write ({', '.join(foreign[:5])}); "
                                "pass an empty or new folder")
        if names:
            console.print(f"[yellow]{out} holds an earlier demo; replacing it")
        for n in names & _DEMO_ITEMS:
            p = out / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


class _Stages:
    """Times each stage and prints its header, so the user sees where the minutes go."""

    def __init__(self, console, total: int):
        self.console, self.total = console, total
        self.done: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        n = len(self.done) + 1
        self.console.rule(f"[bold][{n}/{self.total}] {name}", align="left")
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        secs = time.perf_counter() - t
        self.done.append({"name": name, "seconds": round(secs, 2)})
        self.console.print(f"[dim]{name}: {secs:.1f} s")
        return result

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0


def _eval_progress(console, label: str):
    """A transient rich progress bar for generation batches: (context manager, callback(done, total))."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                   transient=True)
    task = bar.add_task(label, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


def _evaluate(console, label: str, model_path, test_path: Path, cfg: Config, out_dir: Path, task: DemoTask,
              data_cfg=None, untrained: bool = False) -> dict:
    from .infer.evaluate import evaluate
    from .infer.generate import Generator
    from .rundir.load import load_untrained

    bar, cb = _eval_progress(console, label)
    with bar:
        # both models run in the dtype training used, so the comparison is like for like
        dtype = None if cfg.model.dtype == "auto" else cfg.model.dtype
        # the base renders with the config's tokenizer and chat template (model.chat_template), as training will
        gen = (Generator.from_loaded(load_untrained(cfg.model, dtype=dtype), model_path, thinking=cfg.data.thinking)
               if untrained else None)
        res = evaluate(model_path, test_path, metrics=cfg.eval.metrics, max_new_tokens=cfg.eval.max_new_tokens,
                       batch_size=cfg.eval.batch_size, limit=cfg.eval.limit, out_dir=out_dir, data_cfg=data_cfg,
                       thinking=cfg.data.thinking, progress=cb, dtype=dtype, generator=gen)
    m, t = res["metrics"], res["timing"]
    shown = ", ".join(f"{k} {100 * m[k]:.1f}%" for k in task.headline if k in m)
    console.print(f"{label}: {shown} on {res['n']} {task.unit} ({t['new_tokens']} tokens generated in "
                  f"{t['generation_seconds']:.1f} s)", highlight=False)
    return res


def _examples(base_rows: list[dict], tuned_rows: list[dict], sentences: dict[str, str], n: int,
              task: DemoTask) -> list[dict]:
    """The first `n` test rows (not picked), base vs tuned; the input shown is the bare sentence."""
    def ok(r):
        s = r.get("scores") or {}
        return s.get(next((k for k in task.headline if k in s), ""), 0.0) == 1.0

    return [{"input": sentences.get(b["input"], b["input"]), "reference": shown_reference(b), "base": b["output"],
             "tuned": t["output"], "base_ok": ok(b), "tuned_ok": ok(t)} for b, t in list(zip(base_rows, tuned_rows))[:n]]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _commands(out: Path, model: str, n_train: int, n_test: int, seed: int, config: str | None,
              overrides: list[str], cfg: Config, task: DemoTask) -> list:
    import shlex

    e = cfg.eval
    one = ("chattune demo" + (f" --task {task.name}" if task.name != DEFAULT_TASK else "") +
           f" --model {shlex.quote(model)} --n-train {n_train} --n-test {n_test} --seed {seed} --out {out}")
    if config:
        one += f" --config {shlex.quote(config)}"
    if overrides:
        one += " " + " ".join(shlex.quote(o) for o in overrides)
    return [
        "# the whole demo",
        one,
        "# or stage by stage, into a fresh folder D (the same data, config and metrics)",
        "D=runs/demo_steps",
        f"chattune data synth {task.synth_args(n_train, seed, n_test)} "
        "--out $D/data/train.jsonl --test-out $D/data/test.jsonl",
        f"chattune train {out / 'train.yaml'} output_dir=$D/run data.train=$D/data/train.jsonl",
        f"chattune eval $D/run --data $D/data/test.jsonl --compare base --metrics {','.join(e.metrics)} "
        f"--max-new-tokens {e.max_new_tokens} --batch-size {e.batch_size} --out $D/compare",
    ]


def _machine() -> dict:
    import torch

    info: dict[str, object] = {"python": platform.python_version(), "torch": torch.__version__, "cpu cores": os.cpu_count(),
            "torch threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    try:
        info["load average (1 min, at the end)"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def _recipe_table(cfg: Config, n_train: int, n_test: int, seed: int, task: DemoTask) -> dict:
    lo, t = cfg.method.lora, cfg.train
    method = cfg.method.type + (f" r{lo.r} alpha {lo.alpha} dropout {lo.dropout} on {lo.target_modules}"
                                if cfg.method.type in ("lora", "qlora") else "")
    return {f"train {task.unit}": n_train, f"test {task.unit}": n_test, "data seed": seed,
            "data": task.data_note, "chat template": cfg.model.chat_template or "the model's own",
            "system prompt": cfg.data.system, "method": method,
            "epochs": t.epochs, "max steps": t.max_steps if t.max_steps > 0 else "–", "learning rate": t.lr,
            "scheduler": f"{t.scheduler}, warmup {t.warmup_ratio}", "batch size": t.batch_size * t.grad_accum,
            "max length": cfg.data.max_length, "eval": f"greedy, max {cfg.eval.max_new_tokens} new tokens"}


def run_demo(*, model: str | None = None, n_train: int | None = None, n_test: int | None = None,
             out: str | Path = DEFAULT_OUT, config: str | Path | Config | None = None,
             overrides: list[str] | None = None, seed: int = DEMO_SEED, console=None,
             task: str = DEFAULT_TASK) -> dict:
    """Synthesise → evaluate the base model → train → evaluate the tuned model → write the report.

    Args:
        model: model to tune (alias, folder, .gguf or Hub id); default the recipe's (SmolLM2-135M-Instruct).
        n_train: train rows (default: the task's, 300 sentences for city-date).
        n_test: held-out test rows (default: the task's, 100).
        out: the demo folder; an earlier demo there is replaced, any other non-empty folder is refused.
        config: a YAML config or `Config` replacing `DEMO_RECIPE` (its data files and output_dir are ignored).
        overrides: ``key.sub=value`` strings on top of the recipe (e.g. ``train.max_steps=5``).
        seed: data seed (the same seed gives the same sentences).
        console: rich Console for progress (default: stdout).
        task: what the model learns: "city-date" (the default) or "weather-tool" (`chattune.demo_tasks`).

    Returns:
        The summary written to demo.json: ``metrics {base, tuned}``, ``stages``, ``total_seconds``,
        ``examples``, ``commands``, ``report {markdown, html, loss_png}``, ``run_dir``, paths and recipe.

    Raises:
        ChattuneError: bad options, config or model (the message says what to fix).
    """
    from rich.console import Console

    from .model.load import resolve_source
    from .report import write_report
    from .rundir.layout import METRICS_FILE
    from .train.trainer import train

    console = console or Console()
    t = _task(task)
    n_train = t.n_train if n_train is None else n_train
    n_test = t.n_test if n_test is None else n_test
    if n_train < 1 or n_test < 1:
        raise ChattuneError(f"--n-train and --n-test must be >= 1, got {n_train} and {n_test}")
    cfg = demo_config(config=config, model=model, overrides=overrides, task=task)
    out = Path(out)
    _prepare_out(out, console)
    data_dir, run_dir = out / "data", out / "run"
    train_path, test_path = data_dir / "train.jsonl", data_dir / "test.jsonl"
    cfg.data.train = [DataSource(path=str(train_path), **({"format": t.data_format} if t.data_format else {}))]
    cfg.data.eval = []
    cfg.data.eval_ratio = 0.0
    cfg.output_dir = str(run_dir)
    cfg = config_from_dict(cfg.model_dump(mode="json"), "<demo>")  # re-validate after the edits
    atomic_write_text(out / "train.yaml", cfg.to_yaml())
    name = cfg.model.name_or_path
    console.print(f"[bold]chattune demo[/]: teach {name} {t.learns} "
                  f"({n_train} train / {n_test} held-out {t.unit}) → {out}", highlight=False)

    stages = _Stages(console, 6)
    source = stages.run("prepare the model", resolve_source, cfg.model)
    if stages.done[-1]["seconds"] > 2:
        console.print(f"model files: {source} (a GGUF is converted to safetensors once; later runs reuse it)",
                      highlight=False)
    counts = stages.run(f"synthesise {t.name} {t.unit}", t.synth, train_path, n_train, seed, n_test, test_path)
    console.print(f"{counts['train']} train → {train_path}, {counts['test']} test → {test_path}", highlight=False)
    # The base model sees exactly the prompts training renders (system prompt included); every row counts.
    eval_data_cfg = cfg.data.model_copy(update={"clean": cfg.data.clean.model_copy(update={"dedupe": False})})
    base = stages.run("evaluate the base model", _evaluate, console, "base model", source, test_path, cfg,
                      out / "eval_base", t, data_cfg=eval_data_cfg, untrained=True)
    trained = stages.run(f"train ({cfg.method.type})", train, cfg, console=console)
    tuned = stages.run("evaluate the tuned model", _evaluate, console, "tuned model", run_dir, test_path, cfg,
                       out / "eval_tuned", t)

    metrics = {"base": base["metrics"], "tuned": tuned["metrics"]}
    summary: dict[str, Any] = {
        "title": f"chattune demo: {name} learns {t.learns}", "task": t.name, "unit": t.unit,
        "model": name, "n_train": counts["train"], "n_test": tuned["n"], "run_dir": str(run_dir),
        "data": {"train": str(train_path), "test": str(test_path)},
        "metrics": metrics,
        "metrics_files": {"base": base["metrics_path"], "tuned": tuned["metrics_path"]},
        "train": {k: getattr(trained, k) for k in ("steps", "train_loss", "tokens_per_s", "train_runtime_s", "tokens_seen")},
        "eval_timing": {"base": base["timing"], "tuned": tuned["timing"]},
        "examples": _examples(base["rows"], tuned["rows"], {r["prompt"]: r["sentence"] for r in _read_jsonl(test_path)
                                                            if "prompt" in r}, N_EXAMPLES, t),
        "recipe": _recipe_table(cfg, counts["train"], tuned["n"], seed, t),
        "commands": _commands(out, name, n_train, n_test, seed, str(config) if isinstance(config, (str, Path))
                              else None, list(overrides or []), cfg, t),
    }

    def report():
        # the report shows the stages before it and the total so far; demo.json adds the report's own time
        summary["stages"] = list(stages.done)
        summary["total_seconds"] = round(stages.elapsed, 2)
        summary["machine"] = _machine()
        return write_report(out, summary, metrics_jsonl=run_dir / METRICS_FILE)

    paths = stages.run("write the report", report)
    summary["stages"] = stages.done
    summary["total_seconds"] = round(stages.elapsed, 2)
    summary["report"] = paths
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def summary_table(summary: dict):
    """The before/after table as a rich Table (what the CLI prints at the end)."""
    from rich.table import Table

    from .report import metric_rows

    m = summary["metrics"]
    unit = summary.get("unit", "sentences")
    table = Table(title=f"{summary['model']}: {summary['n_test']} held-out {unit}, before / after "
                        f"{summary['n_train']} training {unit}")
    table.add_column("metric", justify="left")
    for col in ("base", "tuned", "change"):
        table.add_column(col, justify="right")
    for _, label, b, tu, c in metric_rows(m["base"], m["tuned"]):
        table.add_row(label, b, tu, c)
    return table


__all__ = ["DEFAULT_TASK", "DEMO_RECIPE", "DEMO_N_TRAIN", "DEMO_N_TEST", "demo_config", "run_demo", "summary_table"]

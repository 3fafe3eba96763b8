"""CLI command: demo (attached to the root app in cli/__init__.py)."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import console

app = typer.Typer()  # attached to the root app by cli/__init__.py


@app.command("demo")
def demo_cmd(
    model: str | None = typer.Option(None, "--model", help="Model to tune: alias, folder, .gguf or Hub id "
                                        "(default: smollm2-135m-instruct, offline)."),
    task: str = typer.Option("city-date", "--task", help="What the model learns: city-date (city + date → JSON) "
                             "or weather-tool (when and how to call get_weather(city, date))."),
    n_train: int | None = typer.Option(None, "--n-train", min=1, help="Train rows (default: the task's, 300 "
                                       "sentences for city-date, 240 requests for weather-tool)."),
    n_test: int | None = typer.Option(None, "--n-test", min=1, help="Held-out test rows, never in train (default "
                                      "100)."),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Demo folder; an earlier demo there is replaced."),
    config: Path | None = typer.Option(None, "--config", help="YAML recipe to use instead of the task's built-in "
                                          "one (mirrored by examples/demo_<task>.yaml); data files and output_dir "
                                          "are filled in by the demo."),
    seed: int = typer.Option(0, "--seed", help="Data seed (same seed, same sentences)."),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides, e.g. train.lr=5e-4, or "
                                                "method.type=qlora for the same recipe on a 4-bit base"),
) -> None:
    """Watch a model learn a task (city + date → JSON, or calling a weather tool): synthesise data, evaluate the
    base model, LoRA-train, evaluate again, and write report.md / report.html with the proof."""
    from ..demo import run_demo, summary_table

    s = run_demo(model=model, n_train=n_train, n_test=n_test, out=out, config=config, overrides=overrides or [],
                 seed=seed, console=console, task=task)
    console.print()
    console.print(summary_table(s))
    times = ", ".join(f"{st['name'].split(' (')[0]} {st['seconds']:.0f} s" for st in s["stages"])
    console.print(f"time: {times}; total {s['total_seconds']:.0f} s", highlight=False)
    console.print(f"report: {s['report']['markdown']}  (and {Path(s['report']['html']).name}, "
                  f"{Path(s['report']['loss_png'] or '').name})", highlight=False)

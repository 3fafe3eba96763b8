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
    n_train: int | None = typer.Option(None, "--n-train", min=1, help="Train sentences (default: the recipe's, 300)."),
    n_test: int = typer.Option(100, "--n-test", min=1, help="Held-out test sentences (never in train)."),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Demo folder; an earlier demo there is replaced."),
    config: Path | None = typer.Option(None, "--config", help="YAML recipe to use instead of the built-in one "
                                          "(mirrored by examples/demo_city_date.yaml); data files and output_dir "
                                          "are filled in by the demo."),
    seed: int = typer.Option(0, "--seed", help="Data seed (same seed, same sentences)."),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides, e.g. train.lr=5e-4, or "
                                                "method.type=qlora for the same recipe on a 4-bit base"),
) -> None:
    """Watch a model learn city + date → JSON: synthesise data, evaluate the base model, LoRA-train,
    evaluate again, and write report.md / report.html with the proof."""
    from ..demo import run_demo, summary_table

    s = run_demo(model=model, n_train=n_train, n_test=n_test, out=out, config=config, overrides=overrides or [],
                 seed=seed, console=console)
    console.print()
    console.print(summary_table(s))
    times = ", ".join(f"{st['name'].split(' (')[0]} {st['seconds']:.0f} s" for st in s["stages"])
    console.print(f"time: {times}; total {s['total_seconds']:.0f} s", highlight=False)
    console.print(f"report: {s['report']['markdown']}  (and {Path(s['report']['html']).name}, "
                  f"{Path(s['report']['loss_png'] or '').name})", highlight=False)

"""CLI commands: train (registered on the app in cli/__init__.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import app, console, data_app  # noqa: F401


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="YAML config (see examples/)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. train.lr=1e-4"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in output_dir."),
) -> None:
    """Fine-tune a model and write a self-describing run directory (output_dir)."""
    from ..config import load_config
    from ..train.trainer import train

    cfg = load_config(config, overrides or [])
    summary = train(cfg, resume=resume, console=console)
    eval_loss = summary["eval_loss"]
    console.print(
        f"[bold green]done[/] {summary['steps']} steps, train loss {summary['train_loss']:.4f}"
        + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else "")
        + f", {summary['tokens_per_s']:.0f} tok/s -> {summary['run_dir']}")

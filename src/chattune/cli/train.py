"""CLI commands: train (attached to the root app in cli/__init__.py)."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import console

app = typer.Typer()  # attached to the root app by cli/__init__.py


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="YAML config (see examples/)."),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides, e.g. train.lr=1e-4"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint in output_dir."),
    nproc: int | None = typer.Option(None, "--nproc", help="Processes on this node (one per GPU): re-run under "
                                        "torchrun; DDP, or train.distributed: fsdp | deepspeed."),
    nnodes: int = typer.Option(1, "--nnodes", help="Machines in the run (see examples/multinode.md)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This machine's index, 0 .. nnodes-1."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Address of node 0."),
    master_port: int = typer.Option(29500, "--master-port", help="Free TCP port on node 0."),
) -> None:
    """Fine-tune a model and write a self-describing run directory (output_dir)."""
    import signal

    # Ctrl-C and the UI's stop are SIGINT. A process started by a non-interactive shell in the background (CI
    # runners, nohup) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: training
    # would run on to the end. Stopping must always work, so take the default handler back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ..config import load_config
    from ..train.distributed import is_main_process, launch, train_argv

    cfg = load_config(config, overrides or [])  # a bad config fails here once, not in every process
    if nproc is not None or nnodes > 1:
        code = launch(train_argv(str(config), overrides, resume), nproc or 1, nnodes, node_rank, master_addr,
                      master_port)
        raise typer.Exit(code)
    from ..train.trainer import train

    result = train(cfg, resume=resume, console=console)
    if not is_main_process():
        return
    console.print(
        f"[bold green]done[/] {result.steps} steps, train loss {result.train_loss:.4f}"
        + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
        + f", {result.tokens_per_s:.0f} tok/s -> {result.run_dir}")

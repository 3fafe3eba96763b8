"""The `chattune` command. Each subcommand parses its options, calls one library function and prints.

Heavy libraries (torch, transformers) are imported inside the commands so `chattune --help` stays fast.
"""
from __future__ import annotations

import sys

import typer
from rich.console import Console

from ..errors import ChattuneError

app = typer.Typer(help="Fine-tune chat LLMs end to end: data → tokens with the right loss mask → "
                  "LoRA/QLoRA/full → eval, chat, merge, serve.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Check, preview, convert and synthesise data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


def fail(e: ChattuneError) -> typer.Exit:
    """Print a user error as one clear line and return the Exit to raise. Commands raise it themselves
    (not only `main`) so the exit code is 2 under any runner, typer's CliRunner included."""
    err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(e.exit_code)


# Each module registers its commands on `app` / `data_app`.
from . import config, data, demo, infer, model, serve, synth, train  # noqa: E402,F401


def main() -> None:
    """Console-script entry point: user errors print one clear message and exit with code 2."""
    try:
        app()
    except ChattuneError as e:
        sys.exit(fail(e).exit_code)


if __name__ == "__main__":
    main()

"""What every CLI module shares: the consoles and the one way a user error is printed."""
from __future__ import annotations

import typer
from rich.console import Console

from ..errors import ChattuneError

console = Console()
err_console = Console(stderr=True)


def fail(e: ChattuneError) -> typer.Exit:
    """Print a user error as one clear line and return the Exit to raise. Commands raise it themselves
    (not only `main`) so the exit code is 2 under any runner, typer's CliRunner included."""
    err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(e.exit_code)

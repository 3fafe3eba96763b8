"""CLI command: ui (attached to the root app in cli/__init__.py)."""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer()  # attached to the root app by cli/__init__.py


@app.command()
def ui(
    runs: Path = typer.Option(Path("runs"), "--runs", help="Runs folder: run dirs are listed from it; new runs and "
                              "uploads are written in it."),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Anything but loopback needs --api-key."),
    port: int = typer.Option(7860, help="TCP port (0 = any free port)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CHATTUNE_API_KEY", show_envvar=True,
                                       help="Require 'Authorization: Bearer KEY' on the UI's API."),
    root: list[Path] | None = typer.Option(None, "--root", help="A folder whose data files and models the UI may "
                                           "read (repeatable; default: the current folder)."),
    max_upload_mb: int = typer.Option(200, "--max-upload-mb", min=1, help="Largest upload accepted."),
) -> None:
    """Open the whole road in a browser: data check, training, runs, chat (http://127.0.0.1:7860)."""
    from ..ui import run_ui

    run_ui(runs, host=host, port=port, api_key=api_key, roots=root or None, max_upload_mb=max_upload_mb)

"""CLI command: config, the field reference (attached to the root app in cli/__init__.py)."""
from __future__ import annotations

import typer
from rich.table import Table

from ._common import console

app = typer.Typer()  # attached to the root app by cli/__init__.py


@app.command("config")
def config_cmd(
    yaml: bool = typer.Option(False, "--yaml", help="Print a YAML file of every field at its default, each "
                              "with its description as a comment (a starting point to edit)."),
) -> None:
    """List every config field with its type, default and description (generated from the schema)."""
    from ..config_doc import default_yaml, field_docs

    if yaml:
        typer.echo(default_yaml(), nl=False)
        return
    table = Table(show_lines=False, title="chattune config fields (YAML keys; override as key.sub=value)")
    for col in ("key", "type", "default", "description"):
        table.add_column(col, overflow="fold")
    for d in field_docs():
        table.add_row(d.key, d.type, "(required)" if d.required else repr(d.default), d.description)
    console.print(table)

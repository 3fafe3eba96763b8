"""The `chattune` command. Each subcommand parses its options, calls one library function and prints.

Each module here owns a typer app for its commands and imports nothing from this file; they are attached
once, below. Heavy libraries (torch, transformers) are imported inside the commands so `chattune --help`
stays fast.
"""
from __future__ import annotations

import sys

import typer

from ..errors import ChattuneError
from . import config, data, demo, export, infer, model, serve, synth, train, ui
from ._common import fail

app = typer.Typer(help="Fine-tune chat LLMs end to end: data → tokens with the right loss mask → "
                  "LoRA/QLoRA/full → eval, chat, merge, serve.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
# Top-level commands (no name: the sub-app's commands join `app` itself).
for _module in (train, infer, model, export, serve, demo, config, ui):
    app.add_typer(_module.app)
data.app.add_typer(synth.app)  # `data convert` and `data synth ...`
app.add_typer(data.app, name="data")


def main() -> None:
    """Console-script entry point: user errors print one clear message and exit with code 2."""
    try:
        app()
    except ChattuneError as e:
        sys.exit(fail(e).exit_code)


if __name__ == "__main__":
    main()

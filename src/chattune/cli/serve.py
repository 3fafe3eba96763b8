"""CLI commands: serve (registered on the app in cli/__init__.py)."""
from __future__ import annotations

import typer

from . import app, console, data_app  # noqa: F401


@app.command()
def serve(
    path: str = typer.Argument(..., help="Run dir, merged model dir, HF model folder or alias to serve."),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Anything but loopback needs --api-key."),
    port: int = typer.Option(8000, help="TCP port (0 = any free port)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CHATTUNE_API_KEY", show_envvar=True,
                                       help="Require 'Authorization: Bearer KEY' on /v1/*."),
    max_tokens_cap: int = typer.Option(1024, help="Largest max_tokens a request may ask for (above: 400)."),
    max_queue: int = typer.Option(64, help="Requests that may wait for the model; more get 429."),
    max_batch_size: int = typer.Option(8, help="Queued requests (same settings) answered in one batch."),
    device: str | None = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    dtype: str | None = typer.Option(None, help="float32, bfloat16 or float16 (default: the loader's)."),
) -> None:
    """Serve a model over an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models, GET /health)."""
    from ..config import ServeConfig
    from ..infer.serve import run_server

    cfg = ServeConfig(host=host, port=port, api_key=api_key, max_tokens_cap=max_tokens_cap, max_queue=max_queue,
                      max_batch_size=max_batch_size)
    console.print(f"loading {path} … then serving OpenAI base_url http://{host}:{port}/v1", highlight=False)
    run_server(path, cfg, device=device, dtype=dtype)

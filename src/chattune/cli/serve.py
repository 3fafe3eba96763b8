"""CLI commands: serve (attached to the root app in cli/__init__.py)."""
from __future__ import annotations

import typer

from .. import defaults as _D  # the help shows ServeConfig's defaults; options left out keep them
from ._common import console

app = typer.Typer()  # attached to the root app by cli/__init__.py


@app.command()
def serve(
    paths: list[str] = typer.Argument(..., help="Run dir(s), merged model dir, HF model folder or alias to serve; "
                                      "each is one model, named after its folder (the request's 'model' picks it)."),
    engine: str = typer.Option("hf", help="hf (transformers here, continuous batching), vllm (a managed vLLM "
                               "server) or llamacpp (the runs' GGUF exports)."),
    host: str | None = typer.Option(None, help=f"Address to bind (default {_D.SERVE_HOST}). Anything but loopback "
                                    "needs --api-key."),
    port: int | None = typer.Option(None, help=f"TCP port (default {_D.SERVE_PORT}; 0 = any free port)."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CHATTUNE_API_KEY", show_envvar=True,
                                       help="Require 'Authorization: Bearer KEY' on /v1/*."),
    max_tokens_cap: int | None = typer.Option(None, help="Largest max_tokens a request may ask for; above it: "
                                              f"400 (default {_D.SERVE_MAX_TOKENS_CAP})."),
    max_queue: int | None = typer.Option(None, help="Requests that may wait for the model; more get 429 "
                                         f"(default {_D.SERVE_MAX_QUEUE})."),
    max_batch_size: int | None = typer.Option(None, help="Most requests generating together in one batch "
                                              f"(default {_D.SERVE_MAX_BATCH_SIZE})."),
    prefill_tokens: int | None = typer.Option(None, help="hf engine: prompt tokens prefilled per step; larger "
                                              "answers a burst sooner, smaller pauses running streams less "
                                              f"(default {_D.SERVE_PREFILL_TOKENS})."),
    device: str | None = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    dtype: str | None = typer.Option(None, help="float32, bfloat16 or float16 (default: the loader's)."),
) -> None:
    """Serve one or several runs over an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models,
    GET /health)."""
    from ..config import config_from_dict
    from ..infer.serve import run_server

    given = {"host": host, "port": port, "api_key": api_key, "max_tokens_cap": max_tokens_cap,
             "max_queue": max_queue, "max_batch_size": max_batch_size, "prefill_tokens": prefill_tokens}
    # ServeConfig holds the defaults and the checks (a bad value is a ConfigError naming serve.<key>).
    cfg = config_from_dict({"serve": {k: v for k, v in given.items() if v is not None}}, "command line").serve
    console.print(f"loading {', '.join(paths)} … then serving OpenAI base_url http://{cfg.host}:{cfg.port}/v1",
                  highlight=False)
    run_server(paths, cfg, engine=engine, device=device, dtype=dtype)

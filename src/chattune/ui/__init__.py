"""``chattune ui``: the whole road (data → train → runs → chat) in a browser, on the product's own functions.

Why FastAPI + one static page and not Gradio (the convention of LLaMA-Factory, Axolotl and ms-swift):

* **Install size.** fastapi and uvicorn are already chattune dependencies (``serve``); Gradio would add
  ~100 MB of packages (its own pinned FastAPI, pandas, pillow, huggingface_hub, a bundled Svelte front end)
  to every install, for one page.
* **Offline.** The page here is one HTML file and one JS file with no CDN, font or analytics request;
  Gradio's front end fetches fonts and, with ``share``, a tunnel binary, and checks for updates.
* **Testability.** Every button is an ``/api/*`` call that returns the library's result as JSON, so the
  API is tested with FastAPI's TestClient without a browser, and Playwright drives plain HTML whose
  elements have stable ids (Gradio's generated DOM changes between versions).
* **Simplicity.** No build step, no component framework: live views are server-sent events (training
  progress read from the run dir, token streaming from `Generator.stream`), plots are inline SVG.

The UI holds no product logic: each endpoint calls what the CLI command calls (`data.check.check_data`,
`data.preview.preview`, `config.load_config`, `model.doctor.plan_for` (the run plan and its memory estimate),
``chattune train`` as a subprocess, the `rundir` readers, `Generator.stream`), so what it shows is what the CLI
would print.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DEFAULT_PORT = 7860


def run_ui(runs: str | Path = "runs", *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_key: str | None = None,
           roots: Sequence[str | Path] | None = None, max_upload_mb: int = 200) -> None:
    """Serve the UI until interrupted.

    Args:
        runs: the runs folder (created if missing): run dirs are listed from it, new runs and uploads go in it.
        host, port: where to listen; any address but loopback needs `api_key` (as ``chattune serve``).
        api_key: required as ``Authorization: Bearer KEY`` on the API (default: $CHATTUNE_API_KEY).
        roots: further folders whose data files and models the UI may read (default: the current folder).
        max_upload_mb: largest upload accepted.

    Raises:
        ConfigError: a non-loopback host without a key, or the port cannot be bound.
    """
    import uvicorn

    from ..config import ServeConfig
    from ..infer.serve_bind import bind_socket, check_bind
    from .app import UiSettings, create_app
    from .paths import Roots

    bind = check_bind(ServeConfig(host=host, port=port, api_key=api_key))  # the same rule as `chattune serve`
    runs = Path(runs).expanduser().resolve()
    runs.mkdir(parents=True, exist_ok=True)
    extra = tuple(Path(r).expanduser().resolve() for r in (roots if roots is not None else [Path.cwd()]))
    settings = UiSettings(roots=Roots(runs=runs, extra=extra), api_key=bind.api_key,
                          max_upload_bytes=max_upload_mb * 2**20)
    sock = bind_socket(host, port)
    try:
        h, p = sock.getsockname()[:2]
        print(f"chattune ui on http://{h}:{p}/  (runs: {runs}; readable: {', '.join(map(str, extra))})", flush=True)
        uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning",
                                      timeout_graceful_shutdown=3)).run(sockets=[sock])
    finally:
        sock.close()

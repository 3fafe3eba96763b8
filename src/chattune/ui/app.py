"""The UI's HTTP API and the one static page. Every handler calls the library function the CLI command calls
(`check_data`, `preview`, `load_config`, `plan_for`, ``chattune train``, `Generator.stream`) and
returns its result as JSON; live views (training progress, chat) are server-sent events.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ..errors import ChattuneError
from .chat import Models, stream_reply
from .config_form import check_config, form_fields
from .data_view import check_file
from .jobs import Jobs
from .paths import PathError, Roots, save_upload
from .runs import find_run_dirs, list_runs, run_detail, run_summary

POLL_S = 1.0


@dataclass(frozen=True)
class UiSettings:
    """What `create_app` needs: where runs live, which folders may be read, the key, the upload cap."""

    roots: Roots
    api_key: str | None = None
    max_upload_bytes: int = 200 * 2**20


class UserError(Exception):
    """A 400 answer: the message (the library's own wording) and the form field it belongs to."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(settings: UiSettings) -> FastAPI:
    """The FastAPI app: ``/`` serves the page, ``/api/*`` the data, training, runs and chat endpoints."""
    roots, key = settings.roots, settings.api_key
    jobs, models = Jobs(roots), Models()
    cancels: dict[str, threading.Event] = {}
    app = FastAPI(title="chattune ui", docs_url=None, redoc_url=None, openapi_url=None)
    static = resources.files("chattune.ui") / "static"

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if key and request.url.path.startswith("/api/") and request.url.path != "/api/info":
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                return JSONResponse({"error": "this UI needs its API key (Authorization: Bearer KEY)"}, 401)
        return await call_next(request)

    @app.exception_handler(UserError)
    async def _user(_req, e: UserError):
        return JSONResponse({"error": str(e), "field": e.field}, 400)

    @app.exception_handler(ChattuneError)
    async def _chattune(_req, e: ChattuneError):
        return JSONResponse({"error": str(e), "field": ""}, 400)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return (static / "index.html").read_text(encoding="utf-8")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/app.js")
    def script() -> Response:
        return Response((static / "app.js").read_text(encoding="utf-8"), media_type="text/javascript")

    @app.get("/api/info")
    def info() -> dict:
        return {"runs": str(roots.runs), "roots": [str(r) for r in roots.all], "auth": bool(key),
                "max_upload_mb": settings.max_upload_bytes // 2**20}

    # --- data ------------------------------------------------------------------------------------------
    @app.get("/api/files")
    def files() -> dict:
        return {"files": roots.data_files()}

    @app.post("/api/upload")
    async def upload(request: Request, name: str) -> dict:
        try:
            path = await save_upload(roots, name, request.stream(), settings.max_upload_bytes)
        except PathError as e:
            raise UserError(str(e), "path") from None
        return {"path": roots.display(path)}

    @app.post("/api/data/check")
    def data_check(body: dict) -> dict:
        return check_file(roots, body, UserError)

    # --- config and training ---------------------------------------------------------------------------
    @app.get("/api/config/schema")
    def schema() -> dict:
        from ..config_doc import section_docs

        return {"fields": form_fields(), "sections": dict(section_docs())}

    @app.post("/api/config/check")
    def config_check(body: dict) -> dict:
        return check_config(roots, body.get("yaml"), body.get("values") or {}).as_json()

    @app.post("/api/train/start")
    def train_start(body: dict) -> JSONResponse:
        res = check_config(roots, body.get("yaml"), body.get("values") or {}, estimate=False)
        if res.config is None:  # nothing starts on a bad config
            return JSONResponse(res.as_json(), 400)
        job = jobs.start(Path(res.config.output_dir), res.config.to_yaml())
        return JSONResponse({**res.as_json(), "run": job.name})

    def run_path(name: str) -> Path:
        p = (roots.runs / name).resolve()
        if p not in find_run_dirs(roots, jobs):
            raise UserError(f"no run {name!r} under {roots.runs}", "run")
        return p

    @app.post("/api/runs/{name:path}/stop")
    def stop(name: str) -> dict:
        jobs.stop(roots.display(run_path(name)))
        return {"stopping": name}

    @app.post("/api/runs/{name:path}/resume")
    def resume(name: str) -> dict:
        p = run_path(name)
        if not run_summary(roots, jobs, p)["resumable"]:
            raise UserError(f"{name}: no complete checkpoint to resume from (or training already finished)", "run")
        return {"run": jobs.start(p, None, resume=True).name}

    @app.get("/api/runs")
    def runs() -> dict:
        return {"runs": list_runs(roots, jobs)}

    @app.get("/api/runs/{name:path}/events")
    async def run_events(name: str, request: Request) -> StreamingResponse:
        p = run_path(name)

        async def events():
            last = None
            while not await request.is_disconnected():
                detail = await asyncio.to_thread(run_detail, roots, jobs, p)
                view = {k: detail[k] for k in ("status", "step", "max_steps", "loss", "metrics", "log", "resumable")}
                if view != last:
                    yield _sse(view)
                    last = view
                if detail["status"] != "running":
                    yield _sse({"end": True, "status": detail["status"]})
                    return
                await asyncio.sleep(POLL_S)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/api/runs/{name:path}")
    def run(name: str) -> dict:
        return run_detail(roots, jobs, run_path(name))

    # --- chat ------------------------------------------------------------------------------------------
    @app.post("/api/chat")
    async def chat(body: dict, request: Request) -> StreamingResponse:
        p = run_path(str(body.get("run") or ""))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError("send at least one message", "message")
        run_model = await asyncio.to_thread(models.get, str(p))
        # the run's own system prompt when the user gives none, for both sides of compare mode (same prompt)
        messages = run_model.generator.with_system(messages)
        model = await asyncio.to_thread(models.get, str(p), base=True) if body.get("base") else run_model
        cid = str(body.get("id") or uuid.uuid4())
        cancel = cancels.setdefault(cid, threading.Event())
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        kw = {"thinking": body.get("thinking"), "max_new_tokens": int(body.get("max_new_tokens") or 256),
              "temperature": float(body.get("temperature") or 0.0), "cancel": cancel}

        def work():  # the whole stream in one thread: the model lock is always released, even on disconnect
            try:
                for ev in stream_reply(model, messages, **kw):
                    loop.call_soon_threadsafe(queue.put_nowait, ev)
            except ChattuneError as e:
                loop.call_soon_threadsafe(queue.put_nowait, {"error": str(e)})
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        async def events():
            yield _sse({"id": cid, "model": model.generator.name, "thinking_supported": model.thinking_supported,
                        "system": run_model.generator.system})
            threading.Thread(target=work, daemon=True, name=f"chat-{cid}").start()
            try:
                while (ev := await queue.get()) is not None:
                    yield _sse(ev)
            finally:
                cancel.set()
                cancels.pop(cid, None)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/api/chat/stop")
    def chat_stop(body: dict) -> dict:
        ev = cancels.get(str(body.get("id")))
        if ev is not None:
            ev.set()
        return {"stopped": ev is not None}

    return app

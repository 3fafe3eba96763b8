"""Which engine `chattune serve` runs: one place that maps ``--engine`` to an `Engine`.

The engines live in their own modules and are imported only when chosen (vLLM and llama.cpp bring
heavy optional dependencies; the hf engine brings none beyond the toolkit's own).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import ServeConfig
    from .engine import Engine

ENGINES = ("hf", "vllm", "llamacpp")


def build_engine(kind: str, paths: list[str], serve_cfg: ServeConfig, device: str | None = None,
                 dtype: str | None = None) -> Engine:
    """Load `paths` into the engine `kind`.

    Args:
        kind: "hf" (transformers in this process, continuous batching), "vllm" (a managed vLLM server) or
            "llamacpp" (the runs' GGUF exports through llama.cpp).
        paths: run dirs (or model folders / aliases), one served model each, named after the folder.
        serve_cfg: the server's limits (max_queue, max_batch_size, max_tokens_cap).
        device, dtype: where and how to load the weights (engines that choose their own ignore what they
            cannot honour and say so).

    Returns:
        An engine, not started yet (`create_app` starts it with the app).

    Raises:
        ConfigError: an unknown kind, no paths, or an engine that is not available here (says how to get it).
    """
    if not paths:
        raise ConfigError("nothing to serve: give at least one run dir")
    if kind == "hf":
        from .engine_hf import HfEngine

        return HfEngine.from_paths(paths, serve_cfg, device=device, dtype=dtype)
    if kind == "vllm":
        try:
            from .engine_vllm import VLLMEngine
        except ImportError as e:
            raise ConfigError(f"--engine vllm is not available in this installation ({e})") from None
        return VLLMEngine.from_paths(paths, serve_cfg, device=device, dtype=dtype)
    if kind == "llamacpp":
        try:
            from .engine_llamacpp import LlamaCppEngine
        except ImportError as e:
            raise ConfigError(f"--engine llamacpp is not available in this installation ({e})") from None
        return LlamaCppEngine.from_paths(paths, serve_cfg, device=device, dtype=dtype)
    raise ConfigError(f"unknown engine {kind!r}; expected one of {', '.join(ENGINES)}")

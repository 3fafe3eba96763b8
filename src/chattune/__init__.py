"""chattune: fine-tune chat LLMs end to end, provably right.

The public API is imported lazily so `import chattune` and `chattune --help` stay fast.
"""
from __future__ import annotations

import logging

# bitsandbytes (imported by peft whenever it is installed) warns at import, on CPUs with AVX512-BF16,
# that an optional fused kernel (the `kernels` package) is missing. That kernel serves only the packed
# CPU inference path that chattune.model.quant.pin_compute_path turns off, so the warning is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

_API = {
    "load_config": ("chattune.config", "load_config"),
    "Config": ("chattune.config", "Config"),
    "read_conversations": ("chattune.data.formats", "read_conversations"),
    "build_datasets": ("chattune.data.dataset", "build_datasets"),
    "render_conversation": ("chattune.data.render", "render_conversation"),
    "train": ("chattune.train.trainer", "train"),
    "evaluate": ("chattune.infer.evaluate", "evaluate"),
    "merge": ("chattune.infer.merge", "merge"),
    "Generator": ("chattune.infer.generate", "Generator"),
}


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'chattune' has no attribute {name!r}")


__all__ = ["__version__", *_API]

"""Where llama.cpp lives for export: the Python binding and the converter scripts of ONE pinned release.

llama-cpp-python's sdist vendors the llama.cpp source tree it binds to, so one pinned version gives both
the runtime (the binding, built by `make setup`) and the matching `convert_hf_to_gguf.py`,
`convert_lora_to_gguf.py` and `gguf-py` (extracted by `scripts/setup_llamacpp.py` into the cache).
Using the converter of the same tree as the runtime matters: a GGUF written by a newer converter can name
tokenizer pre-processors or tensors an older runtime does not know, and the other way round.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..errors import ChattuneError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SETUP_HINT = "run `make setup` (its step `python scripts/setup_llamacpp.py` builds and installs it)"
# Only what conversion needs from the vendored tree (the rest is C++ sources, tests and docs).
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py")


class LlamaCppMissing(ChattuneError):
    """The pinned llama.cpp build (binding or converter) is not installed."""


def converter_dir() -> Path:
    """Folder holding the pinned release's converter scripts and its gguf-py."""
    from ..model.load import cache_root

    return cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def require_converter(script: str = "convert_hf_to_gguf.py") -> Path:
    """Path of a converter script of the pinned release.

    Raises:
        LlamaCppMissing: it has not been extracted (says which setup step does it).
    """
    d = converter_dir()
    missing = [p for p in CONVERTER_PARTS if not (d / p).exists()]
    if missing:
        raise LlamaCppMissing(f"llama.cpp converter {LLAMA_CPP_PYTHON_VERSION} not found in {d} (missing "
                              f"{', '.join(missing)}): {SETUP_HINT}")
    return d / script


def require_binding():
    """The imported `llama_cpp` module of the pinned version.

    Raises:
        LlamaCppMissing: llama-cpp-python is not installed, or another version is.
    """
    try:
        import llama_cpp
    except ImportError as e:
        raise LlamaCppMissing(f"llama-cpp-python is not installed ({e}): {SETUP_HINT}") from None
    if llama_cpp.__version__ != LLAMA_CPP_PYTHON_VERSION:
        raise LlamaCppMissing(f"llama-cpp-python {llama_cpp.__version__} is installed, export needs "
                              f"{LLAMA_CPP_PYTHON_VERSION} (its converter and runtime must match): {SETUP_HINT}")
    return llama_cpp


def run_converter(script: str, args: list[str], *, what: str) -> str:
    """Run a converter script of the pinned release with this Python; return its log.

    The scripts put their own gguf-py first on sys.path, so the installed `gguf` package (used elsewhere
    to read GGUF headers) cannot shadow the one they were written for.

    Raises:
        ChattuneError: the converter failed; the message carries the tail of its log.
    """
    path = require_converter(script)
    env = {**os.environ, "NO_LOCAL_GGUF": ""}
    env.pop("NO_LOCAL_GGUF")
    proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, env=env,
                          cwd=path.parent)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(log.strip().splitlines()[-12:])
        hint = ""
        if "not supported" in log or "NotImplementedError" in log:
            hint = (f" llama.cpp {LLAMA_CPP_PYTHON_VERSION} cannot convert this architecture; export --to vllm "
                    "works for any architecture vLLM supports.")
        raise ChattuneError(f"{what} failed (llama.cpp {script}, exit {proc.returncode}).{hint}\n{tail}")
    return log

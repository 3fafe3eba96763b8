"""The benches' ``--smoke`` mode: the same code path on a tiny random model, in seconds, so that
tests/test_bench.py can run every bench in CI and a bench can never rot unnoticed.

The tiny model is the one the tests use (``tests.conftest.build_tiny_qwen3``: 2 layers, the real Qwen3
tokenizer), built once per process into a temp folder, or taken from ``$CHATTUNE_SMOKE_MODEL`` (the test
passes the one it already built).
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = "CHATTUNE_SMOKE_MODEL"


def tiny_model_dir() -> Path:
    """A tiny random Qwen3 model folder (safetensors + the real Qwen3 tokenizer)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    sys.path.insert(0, str(ROOT))
    from tests.conftest import build_tiny_qwen3, real_tokenizer_dir  # one builder for tests and benches

    out = Path(tempfile.mkdtemp(prefix="chattune-smoke-model-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    build_tiny_qwen3(out, real_tokenizer_dir("qwen3"))
    os.environ[ENV] = str(out)  # subprocesses of the bench reuse it
    return out

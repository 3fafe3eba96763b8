"""Every bench/*.py runs in its --smoke mode (tiny random model, seconds): a bench that breaks fails CI
instead of rotting until someone cites its numbers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assets_dir

BENCH = Path(__file__).resolve().parents[1] / "bench"
# what each bench's table must show (a row per recipe/variant/phase it measures)
EXPECT = {
    "train_throughput.py": ["chattune ", "trl ", "tutorial "],
    "demo_recipe.py": ["demo "],
    "preprocess.py": ["chattune build_datasets, cold", "tutorial: per-example"],
    "serve_load.py": ["single |", "stream |", "batch |"],
    "gpu_throughput.py": ["hf-pad ", "packed "],
    "cpu_memory.py": ["qlora ", "lora "],
    "decode_step.py": ["greedy     |", "greedy+rp  |"],
}


def test_every_bench_is_listed_here():
    assert sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")) == sorted(EXPECT)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECT))
def test_bench_smoke(name, tiny_qwen3_dir, tmp_path):
    # a private cache (no stale datasets); the fetched assets (tokenizers) stay where make setup put them
    env = {**os.environ, "CHATTUNE_SMOKE_MODEL": str(tiny_qwen3_dir), "CHATTUNE_CACHE": str(tmp_path / "cache"),
           "CHATTUNE_ASSETS": str(assets_dir())}
    p = subprocess.run([sys.executable, str(BENCH / name), "--smoke"], capture_output=True, text=True, timeout=600,
                       env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    for row in EXPECT[name]:
        assert row in p.stdout, (row, p.stdout[-3000:])

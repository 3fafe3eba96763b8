"""The run dirs `make_run` builds for the export and serving tests are a function of their seed: tests that
compare answers (batched against alone, one engine against another) must see the same weights every session."""
from __future__ import annotations

from safetensors.torch import load_file

from tests.export.conftest import make_run


def test_make_run_builds_the_same_adapter_from_the_same_seed(tmp_path, tiny_qwen3_dir):
    runs = [make_run(tmp_path / name, tiny_qwen3_dir, seed=seed) for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    weights = [load_file(r / "adapter_model.safetensors") for r in runs]
    assert weights[0].keys() == weights[1].keys() == weights[2].keys()
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    assert not all(weights[0][k].equal(weights[2][k]) for k in weights[0])

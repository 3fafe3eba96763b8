"""Errors that need no model come before any heavy work: missing data files, qlora without a usable
bitsandbytes, a model source that cannot be reached. `train` must fail on them before it resolves,
converts or loads anything (each case patches the first heavy call to fail the test if reached)."""
from __future__ import annotations

import pytest

from chattune.config import config_from_dict
from chattune.errors import ChattuneError, DataError, ModelError


@pytest.fixture
def no_heavy_work(monkeypatch):
    import chattune.model.load as load

    def heavy(*a, **k):
        raise AssertionError("heavy work started before the cheap checks")

    for name in ("resolve_source", "load_tokenizer", "load_model"):
        monkeypatch.setattr(load, name, heavy)


def _cfg(tmp_path, model="nobody/does-not-exist", method="lora", data=None):
    if data is None:
        data = tmp_path / "train.jsonl"
        data.write_text('{"prompt": "a", "completion": "b"}\n', encoding="utf-8")
    return config_from_dict({"model": {"name_or_path": str(model)}, "data": {"train": str(data)},
                             "method": {"type": method}, "output_dir": str(tmp_path / "run")})


def _train_fails_fast(cfg, match, kind=ChattuneError):
    from chattune.train.trainer import train

    with pytest.raises(kind, match=match):
        train(cfg)


def test_missing_data_file_is_reported_before_the_model_is_touched(tmp_path, no_heavy_work, tiny_qwen3_dir):
    _train_fails_fast(_cfg(tmp_path, tiny_qwen3_dir, data=tmp_path / "nope.jsonl"), r"nope\.jsonl.*not found", DataError)


def test_qlora_without_bitsandbytes_is_reported_before_loading(tmp_path, no_heavy_work, tiny_qwen3_dir, monkeypatch):
    import chattune.model.quant as quant

    monkeypatch.setattr(quant, "bitsandbytes_version", lambda: None)
    _train_fails_fast(_cfg(tmp_path, tiny_qwen3_dir, method="qlora"), "qlora needs bitsandbytes.*pip install")


def test_uncached_hub_id_offline_is_said_at_once(tmp_path, no_heavy_work, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _train_fails_fast(_cfg(tmp_path), "nobody/does-not-exist.*not in the local Hugging Face cache.*HF_HUB_OFFLINE",
                      ModelError)


def test_unreachable_hub_is_said_at_once(tmp_path, no_heavy_work, monkeypatch):
    import huggingface_hub.constants

    import chattune.preflight as preflight

    def unreachable(repo_id, timeout):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(preflight, "_hub_model_info", unreachable)
    _train_fails_fast(_cfg(tmp_path), "cannot reach the Hugging Face Hub.*Name or service not known", ModelError)


def test_a_missing_local_folder_is_not_taken_for_a_hub_id(tmp_path, no_heavy_work):
    _train_fails_fast(_cfg(tmp_path, tmp_path / "models" / "mine"), "no such folder", ModelError)

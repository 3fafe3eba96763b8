"""QLoRA training on CPU on the tiny random Qwen3: the 4-bit road trains, checkpoints and resumes bit-identically."""
from __future__ import annotations

import pytest
import torch
from tests.train.test_trainer import _CrashAfterSave, adapter, metrics, tiny_cfg


def qlora_cfg(tmp_path, model_dir, run: str, **train):
    """tiny_cfg with method.type qlora (LoRA r8 on the NF4 base)."""
    cfg = tiny_cfg(tmp_path, model_dir, run, **train)
    return cfg.model_copy(update={"method": cfg.method.model_copy(update={"type": "qlora"})})


def test_qlora_trains_and_resumes_bit_identically(tmp_path, tiny_qwen3_dir):
    """6 QLoRA steps straight == crash after checkpoint-4 (mid-epoch 2), resume to 6: same adapter bits and
    losses (the base is quantised again on resume; NF4 quantisation is deterministic)."""
    from chattune.train.trainer import train

    case = dict(max_steps=6, save_steps=4, lora_dropout=0.1)
    whole = train(qlora_cfg(tmp_path, tiny_qwen3_dir, "whole", **case))
    assert whole.steps == 6
    losses = [r["loss"] for r in metrics(tmp_path / "whole")]
    assert losses[-1] < 0.7 * losses[0], losses  # the adapter learns on the 4-bit base

    cfg = qlora_cfg(tmp_path, tiny_qwen3_dir, "crashy", **case)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[_CrashAfterSave(4)])
    resumed = train(cfg, resume=True)
    assert resumed.resumed_from == "checkpoint-4" and resumed.steps == 6
    assert [(r["step"], r["loss"]) for r in metrics(tmp_path / "crashy")] == \
        [(r["step"], r["loss"]) for r in metrics(tmp_path / "whole")]
    a, b = adapter(tmp_path / "whole"), adapter(tmp_path / "crashy")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k

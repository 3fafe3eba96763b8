"""QLoRA training on CPU on the tiny random Qwen3: the 4-bit road trains, checkpoints and resumes bit-identically."""
from __future__ import annotations

import pytest
import torch
from tests.train.test_trainer import _CrashAfterSave, adapter, metrics, tiny_cfg


# lora dropout on: the RNG state must resume too; checkpoint-4 is mid-epoch 2 (12 examples, batch 4)
QLORA_CASE = dict(max_steps=6, save_steps=4, lora_dropout=0.1)


def qlora_cfg(tmp_path, model_dir, run: str, **train):
    """tiny_cfg with method.type qlora (LoRA r8 on the NF4 base)."""
    cfg = tiny_cfg(tmp_path, model_dir, run, **train)
    return cfg.model_copy(update={"method": cfg.method.model_copy(update={"type": "qlora"})})


def test_qlora_trains_and_resumes_bit_identically(tmp_path, tiny_qwen3_dir, tiny_qlora_run):
    """6 QLoRA steps straight (the session's tiny_qlora_run) == crash after checkpoint-4 (mid-epoch 2), resume
    to 6: same adapter bits and losses (the base is quantised again on resume; NF4 quantisation is deterministic)."""
    from chattune.train.trainer import train

    whole = tiny_qlora_run
    losses = [r["loss"] for r in metrics(whole)]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses  # the adapter learns on the 4-bit base

    cfg = qlora_cfg(tmp_path, tiny_qwen3_dir, "crashy", **QLORA_CASE)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[_CrashAfterSave(4)])
    resumed = train(cfg, resume=True)
    assert resumed.resumed_from == "checkpoint-4" and resumed.steps == 6
    assert [(r["step"], r["loss"]) for r in metrics(tmp_path / "crashy")] == [(r["step"], r["loss"]) for r in metrics(whole)]
    a, b = adapter(whole), adapter(tmp_path / "crashy")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k

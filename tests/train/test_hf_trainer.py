"""The Trainer's two exactness overrides: the epoch-seeded length-grouped order, the per-token eval loss."""
from __future__ import annotations

import pytest
import torch

from chattune.train.hf_trainer import EpochSeededLengthSampler


def test_length_grouped_order_is_a_function_of_seed_and_epoch_only():
    """Epoch e's order does not depend on the global RNG (which a mid-epoch resume restores only after
    skipping batches), differs between epochs, is a permutation, and keeps batches length-grouped."""
    lengths = [5, 50, 7, 48, 9, 46, 11, 44, 13, 42, 15, 40, 17, 38, 19, 36] * 4
    s = EpochSeededLengthSampler(4, lengths=lengths, seed=3)
    orders = {}
    for epoch in (0, 1, 2):
        s.set_epoch(epoch)
        torch.manual_seed(epoch * 100)  # scramble the global RNG: must not matter
        first = list(s)
        torch.manual_seed(12345)
        assert list(s) == first
        assert sorted(first) == list(range(len(lengths)))
        orders[epoch] = first
    assert len({tuple(o) for o in orders.values()}) == 3
    # grouped: the spread of lengths inside a batch of 4 is far below the random expectation
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b)
                 for b in (orders[1][k:k + 4] for k in range(0, len(lengths), 4)))
    assert spread < 0.5 * 16 * (50 - 5)


def test_eval_loss_is_the_per_token_mean_like_training_and_chattune_eval(tmp_path, tiny_qwen3_dir, monkeypatch):
    """On the same 12 examples: the step-1 training loss (one step = all 12, per-token mean),
    eval_loss at step 1 (three eval batches of unequal token counts) and `chattune eval --metrics loss`
    agree. lr 1e-9: the one update between them changes the loss by far less than the tolerance."""
    from chattune.infer.evaluate import evaluate
    from chattune.train.trainer import train

    from .test_trainer import metrics, tiny_cfg

    cfg = tiny_cfg(tmp_path, tiny_qwen3_dir, "run", max_steps=1, lr=1e-9, batch_size=4, grad_accum=3,
                   eval_steps=1, save_steps=1)
    cfg.data.eval = list(cfg.data.train)
    train(cfg)
    run = tmp_path / "run"
    train_loss = metrics(run)[0]["loss"]
    eval_loss = metrics(run, "eval")[0]["eval_loss"]
    cli_loss = evaluate(run, tmp_path / "facts.jsonl", metrics=["loss"], max_new_tokens=1, batch_size=4)["metrics"]["loss"]
    assert abs(eval_loss - train_loss) < 1e-5 * train_loss, (train_loss, eval_loss)
    assert abs(cli_loss - train_loss) < 1e-5 * train_loss, (train_loss, cli_loss)


def test_a_non_finite_loss_stops_the_run_naming_step_rows_and_last_checkpoint(tmp_path, tiny_qwen3_dir):
    """SGD at lr 1e30 without clipping really diverges: the run stops at the first step whose loss is
    NaN/inf, naming the step, the batch's source rows (file:line), the last checkpoint saved before it,
    and what clipping and loss scaling did."""
    import re

    from chattune.errors import ChattuneError
    from chattune.train.trainer import train

    from .test_trainer import tiny_cfg

    cfg = tiny_cfg(tmp_path, tiny_qwen3_dir, "run", optim="sgd", lr=1e30, max_grad_norm=0.0, save_steps=1,
                   max_steps=6, group_by_length=False)
    with pytest.raises(ChattuneError) as err:
        train(cfg)
    msg = str(err.value)
    m = re.search(r"loss is (nan|inf|-inf) at step (\d+)", msg)
    assert m, msg
    step = int(m.group(2))
    assert 1 < step <= 6
    rows = re.findall(r"facts\.jsonl:(\d+)", msg)
    assert len(rows) == 4 and all(1 <= int(r) <= 12 for r in rows), msg  # batch 4: its four source lines
    assert f"Last checkpoint before it: checkpoint-{step - 1}" in msg, msg
    assert "train.max_grad_norm=0.0 (clipping off)" in msg and "loss scaling: off" in msg, msg
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()  # nothing final written from NaN weights

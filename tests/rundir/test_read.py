"""Reading a run dir back while training writes it: metrics.jsonl split by kind, a half-written line skipped."""
from __future__ import annotations

import json

from chattune.rundir.checkpoints import checkpoint_max_steps
from chattune.rundir.read import read_metrics, read_plan


def test_read_metrics_splits_kinds_and_skips_a_line_cut_mid_write(tmp_path):
    recs = [{"kind": "train", "step": 1, "loss": 2.5}, {"kind": "eval", "step": 1, "eval_loss": 2.75},
            {"kind": "train", "step": 2, "loss": 2.0, "lr": 1e-4}, {"kind": "summary", "step": 2, "train_loss": 2.2}]
    text = "".join(json.dumps(r) + "\n" for r in recs) + '{"kind": "train", "step": 3, "lo'
    (tmp_path / "metrics.jsonl").write_text(text, encoding="utf-8")
    m = read_metrics(tmp_path)
    assert m.train == [(1, 2.5), (2, 2.0)] and m.eval == [(1, 2.75)]
    assert m.last == recs[2] and m.summary == recs[3]
    assert read_metrics(tmp_path / "missing").train == []


def test_checkpoint_max_steps(tmp_path):
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text('{"global_step": 4, "max_steps": 30}', encoding="utf-8")
    assert checkpoint_max_steps(ckpt) == 30
    (ckpt / "trainer_state.json").write_text('{"global_step": 4', encoding="utf-8")  # cut mid-write
    assert checkpoint_max_steps(ckpt) is None


def test_read_plan(tmp_path):
    assert read_plan(tmp_path) is None
    (tmp_path / "plan.json").write_text('{"device": "cpu", "reasons": {"device": "no GPU"}}', encoding="utf-8")
    assert read_plan(tmp_path) == {"device": "cpu", "reasons": {"device": "no GPU"}}
    (tmp_path / "plan.json").write_text('{"device": "cp', encoding="utf-8")  # cut mid-write
    assert read_plan(tmp_path) is None

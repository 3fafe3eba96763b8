"""Reading a run dir back while training writes it: metrics.jsonl split by kind, a half-written line skipped."""
from __future__ import annotations

import json

from chattune.config import load_config
from chattune.rundir.checkpoints import checkpoint_max_steps
from chattune.rundir.read import read_metrics, read_plan, read_run
from chattune.rundir.write import write_manifest


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


def test_relative_data_paths_work_from_any_folder(tmp_path, monkeypatch):
    """Issue 14 item 9: trained with `data.train: train.jsonl` (relative to where `train` ran), then
    `chattune merge` from another folder found no data and verified on generic prompts. Paths are made
    absolute at load, so the run dir's chattune.yaml names the real files."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    (project / "held.jsonl").write_text(json.dumps({"instruction": "c", "output": "d"}) + "\n")
    (project / "cfg.yaml").write_text("data:\n  train: train.jsonl\n  eval: [held.jsonl]\n")
    monkeypatch.chdir(project)
    cfg = load_config("cfg.yaml", ["data.train=train.jsonl"])  # an override is relative to the cwd
    write_manifest(tmp_path / "run", cfg, {})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_cfg = read_run_config(tmp_path / "run")
    assert [s.path for s in run_cfg.data.train] == [str(project / "train.jsonl")]
    assert [s.path for s in run_cfg.data.eval] == [str(project / "held.jsonl")]
    # beside the YAML when the cwd does not have it
    assert load_config(project / "cfg.yaml").data.train[0].path == str(project / "train.jsonl")


def read_run_config(run):
    (run / "adapter_model.safetensors").write_bytes(b"")  # read_run wants weights; their content is not read
    return read_run(run).config

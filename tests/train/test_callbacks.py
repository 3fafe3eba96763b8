"""Trackers log inside the run dir, offline: TensorBoard event files and a SwanLab offline run both hold
the training loss that metrics.jsonl records; W&B is wired offline."""
from __future__ import annotations

import json

from tests.train.test_trainer import metrics, tiny_cfg


def _swanlab_scalars(run_file) -> dict[str, list[tuple[int, float]]]:
    """Scalars from a swanlab 0.10 offline run file (the records `swanlab sync` uploads)."""
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    reader = DataStoreReader()
    reader.open(str(run_file))
    out: dict[str, list] = {}
    try:
        for raw in reader:
            rec = Record()
            rec.ParseFromString(raw)
            if rec.HasField("scalar"):
                out.setdefault(rec.scalar.key, []).append((rec.scalar.step, rec.scalar.value.number))
    finally:
        reader.close()
    return out


def test_tensorboard_and_swanlab_offline_hold_the_train_loss(tmp_path, tiny_qwen3_dir, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from chattune.train.trainer import train

    monkeypatch.delenv("SWANLAB_MODE", raising=False)  # chattune's default: offline, no login
    cfg = tiny_cfg(tmp_path, tiny_qwen3_dir, "tracked", max_steps=2, save_steps=100,
                   report_to=["tensorboard", "swanlab"])
    train(cfg)
    run = tmp_path / "tracked"
    losses = [(r["step"], r["loss"]) for r in metrics(run)]
    assert len(losses) == 2

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    tb = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in tb] == [1, 2]
    assert all(abs(v - ref) < 1e-5 for (_, v), (_, ref) in zip(tb, losses))

    run_files = list((run / "swanlog").glob("run-*/run-*.swanlab"))
    assert len(run_files) == 1, list((run / "swanlog").rglob("*"))
    sw = _swanlab_scalars(run_files[0])
    assert [s for s, _ in sw["train/loss"]] == [1, 2]
    assert all(abs(v - ref) < 1e-5 for (_, v), (_, ref) in zip(sw["train/loss"], losses))
    # nothing outside the documented layout besides the tracker folders
    assert {p.name for p in run.iterdir() if p.is_dir() and not p.name.startswith("checkpoint-")} == {"tensorboard", "swanlog"}
    assert json.loads((run / "data.json").read_text())["train"]["examples"] == 12


def test_wandb_is_wired_offline_into_the_run_dir(tmp_path, monkeypatch):
    from transformers.integrations import WandbCallback

    from chattune.train.callbacks import tracker_callbacks

    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    cbs = tracker_callbacks(["wandb"], tmp_path / "run", "run", resume=False)
    import os

    assert [type(c) for c in cbs] == [WandbCallback]
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(tmp_path / "run")
    assert tracker_callbacks(["none"], tmp_path / "run", "run", resume=False) == []

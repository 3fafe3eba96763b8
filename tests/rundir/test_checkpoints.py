"""Run-directory checkpoints: which checkpoint a resume picks and what a crash leaves behind gets removed."""
from __future__ import annotations

from chattune.rundir.checkpoints import remove_incomplete_checkpoints, resume_checkpoint


def test_resume_picks_the_newest_checkpoint_whose_state_parses(tmp_path):
    """What a process killed mid-save leaves: weights but no trainer_state.json, or a truncated one."""
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3}')
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "log_hi')
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    (tmp_path / "checkpoint-10").mkdir()  # numeric order, not string order: 10 > 3, but incomplete

    assert resume_checkpoint(tmp_path).name == "checkpoint-3"
    assert remove_incomplete_checkpoints(tmp_path) == ["checkpoint-10", "checkpoint-4", "checkpoint-5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]
    assert resume_checkpoint(tmp_path / "missing") is None

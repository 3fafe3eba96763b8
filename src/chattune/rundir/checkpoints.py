"""Which ``checkpoint-N/`` folders of a run dir are complete, and which one a resume starts from.

transformers 5 writes ``checkpoint-N/`` in place (``Trainer._save_checkpoint``: weights, optimizer,
scheduler, RNG state, and ``trainer_state.json`` last), not under a temp name. A checkpoint is therefore
complete exactly when its ``trainer_state.json`` exists *and parses*: a process killed mid-save leaves a
folder without it (or with a truncated one). This is the one definition of "complete": `resume_checkpoint`
picks only such folders and `remove_incomplete_checkpoints` deletes the rest before training resumes, so a
half-written checkpoint is never loaded and never counted by ``save_total_limit``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .layout import CHECKPOINT_PREFIX, TRAINER_STATE_FILE


def _trainer_state(ckpt: Path) -> dict | None:
    try:
        state = json.loads((ckpt / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders that finished writing (``trainer_state.json`` present and valid), oldest first.

    Temp names and folders whose suffix is not a step number are never matched.
    """
    found = []
    for p in Path(run_dir).glob(CHECKPOINT_PREFIX + "*"):
        suffix = p.name[len(CHECKPOINT_PREFIX):]
        if p.is_dir() and suffix.isdigit() and _trainer_state(p) is not None:
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of `run_dir`, or None."""
    ckpts = complete_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def remove_incomplete_checkpoints(run_dir: str | Path) -> list[str]:
    """Delete ``checkpoint-*`` folders that did not finish writing (and stray temp files of ours).

    Returns:
        The names removed.
    """
    run_dir = Path(run_dir)
    good = {p.name for p in complete_checkpoints(run_dir)}
    removed = []
    for p in sorted(run_dir.glob(CHECKPOINT_PREFIX + "*")):
        if p.is_dir() and p.name not in good:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    for p in run_dir.glob(".*.tmp"):  # left by fsutil.atomic_path / our staging when a process died
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return removed


def checkpoint_step(ckpt: str | Path) -> int:
    """The global step a complete checkpoint was saved at (from its ``trainer_state.json``)."""
    state = _trainer_state(Path(ckpt))
    if state is None or "global_step" not in state:
        raise ValueError(f"{ckpt} is not a complete checkpoint (no valid {TRAINER_STATE_FILE})")
    return int(state["global_step"])


def checkpoint_max_steps(ckpt: str | Path) -> int | None:
    """The run's total optimizer steps as the Trainer planned them (``max_steps`` in ``trainer_state.json``),
    or None when the checkpoint does not say."""
    state = _trainer_state(Path(ckpt))
    steps = (state or {}).get("max_steps")
    return int(steps) if isinstance(steps, int) and steps > 0 else None

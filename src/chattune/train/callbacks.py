"""Trainer callbacks: metrics.jsonl, a rich progress bar, and the tracker callbacks (TensorBoard,
SwanLab, W&B) pointed inside the run directory.

Real tokens: the Trainer counts them (``include_num_input_tokens_seen="non_padding"``: the attention
mask's sum for padded batches, non-pad ids for packed rows); `MetricsCallback` turns the count into
tokens/s per logging interval, not counting time spent in evaluation.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainerCallback

from ..rundir.layout import METRICS_FILE

TENSORBOARD_DIR = "tensorboard"
SWANLAB_DIR = "swanlog"
WANDB_DIR = "wandb"
TRACKER_DIRS = (TENSORBOARD_DIR, SWANLAB_DIR, WANDB_DIR)


def _num(x):
    """JSON-safe float: NaN/inf become None (json.dumps would write invalid JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


class MetricsCallback(TrainerCallback):
    """Append one JSON line per log event to ``RUN_DIR/metrics.jsonl``.

    Records: ``{"kind": "train", step, epoch, loss, lr, grad_norm, tokens_per_s, tokens_seen}``,
    ``{"kind": "eval", step, epoch, eval_loss}`` and at the end ``{"kind": "summary", step,
    train_loss, train_runtime_s, tokens_per_s}``. ``last`` holds the latest train record (for the
    progress bar).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE
        self.last: dict = {}
        self._t0 = self._tok0 = None
        self._start = self.start_tokens = None

    def _write(self, rec: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = self._start = time.perf_counter()
        self._tok0 = self.start_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        base = {"step": state.global_step, "epoch": _num(state.epoch)}
        if "loss" in logs:
            dt = max(now - self._t0, 1e-9)
            rec = {"kind": "train", **base, "loss": _num(logs["loss"]), "lr": _num(logs.get("learning_rate")),
                   "grad_norm": _num(logs.get("grad_norm")),
                   "tokens_per_s": round((tokens - self._tok0) / dt, 2), "tokens_seen": int(tokens)}
            self.last = rec
            self._write(rec)
            self._t0, self._tok0 = now, tokens
        elif "eval_loss" in logs:
            self._write({"kind": "eval", **base, "eval_loss": _num(logs["eval_loss"])})
            self._t0 = now  # evaluation time is not training time
        elif "train_loss" in logs:
            elapsed = max(now - self._start, 1e-9)
            self._write({"kind": "summary", **base, "train_loss": _num(logs["train_loss"]),
                         "train_runtime_s": _num(logs.get("train_runtime")),
                         "tokens_per_s": round((tokens - self.start_tokens) / elapsed, 2)})


class RichProgressCallback(TrainerCallback):
    """A rich progress bar: step m/n, loss, lr, real tokens/s, elapsed and ETA. When the console is not a
    terminal (output redirected to a file), plain lines at a steady interval instead
    (`chattune.progress.ProgressLines`): a live bar would print nothing there."""

    def __init__(self, metrics: MetricsCallback, console=None):
        self.metrics = metrics
        self.console = console
        self.progress = None
        self.task = None
        self.lines = None
        self._tok0 = 0

    def _line_info(self, state) -> str:
        rec = self.metrics.last
        elapsed = time.monotonic() - self._line_t0
        parts = [f"loss {rec['loss']:.4f}"] if rec.get("loss") is not None else []
        if state.global_step > self._step0 and elapsed > 0:
            parts.append(f"{(state.num_input_tokens_seen - self._tok0) / elapsed:.0f} tok/s")
        return ", ".join(parts)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.console is not None and not self.console.is_terminal:
            from ..progress import ProgressLines

            self.lines = ProgressLines("train step", lambda line: self.console.print(
                line, markup=False, highlight=False, soft_wrap=True))
            self.lines.start(state.global_step)
            self._line_t0, self._step0, self._tok0 = time.monotonic(), state.global_step, state.num_input_tokens_seen
            self.lines.update(state.global_step, state.max_steps)
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.lines is not None:
            self.lines.update(state.global_step, state.max_steps, self._line_info(state))
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.lines is not None and logs and "eval_loss" in logs:
            self.console.print(f"step {state.global_step}: eval_loss {logs['eval_loss']:.4f}", highlight=False)
        if self.progress is None or not logs:
            return
        rec = self.metrics.last
        if "loss" in logs and rec:
            info = f"loss {rec['loss']:.4f}  lr {rec['lr'] or 0:.2e}  {rec['tokens_per_s']:.0f} tok/s"
            self.progress.update(self.task, info=info)
        elif "eval_loss" in logs:
            self.progress.console.print(f"step {state.global_step}: eval_loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.lines is not None:
            self.lines.update(state.global_step, state.max_steps, self._line_info(state), final=True)
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
        self.close()

    def close(self) -> None:
        """Stop the live display (also when training raised, so the terminal is left clean)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def tracker_callbacks(report_to: Sequence[str], run_dir: str | Path, run_name: str, *, resume: bool) -> list:
    """transformers' own tracker callbacks, each logging under `run_dir`.

    Args:
        report_to: subset of tensorboard, swanlab, wandb, none.
        run_dir: the run directory (trackers write into subfolders: tensorboard/, swanlog/, wandb/).
        run_name: experiment name shown by the tracker.
        resume: continue the same tracker run when possible.

    Returns:
        Callbacks to pass to the Trainer (with TrainingArguments.report_to="none", so nothing else is
        added behind our back).
    """
    run_dir = Path(run_dir)
    out: list[TrainerCallback] = []
    names = [r for r in report_to if r != "none"]
    if "tensorboard" in names:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        out.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))))
    if "swanlab" in names:
        import swanlab
        from transformers.integrations import SwanLabCallback

        # Offline mode writes the run under logdir with no login (sync later: `swanlab sync DIR`). Users
        # who set SWANLAB_MODE (cloud, after `swanlab login`) keep it. The run is started here so its
        # folder is ours; SwanLabCallback reuses a run that already exists.
        swanlab.init(project=os.environ.get("SWANLAB_PROJECT", "chattune"), experiment_name=run_name,
                     mode=os.environ.get("SWANLAB_MODE", "offline"), logdir=str(run_dir / SWANLAB_DIR))
        out.append(SwanLabCallback())
    if "wandb" in names:
        from transformers.integrations import WandbCallback

        # Offline unless the user has an API key; files go into the run dir.
        if not os.environ.get("WANDB_API_KEY"):
            os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        if resume:
            os.environ.setdefault("WANDB_RESUME", "allow")
        out.append(WandbCallback())
    return out



def close_trackers(failed: bool = False) -> None:
    """Finish a swanlab run started by `tracker_callbacks` so its log file is complete (SwanLabCallback
    never calls ``swanlab.finish``); a run that raised is marked crashed."""
    import sys

    swanlab = sys.modules.get("swanlab")
    if swanlab is None:
        return
    try:  # swanlab 0.10 raises instead of returning None when no run is active (another test/run imported it)
        run = swanlab.get_run()
    except RuntimeError:
        run = None
    if run is not None:
        swanlab.finish(state="crashed") if failed else swanlab.finish()

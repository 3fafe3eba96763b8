"""Read a run directory back: what it holds, without loading any model (that is `chattune.rundir.load`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, load_config
from ..errors import ModelError
from ..fsutil import sha256_file
from .layout import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILE,
    CONFIG_FILE,
    DATA_FILE,
    FULL_WEIGHTS_GLOB,
    MERGE_REPORT,
    METRICS_FILE,
    PLAN_FILE,
    TEMPLATE_FILE,
    is_run_dir,
)


@dataclass(frozen=True)
class SystemPrompts:
    """The system prompts a run trained with (recorded in data.json by training), for inference to reuse.

    Attributes:
        default: the most common system prompt of the training conversations (None: most had none);
            what chat and serve put first when a conversation brings none.
        sources: ``(path, sha256, system)`` per train/eval file: its most common system prompt.
    """

    default: str | None = None
    sources: tuple[tuple[str, str, str | None], ...] = ()

    def for_file(self, path: str | Path) -> str | None:
        """The system prompt for rows of `path` that have none: that of the training file with the same
        content (or, failing that, path), else `default`. A Hub dataset goes by its label
        (``hub:owner/name``, `DataSource.label`), as training recorded it."""
        p = Path(path)
        digest = sha256_file(p) if p.is_file() else None
        for _, sha, system in self.sources:
            if sha == digest:
                return system
        for src, _, system in self.sources:
            if Path(src).resolve() == p.resolve():
                return system
        return self.default


def _system_prompts(path: Path, cfg: Config) -> SystemPrompts:
    try:
        rec = json.loads((path / DATA_FILE).read_text(encoding="utf-8")).get("system_prompts")
    except (OSError, ValueError):
        rec = None
    if not isinstance(rec, dict):  # a run from before the record existed: the config's dataset-level prompt
        return SystemPrompts(default=cfg.data.system)
    return SystemPrompts(default=rec.get("default"),
                         sources=tuple((s["path"], s["sha256"], s.get("system")) for s in rec.get("sources", [])))


@dataclass(frozen=True)
class RunInfo:
    """What a run directory holds, as read back by `read_run`."""

    path: Path
    config: Config
    is_adapter: bool          # True: base model + adapter; False: full weights in `path`
    base_model: str           # config.model.name_or_path (what the adapter applies to)
    chat_template: str | None
    system_prompts: SystemPrompts = SystemPrompts()


def read_run(path: str | Path) -> RunInfo:
    """Read a run directory written by `chattune train`.

    Raises:
        ModelError: the folder is not a complete run directory (says which file is missing).
    """
    path = Path(path)
    if not is_run_dir(path):
        raise ModelError(f"{path} is not a chattune run directory (no {CONFIG_FILE}). "
                         "Pass the output_dir of `chattune train`, or a model folder/hub id.")
    cfg = load_config(path / CONFIG_FILE)
    is_adapter = (path / ADAPTER_FILE).is_file()
    if not is_adapter and not any(path.glob(FULL_WEIGHTS_GLOB)):
        raise ModelError(f"{path} holds no weights ({ADAPTER_FILE} or model.safetensors): "
                         "did training finish? Resume with `chattune train CONFIG --resume`.")
    tpl = path / TEMPLATE_FILE
    return RunInfo(path=path, config=cfg, is_adapter=is_adapter, base_model=cfg.model.name_or_path,
                   chat_template=tpl.read_text(encoding="utf-8") if tpl.is_file() else None,
                   system_prompts=_system_prompts(path, cfg))


def read_merge_report(folder: str | Path) -> dict | None:
    """The ``chattune_merge.json`` of a merged model folder, or None when `folder` is not a merge output."""
    p = Path(folder) / MERGE_REPORT
    if not p.is_file():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def read_adapter_config(run_dir: str | Path) -> dict:
    """The adapter's ``adapter_config.json`` (peft's LoRA settings) of an adapter run."""
    return json.loads((Path(run_dir) / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RunMetrics:
    """``metrics.jsonl`` split by record kind (records are written by `chattune.train.callbacks`)."""

    train: list[tuple[int, float]]   # (step, loss)
    eval: list[tuple[int, float]]    # (step, eval_loss)
    last: dict | None                # the newest train record (step, loss, lr, tokens_per_s, ...)
    summary: dict | None             # the end-of-training record, once written


def read_metrics(run_dir: str | Path) -> RunMetrics:
    """Read a run's ``metrics.jsonl``, also while training appends to it: a line cut mid-write is skipped.

    Returns:
        `RunMetrics`; empty when the file does not exist yet.
    """
    path = Path(run_dir) / METRICS_FILE
    train: list[tuple[int, float]] = []
    evals: list[tuple[int, float]] = []
    last = summary = None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        kind = rec.get("kind", "train")
        if kind == "train" and rec.get("loss") is not None and rec.get("step") is not None:
            train.append((int(rec["step"]), float(rec["loss"])))
            last = rec
        elif kind == "eval" and rec.get("eval_loss") is not None:
            evals.append((int(rec["step"]), float(rec["eval_loss"])))
        elif kind == "summary":
            summary = rec
    return RunMetrics(train=train, eval=evals, last=last, summary=summary)


def read_plan(run_dir: str | Path) -> dict | None:
    """The run plan training made (``plan.json``: every automatic decision and its reason), or None when the run
    dir has none (written before plans, or training has not got that far)."""
    p = Path(run_dir) / PLAN_FILE
    try:
        plan = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def read_tool_rows(run_dir: str | Path) -> int:
    """How many training conversations carried tools or tool calls (``data.json`` render.tool_rows; 0 for a run
    dir from before the record, or without it)."""
    try:
        rec = json.loads((Path(run_dir) / DATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    rows = (rec.get("render") or {}).get("tool_rows") if isinstance(rec, dict) else None
    return rows if isinstance(rows, int) else 0

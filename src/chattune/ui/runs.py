"""The Runs page: every run directory under the runs folder, its status and what it holds.

Status: ``running`` (a live ``chattune train`` started here, or metrics written in the last few minutes by
one started elsewhere), ``finished`` (weights saved: training's last act), ``failed`` (a job started here
exited non-zero without being stopped), ``interrupted`` (stopped, or killed, before the weights were saved;
resumable when a complete checkpoint exists).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from ..report import REPORT_HTML, REPORT_MD
from ..rundir.checkpoints import checkpoint_max_steps, resume_checkpoint
from ..rundir.layout import (
    ADAPTER_FILE,
    CONFIG_FILE,
    DATA_FILE,
    FULL_WEIGHTS_GLOB,
    METRICS_FILE,
    VERSIONS_FILE,
    is_run_dir,
)
from ..rundir.read import read_metrics, read_plan
from .config_form import plan_rows
from .jobs import Job, Jobs
from .paths import UI_STATE, Roots

RECENT_S = 300  # metrics written this recently by a process we did not start: call it running
_MAX_DEPTH = 3


def find_run_dirs(roots: Roots, jobs: Jobs) -> list[Path]:
    """Run dirs under the runs folder (up to three levels deep) plus those of jobs that have not written one yet."""
    found: set[Path] = set()
    base = roots.runs
    frontier = [base]
    for _ in range(_MAX_DEPTH):
        nxt = []
        for d in frontier:
            for child in sorted(d.iterdir()) if d.is_dir() else []:
                if not child.is_dir() or child.name.startswith(".") or child.name in (UI_STATE, "uploads") \
                        or child.name.startswith("checkpoint-"):
                    continue
                if is_run_dir(child):
                    found.add(child.resolve())
                else:
                    nxt.append(child)
        frontier = nxt
    found |= {Path(j.run_dir).resolve() for j in jobs.all()}
    return sorted(found, key=lambda p: str(p))


def has_weights(run_dir: Path) -> bool:
    """Training saved its final weights (the last thing `chattune train` writes)."""
    return (run_dir / ADAPTER_FILE).is_file() or any(run_dir.glob(FULL_WEIGHTS_GLOB))


def run_status(run_dir: Path, job: Job | None, jobs: Jobs) -> str:
    """running, finished, failed or interrupted (see the module docstring)."""
    if job is not None and jobs.alive(job):
        return "running"
    if has_weights(run_dir):
        return "finished"
    if job is not None and job.returncode not in (None, 0) and not job.stopped:
        return "failed"
    metrics = run_dir / METRICS_FILE
    if job is None and metrics.is_file() and time.time() - metrics.stat().st_mtime < RECENT_S:
        return "running"
    return "interrupted"


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _max_steps(run_dir: Path, job: Job | None) -> int | None:
    """Total optimizer steps, from the newest checkpoint's trainer_state (max_steps), else the config."""
    ckpt = resume_checkpoint(run_dir)
    if ckpt is not None and checkpoint_max_steps(ckpt):
        return checkpoint_max_steps(ckpt)
    import yaml

    text = _text(run_dir / CONFIG_FILE) or (_text(Path(job.config)) if job else None)
    try:
        steps = ((yaml.safe_load(text or "") or {}).get("train") or {}).get("max_steps")
    except yaml.YAMLError:
        return None
    return int(steps) if isinstance(steps, int) and steps > 0 else None


def run_summary(roots: Roots, jobs: Jobs, run_dir: Path) -> dict:
    """One row of the runs table (cheap: no model, no config validation)."""
    name = roots.display(run_dir)
    job = jobs.get(name)
    last = read_metrics(run_dir).last or {}
    return {"name": name, "status": run_status(run_dir, job, jobs), "step": last.get("step"),
            "max_steps": _max_steps(run_dir, job), "loss": last.get("loss"),
            "resumable": resume_checkpoint(run_dir) is not None and not has_weights(run_dir),
            "updated": max((p.stat().st_mtime for p in (run_dir / METRICS_FILE, run_dir / CONFIG_FILE) if p.exists()),
                           default=job.started if job else None)}


def list_runs(roots: Roots, jobs: Jobs) -> list[dict]:
    """Every run, newest first."""
    rows = [run_summary(roots, jobs, d) for d in find_run_dirs(roots, jobs)]
    return sorted(rows, key=lambda r: r["updated"] or 0, reverse=True)


def _evals(run_dir: Path) -> list[dict]:
    """``eval/<data>/`` folders written by ``chattune eval`` (compare.json for before/after, else metrics.json)."""
    out = []
    for d in sorted((run_dir / "eval").glob("*")) if (run_dir / "eval").is_dir() else []:
        cmp = _json(d / "compare.json")
        if cmp:
            out.append({"name": d.name, "compare": {k: cmp.get(k) for k in ("base", "tuned", "n", "primary",
                                                                           "base_model", "data")},
                        "rows": (cmp.get("rows") or [])[:20]})
        elif (d / "metrics.json").is_file():
            out.append({"name": d.name, "metrics": _json(d / "metrics.json")})
    return out


def _demo_report(run_dir: Path) -> dict | None:
    """The demo writes report.md/html into the folder holding its run dir (``runs/demo/run``)."""
    for d in (run_dir, run_dir.parent):
        if (d / REPORT_MD).is_file():
            return {"markdown": _text(d / REPORT_MD), "html": _text(d / REPORT_HTML)}
    return None


def _exports(run_dir: Path) -> list[dict]:
    """``chattune export`` folders of this run (``RUN-<target>[-<quant>]`` beside it) with their reports."""
    from ..export.report import read_report

    out = []
    for d in sorted(run_dir.parent.glob(f"{run_dir.name}-*")):
        rep = read_report(d) if d.is_dir() else None
        if rep and Path(rep.get("run_dir", "")).resolve() == run_dir.resolve():
            keys = ("target", "quant", "lora_only", "verified", "seconds", "parity", "metric", "usage", "notes")
            out.append({"folder": d.name, "size": sum((rep.get("files") or {}).values()),
                        **{k: rep.get(k) for k in keys}})
    return out


def run_detail(roots: Roots, jobs: Jobs, run_dir: Path) -> dict:
    """Everything the run page shows: status, config, data hashes, versions, metrics, evals, demo report, log."""
    job = jobs.get(roots.display(run_dir))
    row = run_summary(roots, jobs, run_dir)
    config = _text(run_dir / CONFIG_FILE) or (_text(Path(job.config)) if job else None)
    return {**row, "path": str(run_dir), "config": config,
            "data": _json(run_dir / DATA_FILE), "versions": _json(run_dir / VERSIONS_FILE),
            "metrics": asdict(read_metrics(run_dir)), "evals": _evals(run_dir), "demo": _demo_report(run_dir),
            "plan": plan_rows(read_plan(run_dir) or {}) or None, "exports": _exports(run_dir),
            "log": jobs.log_tail(job),
            "job": None if job is None else {"pid": job.pid, "returncode": job.returncode, "stopped": job.stopped,
                                             "cmd": " ".join(job.cmd)}}


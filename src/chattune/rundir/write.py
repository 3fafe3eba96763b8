"""Everything training writes into the run directory (layout: `chattune.rundir.layout`).

Final artifacts are written through a temp folder inside the run dir and moved in file by file
(``os.replace`` is atomic), weights last, because `chattune.rundir.read.read_run` treats the weights file
as "training finished". Checkpoints are the Trainer's own (`chattune.rundir.checkpoints`).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..config import Config
from ..fsutil import atomic_path, atomic_write_text
from .layout import (
    ADAPTER_FILES,
    CONFIG_FILE,
    DATA_FILE,
    FULL_FILES,
    GENERATION_FILE,
    HELDOUT_FILE,
    METRICS_FILE,
    PLAN_FILE,
    TEMPLATE_FILE,
    VERSIONS_FILE,
)

def collect_versions() -> dict:
    """Versions of Python and the installed packages that change results, plus the git sha of the working dir."""
    from ..plan import package_versions

    out: dict = {"python": platform.python_version()}
    out.update({k: v for k, v in package_versions().items() if v is not None})
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            out["git_sha"] = sha.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def write_json(path: str | Path, obj) -> Path:
    """Write `obj` as indented UTF-8 JSON, atomically (temp file + rename)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_manifest(run_dir: str | Path, cfg: Config, data_report: dict, plan=None) -> None:
    """Write chattune.yaml, versions.json, data.json, plan.json and, when an eval_ratio split held rows out,
    heldout.jsonl (tokenizer/template/weights: `save_final`).

    The config is written as the user gave it, not as planned: a run dir whose plan chose flash attention still
    loads on a machine without it (inference makes its own plan).

    Args:
        run_dir: the run directory (created if missing).
        cfg: the resolved config.
        data_report: `chattune.data.dataset.build_datasets`' report; its ``heldout`` entry names the
            held-out conversations' file inside ``cache_path``.
        plan: the run's `RunPlan` (written as plan.json), or None.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, cfg.to_yaml())
    write_json(run_dir / VERSIONS_FILE, collect_versions())
    held = data_report.get("heldout")
    if held:
        with atomic_path(run_dir / HELDOUT_FILE) as tmp:
            shutil.copyfile(Path(data_report["cache_path"]) / held["file"], tmp)
    write_json(run_dir / DATA_FILE, data_report)
    if plan is not None:
        write_json(run_dir / PLAN_FILE, plan.to_dict())


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop metrics.jsonl records after `step` (they came from the part of a crashed run being redone)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by the crash
            continue
        if rec.get("step", 0) <= step and rec.get("kind") != "summary":
            keep.append(line)
    atomic_write_text(path, "".join(x + "\n" for x in keep))


def generation_config(model, tokenizer, end_of_turn: list[int]):
    """The base model's generation config with ``eos_token_id`` = end-of-turn ids (then the model's own
    EOS ids) and ``pad_token_id`` = the tokenizer's pad, so generation stops where chat turns end."""
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    gen = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
    old = gen.eos_token_id
    old = [old] if isinstance(old, int) else list(old or [])
    if tokenizer.eos_token_id is not None:
        old.append(tokenizer.eos_token_id)
    eos = list(dict.fromkeys([*end_of_turn, *old]))
    gen.eos_token_id = eos
    gen.pad_token_id = tokenizer.pad_token_id
    return gen


def _move_in(src: Path, run_dir: Path, names: list[str]) -> None:
    for name in names:
        os.replace(src / name, run_dir / name)


def save_final(run_dir: str | Path, model, tokenizer, end_of_turn: list[int], *, is_adapter: bool) -> list[str]:
    """Write tokenizer files, chat_template.jinja, generation_config.json and the weights into `run_dir`.

    Args:
        run_dir: the run directory.
        model: the trained model (a peft model when `is_adapter`).
        tokenizer: the tokenizer exactly as used for the data (its chat template is saved as used).
        end_of_turn: ids that end an assistant turn (``chattune.data.render.end_of_turn_ids``).
        is_adapter: True = save adapter_config.json + adapter_model.safetensors; False = full weights.

    Returns:
        The file names written, weights last.
    """
    run_dir = Path(run_dir)
    staging = Path(tempfile.mkdtemp(prefix=".final.", suffix=".tmp", dir=run_dir))
    try:
        tok_dir, w_dir = staging / "tok", staging / "weights"
        tokenizer.save_pretrained(tok_dir)
        tok_files = sorted(p.name for p in tok_dir.iterdir() if p.is_file())
        if TEMPLATE_FILE not in tok_files and getattr(tokenizer, "chat_template", None):
            (tok_dir / TEMPLATE_FILE).write_text(tokenizer.chat_template, encoding="utf-8")
            tok_files.append(TEMPLATE_FILE)
        generation_config(model, tokenizer, end_of_turn).to_json_file(str(tok_dir / GENERATION_FILE))
        # peft also writes README.md, and full models their own generation_config.json: only the
        # weight files below are taken, so the run dir holds exactly the documented layout.
        if is_adapter:
            # Rows of an added pad token travel as peft trainable tokens; peft's "auto" would also save the
            # whole resized embedding + lm_head (~300M parameters for a 151k vocabulary).
            model.save_pretrained(w_dir, safe_serialization=True, save_embedding_layers=False)
            weights = [n for n in ADAPTER_FILES if (w_dir / n).is_file()]
        else:
            model.save_pretrained(w_dir, safe_serialization=True)
            weights = [p.name for p in sorted(w_dir.iterdir())
                       if p.name in FULL_FILES or (p.name.startswith("model-") and p.suffix == ".safetensors")]
            weights.sort(key=lambda n: n.startswith("model"))  # config first, weights last
        missing = [n for n in (ADAPTER_FILES if is_adapter else ("config.json",)) if n not in weights]
        if missing:
            raise RuntimeError(f"save_pretrained wrote no {missing} (got {sorted(os.listdir(w_dir))})")
        _move_in(tok_dir, run_dir, [*tok_files, GENERATION_FILE])
        _move_in(w_dir, run_dir, weights)
        return [*tok_files, GENERATION_FILE, *weights]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


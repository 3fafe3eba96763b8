"""The run directory: the one hand-off between training and everything after it.

Layout (train writes it; infer/eval/merge/serve read it and need nothing else)::

    RUN_DIR/
      chattune.yaml            resolved config
      versions.json            package versions, git sha
      data.json                input file hashes, counts, truncated/dropped counts
      tokenizer.json, tokenizer_config.json, ...   tokenizer exactly as used
      chat_template.jinja      the chat template exactly as used
      generation_config.json   eos_token_id lists the end-of-turn token(s)
      adapter_config.json + adapter_model.safetensors   (lora/qlora/dora)   or
      config.json + model.safetensors                   (full/freeze)
      metrics.jsonl            one line per log step
      checkpoint-N/            Trainer checkpoints; complete once trainer_state.json parses (train.run_files)
"""
from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .config import Config, load_config
from .errors import ModelError
from .fsutil import atomic_write_text

CONFIG_FILE = "chattune.yaml"
VERSIONS_FILE = "versions.json"
DATA_FILE = "data.json"
TEMPLATE_FILE = "chat_template.jinja"
METRICS_FILE = "metrics.jsonl"
GENERATION_FILE = "generation_config.json"
ADAPTER_FILE = "adapter_model.safetensors"
FULL_WEIGHTS_GLOB = "model*.safetensors"

_PACKAGES = ("chattune", "torch", "transformers", "peft", "datasets", "accelerate", "trl", "tokenizers",
             "safetensors", "bitsandbytes", "flash-attn", "liger-kernel")


def collect_versions() -> dict:
    """Versions of Python and the packages that change results, plus the git sha of the working dir."""
    out: dict = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            out["git_sha"] = sha.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_manifest(run_dir: str | Path, cfg: Config, data_report: dict) -> None:
    """Write chattune.yaml, versions.json and data.json (tokenizer/template/weights are written by train)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, cfg.to_yaml())
    write_json(run_dir / VERSIONS_FILE, collect_versions())
    write_json(run_dir / DATA_FILE, data_report)


@dataclass
class RunInfo:
    """What a run directory holds, as read back by `read_run`."""

    path: Path
    config: Config
    is_adapter: bool          # True: base model + adapter; False: full weights in `path`
    base_model: str           # config.model.name_or_path (what the adapter applies to)
    chat_template: str | None


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


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
                   chat_template=tpl.read_text(encoding="utf-8") if tpl.is_file() else None)


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders that finished writing, oldest first (temp names are never matched)."""
    run_dir = Path(run_dir)
    found = []
    for p in run_dir.glob("checkpoint-*"):
        suffix = p.name.split("-", 1)[1]
        if p.is_dir() and suffix.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(suffix), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = complete_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None

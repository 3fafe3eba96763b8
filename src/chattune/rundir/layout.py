"""The run directory's layout: every file name the run dir holds, and nothing else.

Layout (train writes it; infer/eval/merge/serve read it and need nothing else)::

    RUN_DIR/
      chattune.yaml            resolved config
      versions.json            package versions, git sha
      plan.json                the run plan: device, dtype, attention, recompute, Liger, compile, memory, reasons
      data.json                input file hashes, counts, truncated/dropped counts, the system prompts trained with
      heldout.jsonl            the conversations a data.eval_ratio split held out (messages; `eval --data`)
      tokenizer.json, tokenizer_config.json, ...   tokenizer exactly as used
      chat_template.jinja      the chat template exactly as used
      generation_config.json   eos_token_id lists the end-of-turn token(s)
      adapter_config.json + adapter_model.safetensors   (lora/qlora/dora)   or
      config.json + model.safetensors                   (full/freeze)
      metrics.jsonl            one line per log step
      checkpoint-N/            Trainer checkpoints (`chattune.rundir.checkpoints` says which are complete)

A merged model folder (`chattune merge`) is an ordinary model folder plus ``chattune_merge.json``.
"""
from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "chattune.yaml"
VERSIONS_FILE = "versions.json"
DATA_FILE = "data.json"
PLAN_FILE = "plan.json"
TEMPLATE_FILE = "chat_template.jinja"
METRICS_FILE = "metrics.jsonl"
GENERATION_FILE = "generation_config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_FILE)
FULL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")
FULL_WEIGHTS_GLOB = "model*.safetensors"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint-"
MERGE_REPORT = "chattune_merge.json"
HELDOUT_FILE = "heldout.jsonl"


def is_run_dir(path: str | Path) -> bool:
    """True when `path` is a chattune run directory (it holds the resolved config)."""
    return (Path(path) / CONFIG_FILE).is_file()


def existing_run_files(run_dir: str | Path) -> list[str]:
    """Files that show `run_dir` already holds a run (weights or checkpoints)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = [p.name for p in run_dir.glob(CHECKPOINT_PREFIX + "*")]
    names += [n for n in (ADAPTER_FILE, "model.safetensors", "model.safetensors.index.json", METRICS_FILE)
              if (run_dir / n).exists()]
    return sorted(names)

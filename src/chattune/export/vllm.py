"""vLLM: a folder vLLM serves as is, and serve.sh with the exact command (`vllm_launch` knows how to start vLLM).

Merged (default): `model/` is a plain HF folder (the product's merge, or the full-weights run) with the
run's chat_template.jinja and generation_config.json (the end-of-turn EOS list). LoRA (`--lora-only`):
`adapter/` plus the base id, served with `--enable-lora`. vLLM loads LoRA weights for the linear layers
only: an adapter that trained whole modules (`modules_to_save`, trainable token rows) or that needs added
token rows would be rejected or silently differ, so those are refused with the merged export as the way out.
"""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from ..errors import ChattuneError
from ..rundir.layout import ADAPTER_FILES
from .stage import RunFacts
from .vllm_launch import SERVER_MODULE, VLLM_PYTHON_ENV, ServerSpec, server_args

SERVE_SCRIPT = "serve.sh"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def check_lora_servable(facts: RunFacts, tokenizer) -> int:
    """Refuse an adapter vLLM would reject; return its rank (for --max-lora-rank).

    Raises:
        ChattuneError: modules_to_save / trainable tokens, or the run added token rows to the vocabulary.
    """
    from ..rundir.read import read_adapter_config

    cfg = read_adapter_config(facts.run_dir)
    offer = "export without --lora-only (merged weights) instead"
    if cfg.get("modules_to_save") or cfg.get("trainable_token_indices"):
        what = cfg.get("modules_to_save") or "trainable token rows"
        raise ChattuneError(f"vLLM serves LoRA weights of linear layers only; this adapter also trained {what} "
                            f"(adapter_config.json), which vLLM rejects: {offer}")
    base_cfg = Path(facts.base_source) / "config.json"
    if base_cfg.is_file():
        vocab = json.loads(base_cfg.read_text(encoding="utf-8")).get("vocab_size")
        if isinstance(vocab, int) and len(tokenizer) > vocab:
            raise ChattuneError(f"the run added {len(tokenizer) - vocab} token(s) to the vocabulary (e.g. its pad "
                                f"token {facts.pad_token!r}); vLLM cannot serve an adapter with added token rows: "
                                f"{offer}")
    return int(cfg.get("r") or 16)


def max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds `rank` (it takes only these values)."""
    return next(r for r in _VLLM_RANKS if r >= rank)


def server_spec(facts: RunFacts, *, lora_rank: int | None, name: str, base: str | None = None) -> ServerSpec:
    """What serve.sh serves, with paths relative to the export folder."""
    cfg_dir = f"./{ADAPTER_DIR}" if lora_rank else f"./{MODEL_DIR}"
    thinking = facts.thinking == "keep" and "<think>" in facts.template
    return ServerSpec(model=(base or "") if lora_rank else f"./{MODEL_DIR}", name=name, max_model_len=facts.max_length,
                      chat_template=f"{cfg_dir}/chat_template.jinja", generation_config=cfg_dir,
                      # the thinking policy as trained, for every request that does not override it
                      template_kwargs=facts.template_kwargs, reasoning_parser="qwen3" if thinking else None,
                      # chattune's tool-call format names are vLLM's parser names (hermes, llama3_json, deepseek_v3)
                      tool_call_parser=facts.tool_format,
                      lora_path=f"./{ADAPTER_DIR}" if lora_rank else None,
                      lora_rank=max_lora_rank(lora_rank) if lora_rank else None)


def serve_script(spec: ServerSpec) -> str:
    """serve.sh: the exact server command; vLLM's Python from $VLLM_PYTHON (default python3), extra
    options (e.g. --port, --dtype) appended by the caller."""
    return ("#!/usr/bin/env bash\n# Serves this export with vLLM as chattune verified it (127.0.0.1 only; add "
            f"--host/--api-key to bind elsewhere).\n# ${VLLM_PYTHON_ENV}: the Python of a venv with vLLM "
            "(default python3); arguments are appended to vLLM's.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n"
            f'exec "${{{VLLM_PYTHON_ENV}:-python3}}" -m {SERVER_MODULE} ' + shlex.join(server_args(spec))
            + ' "$@"\n')


def write_bundle(facts: RunFacts, tokenizer, hf_dir: Path | None, out: Path, *, name: str) -> ServerSpec:
    """Lay out the bundle in `out` (a fresh temp folder). `hf_dir` is the staged model (None for --lora-only).

    Returns:
        what serve.sh serves.
    """
    rank = None
    if hf_dir is None:
        rank = check_lora_servable(facts, tokenizer)
        dest = out / ADAPTER_DIR
        dest.mkdir(parents=True)
        for f in ADAPTER_FILES:
            shutil.copyfile(facts.run_dir / f, dest / f)
        tokenizer.save_pretrained(dest)
    else:
        dest = out / MODEL_DIR
        shutil.move(str(hf_dir), dest)
    (dest / "chat_template.jinja").write_text(facts.template, encoding="utf-8")
    gen = dest / "generation_config.json"
    doc = json.loads(gen.read_text(encoding="utf-8")) if gen.is_file() else {}
    doc["eos_token_id"] = list(facts.eos_ids)
    if facts.pad_id is not None:
        doc["pad_token_id"] = facts.pad_id
    gen.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    # the resolved base: a hub id, or the local folder an alias/GGUF base was converted into
    spec = server_spec(facts, lora_rank=rank, name=name, base=facts.base_source)
    script = out / SERVE_SCRIPT
    script.write_text(serve_script(spec), encoding="utf-8")
    script.chmod(0o755)
    return spec

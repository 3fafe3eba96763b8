"""Shared test fixtures: real tokenizers from the asset cache and tiny random models built on the fly.

Assets are fetched by `make setup` (scripts/fetch_assets.py); a missing one fails the test with the
command that fetches it, never a silent skip.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REAL_TOKENIZERS = ("qwen3", "llama3_1", "gemma3", "deepseek_v3", "llama3")
FETCH_HINT = "run `make setup` (or `python scripts/fetch_assets.py`) to fetch it"


@pytest.fixture(autouse=True)
def _same_random_state_for_every_test():
    """Each test starts from one random state, whatever ran before it: torch starts its global generator at
    a random seed in every process, and a test that draws from it unseeded (peft's LoRA init, a sampled
    answer) must not depend on the session's order or on the process."""
    import random

    import torch

    random.seed(0)
    torch.manual_seed(0)


def assets_dir() -> Path:
    return Path(os.environ.get("CHATTUNE_ASSETS", Path.home() / ".cache" / "chattune" / "assets"))


def real_tokenizer_dir(name: str) -> Path:
    """Folder of a real tokenizer (tokenizer.json + tokenizer_config.json with its chat template)."""
    d = assets_dir() / "tokenizers" / name
    if not (d / "tokenizer.json").is_file():
        pytest.fail(f"real tokenizer '{name}' missing at {d}: {FETCH_HINT}", pytrace=False)
    return d


def smollm2_gguf_path() -> Path:
    from chattune.errors import ModelError
    from chattune.model.load import smollm2_gguf_path as find

    try:
        return find()
    except ModelError as e:  # the message says how to fetch it (make setup)
        pytest.fail(f"SmolLM2 GGUF missing: {e}", pytrace=False)


def smollm2_tokenizer(chat_template: str | None = None):
    """The real SmolLM2-135M-Instruct tokenizer (read from its GGUF), with `chat_template` (a model.chat_template
    value: a path or a shipped name such as "smollm2-tools") in place of its own when given."""
    from transformers import AutoTokenizer

    from chattune.data.render import apply_template_override

    p = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    apply_template_override(tok, chat_template)
    return tok


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    return real_tokenizer_dir("qwen3")


@pytest.fixture(scope="session")
def qwen3_tokenizer(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)


def build_tiny_qwen3(out_dir: Path, tokenizer_dir: Path, seed: int = 0, head_dim: int = 16) -> Path:
    """Save a 2-layer random Qwen3 (hidden 64) with the real Qwen3 tokenizer into `out_dir`.

    `head_dim`: vLLM's CPU attention takes head sizes of 32 and up only, so its tests build with 32."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=2048,
                      initializer_range=0.2, tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                      pad_token_id=tok.pad_token_id)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=cfg.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    """A tiny random Qwen3 model folder (safetensors + real Qwen3 tokenizer), built once per session."""
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"), qwen3_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_qlora_run(tmp_path_factory, tiny_qwen3_dir) -> Path:
    """A QLoRA run dir (NF4 base, 6 steps, checkpoint-4) on the tiny Qwen3, trained once per session."""
    from chattune.train.trainer import train
    from tests.train.test_qlora import QLORA_CASE, qlora_cfg

    tmp = tmp_path_factory.mktemp("tiny_qlora")
    train(qlora_cfg(tmp, tiny_qwen3_dir, "run", **QLORA_CASE))
    return tmp / "run"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return smollm2_gguf_path()


def cpu_plan(cfg):
    """The run plan for `cfg` on a plain CPU machine (a faked capability probe: no GPU, no kernels)."""
    from chattune.plan import Capabilities, make_plan

    return make_plan(cfg, Capabilities(device="cpu", memory_bytes=64 * 1024 ** 3))

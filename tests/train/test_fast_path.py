"""GPU fast-path decisions (`chattune.train.fast_path`): attention kernel, Liger, compile and recompute
chosen from the config and the machine's capabilities, each with a reason; FLOP and memory estimates."""
from __future__ import annotations

import pytest

from chattune.config import load_config
from chattune.errors import ConfigError
from chattune.train import fast_path as fp

QWEN3_8B = {"hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936, "tie_word_embeddings": False}
QWEN3_06B = {**QWEN3_8B, "hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
             "intermediate_size": 3072, "tie_word_embeddings": True}
H100 = dict(device="cuda", cuda_capability=(9, 0), gpu_name="H100", gpu_memory_bytes=80 * fp.GIB)


def test_flops_per_token_match_the_perf_table():
    # PERF.md: Qwen3 LoRA r16 all-linear, T=2048, causal attention: 3.15 and 32.35 GFLOP/token
    assert fp.flops_per_token(fp.ModelShape.from_config(QWEN3_06B), 2048) / 1e9 == pytest.approx(3.15, abs=0.005)
    assert fp.flops_per_token(fp.ModelShape.from_config(QWEN3_8B), 2048) / 1e9 == pytest.approx(32.35, abs=0.005)
    assert fp.ModelShape.from_config(QWEN3_06B).matmul_params() == 595_984_384


def test_fast_path_on_cpu_is_plain_and_says_why():
    plan = fp.resolve_fast_path(load_config(None, ["train.packing=true"]), caps=fp.Capabilities(device="cpu"))
    assert (plan["attn_implementation"], plan["use_liger_kernel"], plan["torch_compile"],
            plan["gradient_checkpointing"]) == ("sdpa", False, False, False)
    assert "block-diagonal mask" in plan["reasons"]["attn_implementation"]
    assert plan["reasons"]["use_liger_kernel"] == "no CUDA GPU"  # default None = auto: off on CPU, said why
    off = fp.resolve_fast_path(load_config(None, ["train.use_liger_kernel=false"]), caps=fp.Capabilities(device="cpu"))
    assert off["reasons"]["use_liger_kernel"] == "off in config"
    with pytest.raises(ConfigError, match="use_liger_kernel: true but no CUDA GPU"):
        fp.resolve_fast_path(load_config(None, ["train.use_liger_kernel=true"]), caps=fp.Capabilities(device="cpu"))
    assert fp.training_args(plan) == {"use_liger_kernel": False, "torch_compile": False,
                                      "activation_checkpointing": False, "activation_checkpointing_kwargs": None}
    assert len(fp.describe(plan).splitlines()) == 5


def test_fast_path_picks_flash_attention_by_gpu_and_package():
    cfg = load_config(None, ["train.packing=true"])
    hopper = fp.resolve_fast_path(cfg, caps=fp.Capabilities(**H100, flash_attn_3=True, flash_attn_2=True),
                                  model_config=QWEN3_06B)
    assert hopper["attn_implementation"] == "flash_attention_3"
    ampere = fp.Capabilities(**{**H100, "cuda_capability": (8, 0)}, flash_attn_2=True, flash_attn_3=True)
    assert fp.resolve_fast_path(cfg, caps=ampere, model_config=QWEN3_06B)["attn_implementation"] == \
        "flash_attention_2"
    hub_only = fp.Capabilities(**H100, hub_kernels=True)
    plan = fp.resolve_fast_path(cfg, caps=hub_only, model_config=QWEN3_06B)
    assert plan["attn_implementation"] == "flash_attention_3" and "Hub" in plan["reasons"]["attn_implementation"]
    turing = fp.Capabilities(**{**H100, "cuda_capability": (7, 5)}, flash_attn_2=True)
    assert fp.resolve_fast_path(cfg, caps=turing, model_config=QWEN3_06B)["attn_implementation"] == "sdpa"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        fp.resolve_fast_path(load_config(None, ["model.attn_implementation=flash_attention_2"]),
                             caps=fp.Capabilities(device="cpu"))
    with pytest.raises(ConfigError, match="flash-attn is not installed"):
        fp.resolve_fast_path(load_config(None, ["model.attn_implementation=flash_attention_2"]),
                             caps=fp.Capabilities(**H100), model_config=QWEN3_06B)


def test_fast_path_liger_compile_switches():
    caps = fp.Capabilities(**H100, liger=True)
    assert fp.resolve_fast_path(load_config(None, ["train.use_liger_kernel=true"]), caps=caps,
                                model_config=QWEN3_06B)["use_liger_kernel"] is True
    off = fp.resolve_fast_path(load_config(None, ["train.use_liger_kernel=false"]), caps=caps, model_config=QWEN3_06B)
    assert off["use_liger_kernel"] is False and off["reasons"]["use_liger_kernel"] == "off in config"
    with pytest.raises(ConfigError, match=r"liger-kernel is not installed \(pip install 'chattune\[gpu\]'\)"):
        fp.resolve_fast_path(load_config(None, ["train.use_liger_kernel=true"]), caps=fp.Capabilities(**H100),
                             model_config=QWEN3_06B)
    comp = fp.resolve_fast_path(load_config(None, ["train.torch_compile=true"]), caps=caps, model_config=QWEN3_06B)
    assert comp["torch_compile"] is True and fp.training_args(comp)["torch_compile"] is True


def test_apply_plan_keeps_auto_sdpa_and_sets_flash_and_switches():
    cfg = load_config(None, ["train.packing=true"])
    cpu = fp.resolve_fast_path(cfg, caps=fp.Capabilities(device="cpu"))
    run_cfg = fp.apply_plan(cfg, cpu)
    assert run_cfg.model.attn_implementation == "auto" and run_cfg.train.gradient_checkpointing is False
    gpu = fp.resolve_fast_path(cfg, caps=fp.Capabilities(**H100, flash_attn_3=True), model_config=QWEN3_06B)
    run_cfg = fp.apply_plan(cfg, gpu)
    assert run_cfg.model.attn_implementation == "flash_attention_3" and run_cfg.train.gradient_checkpointing is False
    assert cfg.model.attn_implementation == "auto" and cfg.train.gradient_checkpointing is None  # original untouched


def test_gradient_checkpointing_follows_the_memory_estimate():
    small = load_config(None, ["train.batch_size=1", "data.max_length=2048"])
    big = load_config(None, ["train.batch_size=8", "data.max_length=2048"])
    caps = fp.Capabilities(**H100)
    p_small = fp.resolve_fast_path(small, caps=caps, model_config=QWEN3_06B)
    p_big = fp.resolve_fast_path(big, caps=caps, model_config=QWEN3_8B)
    assert p_small["gradient_checkpointing"] is False and p_small["memory_estimate_gib"] < 20
    assert p_big["gradient_checkpointing"] is True and "budget" in p_big["reasons"]["gradient_checkpointing"]
    assert fp.training_args(p_big)["activation_checkpointing_kwargs"] == {"use_reentrant": False}
    forced = load_config(None, ["train.gradient_checkpointing=false", "train.batch_size=8"])
    assert fp.resolve_fast_path(forced, caps=caps, model_config=QWEN3_8B)["gradient_checkpointing"] is False
    # the fused loss never builds logits: 8 × 2048 tokens × 151,936 vocab × 10 bytes ≈ 23 GiB less
    est = fp.estimate_train_memory(fp.ModelShape.from_config(QWEN3_06B), 8 * 2048)
    assert est["logits"] / fp.GIB == pytest.approx(23.2, abs=0.1)
    assert fp.estimate_train_memory(fp.ModelShape.from_config(QWEN3_06B), 8 * 2048, fused_loss=True)["logits"] == 0


def test_prepare_model_turns_off_the_cache_that_would_merge_packed_examples(tiny_qwen3_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, attn_implementation="sdpa").train()
    a, b = torch.tensor([[11, 12, 13, 14]]), torch.tensor([[21, 22, 23, 24, 25]])
    alone = model(input_ids=b, use_cache=False).logits
    packed = dict(input_ids=torch.cat([a, b], 1), position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4]]))
    assert model.config.use_cache is True
    leaked = model(**packed).logits[:, 4:]
    assert (leaked - alone).abs().max() > 1e-3  # with the cache on, b attends to a
    fp.prepare_model(model)
    assert torch.allclose(model(**packed).logits[:, 4:], alone, atol=1e-5)

"""chattune.plan: every automatic decision and its reason, on faked machines (sm75/sm80/sm90, CPU, MPS)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from chattune.config import ModelConfig, load_config
from chattune.errors import ConfigError
from chattune.plan import (
    FIT_SHARE,
    Capabilities,
    GiB,
    describe,
    flops_per_token,
    inference_plan,
    known_config,
    make_plan,
    shape_of,
)

CPU = Capabilities(device="cpu", memory_bytes=16 * GiB)
MPS = Capabilities(device="mps", memory_bytes=16 * GiB)
T4 = Capabilities(device="cuda", cuda_capability=(7, 5), gpu_name="Tesla T4", memory_bytes=15 * GiB)
A100 = Capabilities(device="cuda", cuda_capability=(8, 0), gpu_name="A100", memory_bytes=80 * GiB)
H100 = Capabilities(device="cuda", cuda_capability=(9, 0), gpu_name="H100", memory_bytes=80 * GiB)
QWEN3_8B = {"model_type": "qwen3", "hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936,
            "tie_word_embeddings": False}
QWEN3_06B = {**QWEN3_8B, "hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
             "intermediate_size": 3072, "tie_word_embeddings": True}


def cfg(*overrides: str):
    return load_config(None, list(overrides))


def test_sm75_fp16_with_flash_attn_plans_sdpa_and_the_model_asks_for_sdpa(monkeypatch, tiny_qwen3_dir):
    """The banner and the loaded model agree: before the plan, load_model asked for flash_attention_2 whenever
    flash_attn imported, on any GPU, while the banner said sdpa (a Turing card has no flash-attention 2)."""
    import importlib.util

    import transformers

    from chattune.model.load import load_model

    c = cfg("model.dtype=float16", f"model.name_or_path={tiny_qwen3_dir}")
    plan = make_plan(c, dataclasses.replace(T4, flash_attn_2=True))
    assert plan.attention == "sdpa" and "sm75 is older than Ampere" in plan.reasons["attention"]
    assert plan.dtype == "float16" and plan.reasons["dtype"] == "set in config"
    seen: dict = {}

    def spy(cls, src, **kw):
        seen.update(kw)
        raise OSError("stop here: only the request matters")

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "flash_attn" else real_find(n, *a))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    with pytest.raises(Exception, match="cannot load a model"):
        load_model(c.model, plan=plan, source=str(tiny_qwen3_dir))
    assert seen["attn_implementation"] == "sdpa" == plan.attention
    assert seen["dtype"] is plan.torch_dtype and seen["device_map"] == "cuda"
    assert "quantization_config" not in seen


def test_dtype_per_machine_with_reasons():
    assert (make_plan(cfg(), CPU).dtype, make_plan(cfg(), MPS).dtype) == ("float32", "float32")
    assert "cpu: fp32" in make_plan(cfg(), CPU).reasons["dtype"]
    a100 = make_plan(cfg(), A100)
    assert a100.dtype == "bfloat16" and "bf16 in hardware" in a100.reasons["dtype"]
    t4 = make_plan(cfg(), T4)
    assert t4.dtype == "float32" and "sm75 has no bf16" in t4.reasons["dtype"]
    assert make_plan(cfg("model.dtype=bfloat16"), CPU).dtype == "bfloat16"  # asked for: kept
    with pytest.raises(ConfigError, match="has no bf16"):
        make_plan(cfg("model.dtype=bfloat16"), T4)


def test_attention_by_gpu_package_and_dtype():
    packed = cfg("train.packing=true")
    hopper = make_plan(packed, dataclasses.replace(H100, flash_attn_3=True, flash_attn_2=True))
    assert hopper.attention == "flash_attention_3" and "varlen" in hopper.reasons["attention"]
    ampere = dataclasses.replace(A100, flash_attn_2=True, flash_attn_3=True)
    assert make_plan(packed, ampere).attention == "flash_attention_2"
    hub = make_plan(packed, dataclasses.replace(H100, hub_kernels=True))
    assert hub.attention == "flash_attention_3" and "Hub" in hub.reasons["attention"]
    fp32 = make_plan(cfg("model.dtype=float32"), ampere)
    assert fp32.attention == "sdpa" and "half precision only" in fp32.reasons["attention"]
    nofa = make_plan(packed, A100)
    assert nofa.attention == "sdpa" and "no flash-attn installed" in nofa.reasons["attention"]
    assert "block-diagonal mask" in nofa.reasons["attention"]
    for caps in (CPU, MPS):
        p = make_plan(packed, caps)
        assert p.attention == "sdpa" and f"{caps.device}: no flash-attention kernels" in p.reasons["attention"]
    assert make_plan(cfg("model.attn_implementation=eager"), H100).attention == "eager"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        make_plan(cfg("model.attn_implementation=flash_attention_2"), CPU)
    with pytest.raises(ConfigError, match="flash-attn is not installed"):
        make_plan(cfg("model.attn_implementation=flash_attention_2"), A100)


def test_liger_and_compile_switches():
    liger_gpu = dataclasses.replace(H100, liger=True)
    auto = make_plan(cfg(), liger_gpu)
    assert auto.liger and "linear-cross-entropy" in auto.reasons["liger"]
    assert make_plan(cfg(), CPU).reasons["liger"] == "no CUDA GPU"  # None = auto: off on CPU, said why
    off = make_plan(cfg("train.use_liger_kernel=false"), liger_gpu)
    assert not off.liger and off.reasons["liger"] == "off in config"
    with pytest.raises(ConfigError, match="use_liger_kernel: true but no CUDA GPU"):
        make_plan(cfg("train.use_liger_kernel=true"), CPU)
    with pytest.raises(ConfigError, match=r"liger-kernel is not installed \(pip install 'chattune\[gpu\]'\)"):
        make_plan(cfg("train.use_liger_kernel=true"), H100)
    comp = make_plan(cfg("train.torch_compile=true", "train.packing=true"), liger_gpu)
    assert comp.torch_compile and "expect recompiles" in comp.reasons["torch_compile"]
    assert not make_plan(cfg(), CPU).torch_compile


def test_qlora_loads_4bit_computing_in_the_training_dtype_and_says_cpu_is_slow():
    cpu = make_plan(cfg("method.type=qlora"), CPU)
    assert cpu.load_in_4bit and cpu.dtype == "float32" and "saves memory, not time" in cpu.reasons["load_in_4bit"]
    a100 = make_plan(cfg("method.type=qlora"), A100)
    assert a100.load_in_4bit and a100.dtype == "bfloat16" and "not time" not in a100.reasons["load_in_4bit"]
    assert "load_in_4bit" in describe(a100) and not make_plan(cfg(), A100).load_in_4bit


def test_recompute_follows_the_one_memory_estimate():
    small = make_plan(cfg("train.batch_size=1", "data.max_length=2048"), H100, model_config=QWEN3_06B)
    big = make_plan(cfg("train.batch_size=8", "data.max_length=2048"), H100, model_config=QWEN3_8B)
    assert not small.gradient_checkpointing and small.memory.gib() < 20
    assert f"{FIT_SHARE:.0%} of H100" in small.reasons["gradient_checkpointing"]
    assert big.gradient_checkpointing and "budget" in big.reasons["gradient_checkpointing"]
    # the plan's estimate is the one with the recompute it chose, and it fits the budget it was chosen for
    assert big.memory.gradient_checkpointing and big.memory.total <= FIT_SHARE * H100.memory_bytes
    forced = make_plan(cfg("train.gradient_checkpointing=false", "train.batch_size=8"), H100, model_config=QWEN3_8B)
    assert not forced.gradient_checkpointing and forced.reasons["gradient_checkpointing"] == "off in config"
    cpu = make_plan(cfg(), CPU, model_config=QWEN3_06B)
    assert not cpu.gradient_checkpointing and "memory is not the limit" in cpu.reasons["gradient_checkpointing"]
    unknown = make_plan(cfg("model.name_or_path=some/unknown-model"), H100)
    assert unknown.gradient_checkpointing and unknown.memory is None
    assert unknown.reasons["gradient_checkpointing"] == "model size unknown: on to be safe"
    # the fused loss never builds logits: 8 × 2048 tokens × 151,936 vocab × 16 bytes ≈ 37 GiB less
    liger = make_plan(cfg("train.batch_size=8", "data.max_length=2048", "train.gradient_checkpointing=true"),
                      dataclasses.replace(H100, liger=True), model_config=QWEN3_06B)
    assert liger.memory.logits == 0 and big.memory.logits / GiB == pytest.approx(8 * 2048 * 151936 * 16 / GiB)


def test_flops_per_token_match_hand_arithmetic():
    # Qwen3 LoRA r16 all-linear, T=2048: N = 28·(1024·2048·2 + 1024·1024·2 + 3·1024·3072) + 151936·1024
    s06, s8 = shape_of(known_config("Qwen/Qwen3-0.6B")), shape_of(known_config("Qwen/Qwen3-8B"))
    assert s06.matmul_params() == 595_984_384
    assert flops_per_token(s06, 2048) / 1e9 == pytest.approx(3.15, abs=0.005)
    assert flops_per_token(s8, 2048) / 1e9 == pytest.approx(32.35, abs=0.005)


def test_matmul_params_equal_the_real_architecture():
    """N counted independently: every nn.Linear weight of the real Qwen3 module tree (meta device, no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = known_config("Qwen/Qwen3-0.6B")
    with torch.device("meta"):
        real = AutoModelForCausalLM.from_config(config)
    linear = {id(m.weight): m.weight.numel() for m in real.modules() if isinstance(m, torch.nn.Linear)}
    assert shape_of(config).matmul_params() == sum(linear.values())


def test_plan_is_frozen_serialisable_and_described():
    plan = make_plan(cfg("train.packing=true"), dataclasses.replace(H100, liger=True), model_config=QWEN3_06B)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.dtype = "float32"  # type: ignore[misc]
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["attention"] == "sdpa" and data["memory"]["verdict"] == "fits" and data["reasons"]["liger"]
    lines = describe(plan).splitlines()
    assert lines[0] == "plan (H100 (80.0 GiB)):" and len(lines) == 1 + 6 + 1  # 6 decisions (no 4-bit) + memory
    assert all(key in describe(plan) for key in ("dtype", "attention", "gradient_checkpointing", "liger"))


def test_inference_plan_decides_device_dtype_and_attention_only():
    p = inference_plan(ModelConfig(), caps=CPU)
    assert (p.device, p.dtype, p.attention, p.gradient_checkpointing, p.memory) == ("cpu", "float32", "sdpa",
                                                                                    False, None)
    g = inference_plan(ModelConfig(), device="cuda:1", caps=dataclasses.replace(A100, flash_attn_2=True))
    assert (g.device, g.dtype, g.attention) == ("cuda:1", "bfloat16", "flash_attention_2")
    assert inference_plan(ModelConfig(dtype="bfloat16"), dtype="float16", caps=A100).dtype == "float16"


def test_inference_plan_of_a_qlora_adapter_loads_its_4bit_base_and_dequantises_off_cuda():
    cpu = inference_plan(ModelConfig(), caps=CPU, method="qlora")
    assert cpu.load_in_4bit and cpu.dequantise and cpu.dtype == "float32"
    assert "same logits" in cpu.reasons["dequantise"] and "dequantise" in describe(cpu)
    gpu = inference_plan(ModelConfig(), caps=A100, method="qlora")
    assert gpu.load_in_4bit and not gpu.dequantise and gpu.dtype == "bfloat16"
    merge = inference_plan(ModelConfig(), caps=A100, method="qlora", dequantise=True)
    assert merge.dequantise and "never merge into 4-bit layers" in merge.reasons["dequantise"]
    lora = inference_plan(ModelConfig(), caps=CPU, method="lora", dequantise=True)
    assert not lora.load_in_4bit and not lora.dequantise and "dequantise" not in lora.reasons

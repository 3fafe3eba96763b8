"""QLoRA on CPU (bitsandbytes >= 0.50): NF4 + double-quant load, k-bit preparation, LoRA on the 4-bit base,
eval that leaves the model as trained, dequantisation that keeps the trained weights, a clear error without
bitsandbytes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from chattune.config import ModelConfig, config_from_dict
from chattune.errors import ChattuneError
from chattune.model import quant
from chattune.model.adapters import apply_method
from chattune.model.load import load_base, load_model, load_tokenizer
from tests.conftest import cpu_plan

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _qlora_cfg(tiny_dir):
    return config_from_dict({"model": {"name_or_path": str(tiny_dir)}, "method": {"type": "qlora"}})


def _qlora(tiny_dir, **kw):
    cfg = _qlora_cfg(tiny_dir)
    tok = load_tokenizer(cfg.model)
    return load_base(cfg.model, plan=cpu_plan(cfg), tokenizer=tok, **kw), tok


def _ids():
    return torch.randint(0, 5000, (2, 24), generator=torch.Generator().manual_seed(0))


def test_qlora_loads_nf4_with_double_quant_on_cpu_and_trains_lora_on_it(tiny_qwen3_dir):
    loaded, tok = _qlora(tiny_qwen3_dir)
    model = loaded.model
    quantised = {n.rsplit(".", 2)[-2]: p for n, p in model.named_parameters() if p.__class__.__name__ == "Params4bit"}
    assert set(quantised) == set(LINEARS)  # every decoder Linear, and only those
    n_4bit = sum(p.__class__.__name__ == "Params4bit" for p in model.parameters())
    assert n_4bit == 2 * len(LINEARS)  # two layers
    for p in quantised.values():
        assert p.quant_state.quant_type == "nf4" and p.quant_state.nested  # double quantisation
        assert p.quant_state.blocksize == quant.NF4_BLOCKSIZE and p.dtype == torch.uint8
    # embeddings/lm_head (tied) and norms stay full precision; k-bit preparation froze and upcast them
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())
    assert loaded.load_in_4bit is True and loaded.quantised == "nf4"

    cfg = _qlora_cfg(tiny_qwen3_dir)
    peft_model, report = apply_method(model, cfg, cpu_plan(cfg))
    assert report["method"] == "qlora" and set(report["target_modules"]) == set(LINEARS)
    ids = _ids()
    out = peft_model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert len(grads) == 2 * 2 * len(LINEARS)  # lora_A and lora_B of every target, both layers
    # lora_B starts at zero, so only lora_B gets a gradient on the first step; it must be non-zero
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_eval_forward_leaves_the_4bit_model_as_trained(tiny_qwen3_dir):
    """bitsandbytes' CPU inference repacking (AVX512-BF16 machines) rounds absmax to bf16 in place: an
    eval pass inside training would change the weights being trained. chattune pins the compute path."""
    model = _qlora(tiny_qwen3_dir)[0].model
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert len(layers) == 2 * len(LINEARS) and not any(m.support_avx512bf16_for_cpu for m in layers)
    ids = _ids()
    model.train()
    before = model(input_ids=ids).logits.detach()
    model.eval()
    with torch.no_grad():
        evaluated = model(input_ids=ids).logits
    model.train()
    after = model(input_ids=ids).logits.detach()
    assert torch.equal(evaluated, before)
    assert torch.equal(after, before)


def test_dequantised_base_computes_exactly_what_the_4bit_base_computes(tiny_qwen3_dir):
    model = _qlora(tiny_qwen3_dir, prepare_for_training=False)[0].model
    model.eval()
    ids = _ids()
    with torch.no_grad():
        four_bit = model(input_ids=ids).logits
        plain = quant.dequantize(model, torch.float32)
        assert not quant.is_4bit(plain) and getattr(plain.config, "quantization_config", None) is None
        assert type(plain.model.layers[0].mlp.up_proj) is torch.nn.Linear
        assert torch.equal(plain(input_ids=ids).logits, four_bit)
        # ...and the original checkpoint is a different model: that is why merge dequantises
        original = load_model(ModelConfig(name_or_path=str(tiny_qwen3_dir)), device="cpu").eval()
        assert (original(input_ids=ids).logits - four_bit).abs().max() > 0.1
    with pytest.raises(ChattuneError, match="no 4-bit layers"):
        quant.dequantize(original, torch.float32)


def test_qlora_without_bitsandbytes_says_how_to_install_it(tiny_qwen3_dir, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ChattuneError, match=r"qlora needs bitsandbytes, which is not installed: pip install 'chattune\[qlora\]'"):
        _qlora(tiny_qwen3_dir)
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setattr(quant.importlib.metadata, "version", lambda name: "0.45.5")
    with pytest.raises(ChattuneError, match=r"bitsandbytes >= 0.50 \(installed: 0.45.5\)"):
        quant.require_bitsandbytes()


def test_the_plan_estimates_qlora_on_cpu_in_the_cpu_compute_dtype():
    """On CPU the 4-bit layers compute in fp32 (the plan's dtype there): activations and logits are fp32, as for
    LoRA; only the base weights shrink. On a bf16 GPU the same run's activations take half the bytes."""
    from chattune.plan import Capabilities, GiB, make_plan

    def plan(method, caps):
        return make_plan(config_from_dict({"method": {"type": method}, "train": {"batch_size": 4},
                                           "data": {"max_length": 256}}), caps)  # SmolLM2 from the shape table

    cpu = Capabilities(device="cpu", memory_bytes=16 * GiB)
    qlora, lora = plan("qlora", cpu), plan("lora", cpu)
    gpu = plan("qlora", Capabilities.for_card(memory=24 * GiB))
    assert qlora.dtype == qlora.memory.dtype == "float32" and gpu.memory.dtype == "bfloat16"
    assert qlora.memory.activations == lora.memory.activations == 2 * gpu.memory.activations
    assert qlora.memory.logits == lora.memory.logits > 0
    assert qlora.memory.weights < lora.memory.weights / 3


def test_a_4bit_load_lets_the_checkpoint_file_go(tiny_qwen3_dir, tmp_path):
    """Quantisation reads every page of the checkpoint; parameters left as views of its memory map would keep
    the original weights resident next to their 4-bit copies (a QLoRA process bigger than a LoRA one on CPU)."""
    import gc
    import shutil

    model_dir = shutil.copytree(tiny_qwen3_dir, tmp_path / "model")  # a file no other test has mapped
    loaded, _ = _qlora(model_dir)
    gc.collect()
    mapped = Path("/proc/self/maps").read_text(encoding="utf-8")
    assert str(model_dir / "model.safetensors") not in mapped
    emb = loaded.model.get_input_embeddings().weight
    assert emb.dtype == torch.float32 and emb is loaded.model.lm_head.weight  # still tied after the copy

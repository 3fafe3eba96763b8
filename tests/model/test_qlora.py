"""QLoRA on CPU (bitsandbytes >= 0.50): NF4 + double-quant load, k-bit preparation, LoRA on the 4-bit base,
eval that leaves the model as trained, dequantisation that keeps the trained weights, a clear error without
bitsandbytes."""
from __future__ import annotations

import importlib.util

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

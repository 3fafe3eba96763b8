"""chattune.model.adapters: apply_method (lora/dora/rslora/full/freeze), gradient checkpointing, and that the
runs it makes load back (`chattune.rundir.load.load_run`)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from chattune.config import Config, ModelConfig, config_from_dict
from chattune.model.adapters import apply_method, count_params
from chattune.model.load import load_base, load_model, load_tokenizer
from chattune.rundir.load import load_run
from chattune.rundir.write import write_manifest
from tests.conftest import cpu_plan


def _cfg(tiny_dir, **method) -> Config:
    return config_from_dict({"model": {"name_or_path": str(tiny_dir)}, "method": method})


def _base(tiny_dir):
    mcfg = ModelConfig(name_or_path=str(tiny_dir))
    tok = load_tokenizer(mcfg)
    return load_model(mcfg, tokenizer=tok, device="cpu"), tok


def _linear_shapes(model) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]


def _step(model, tok):
    """One forward/backward on a short real chat so gradients reach whatever is trainable."""
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                  return_tensors="pt", return_dict=True)["input_ids"]
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()


def _check_only_trainable_get_grads(model):
    named = list(model.named_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in named if p.requires_grad)
    frozen_with_grad = [n for n, p in named if not p.requires_grad and p.grad is not None]
    assert frozen_with_grad == []


def test_lora_counts_and_freezes_the_base(tiny_qwen3_dir):
    model, tok = _base(tiny_qwen3_dir)
    shapes, total_before = _linear_shapes(model), count_params(model)[1]
    cfg = _cfg(tiny_qwen3_dir, type="lora", lora={"r": 4, "alpha": 8})
    model, rep = apply_method(model, cfg, cpu_plan(cfg))
    expected = sum(4 * (i + o) for i, o in shapes)
    assert rep["method"] == "lora" and rep["trainable_params"] == expected
    assert rep["total_params"] == total_before + expected
    assert rep["trainable_pct"] == pytest.approx(100 * expected / (total_before + expected), abs=1e-3)
    assert rep["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert rep["gradient_checkpointing"] is False  # the CPU plan: off
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    _step(model, tok)
    _check_only_trainable_get_grads(model)


def test_dora_and_rslora(tiny_qwen3_dir):
    model, _ = _base(tiny_qwen3_dir)
    qv = [(m.in_features, m.out_features) for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))]
    assert len(qv) == 4
    cfg = _cfg(tiny_qwen3_dir, type="lora", lora={"r": 4, "alpha": 8, "use_dora": True, "use_rslora": True,
                                                  "target_modules": ["q_proj", "v_proj"]})
    model, rep = apply_method(model, cfg, cpu_plan(cfg))
    assert rep["target_modules"] == ["q_proj", "v_proj"]
    # DoRA adds one magnitude per output feature of every adapted layer
    assert rep["trainable_params"] == sum(4 * (i + o) + o for i, o in qv)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8 / 4 ** 0.5)  # rsLoRA: alpha / sqrt(r)


def test_full_trains_everything(tiny_qwen3_dir):
    model, _ = _base(tiny_qwen3_dir)
    cfg = _cfg(tiny_qwen3_dir, type="full")
    model, rep = apply_method(model, cfg, cpu_plan(cfg))
    assert rep["trainable_params"] == rep["total_params"] == count_params(model)[1]
    assert rep["trainable_pct"] == 100.0


def test_freeze_trains_only_the_last_layers_and_final_norm(tiny_qwen3_dir):
    model, tok = _base(tiny_qwen3_dir)
    cfg = _cfg(tiny_qwen3_dir, type="freeze", freeze_trainable_layers=1)
    model, rep = apply_method(model, cfg, cpu_plan(cfg))
    last = model.model.layers[1]
    expected = sum(p.numel() for p in last.parameters()) + sum(p.numel() for p in model.model.norm.parameters())
    assert rep["trainable_params"] == expected
    assert rep["target_modules"] == ["layers[1:2]", "norm"]
    assert not any(p.requires_grad for p in model.model.layers[0].parameters())
    assert not model.model.embed_tokens.weight.requires_grad
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    _step(model, tok)
    _check_only_trainable_get_grads(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), f"frozen {n} changed"


def test_gradient_checkpointing_when_asked(tiny_qwen3_dir):
    model, tok = _base(tiny_qwen3_dir)
    cfg = _cfg(tiny_qwen3_dir, type="lora")
    cfg.train.gradient_checkpointing = True
    plan = cpu_plan(cfg)
    assert plan.gradient_checkpointing and plan.reasons["gradient_checkpointing"] == "on in config"
    model, rep = apply_method(model, cfg, plan)
    assert rep["gradient_checkpointing"] is True and model.base_model.model.is_activation_checkpointing
    # apply_method follows the plan it is given, whatever the config says
    other, _ = _base(tiny_qwen3_dir)
    other, rep2 = apply_method(other, cfg, dataclasses.replace(plan, gradient_checkpointing=False))
    assert rep2["gradient_checkpointing"] is False and not other.base_model.model.is_activation_checkpointing
    model.train()
    _step(model, tok)  # checkpointed backward still reaches the LoRA weights
    _check_only_trainable_get_grads(model)


def test_unknown_method_is_rejected_by_config(tiny_qwen3_dir):
    from chattune.errors import ConfigError

    with pytest.raises(ConfigError, match="method.type"):
        _cfg(tiny_qwen3_dir, type="prefix")


# ----------------------------------------------------------------------------------------- run dirs

CUSTOM_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_adapter_run(run_dir, tiny_dir, *, seed: int = 1, thinking: str = "off", train: list[str] | None = None,
                     method: str = "lora"):
    """A hand-made run dir: chattune.yaml + a LoRA adapter with non-zero B + tokenizer + template + gen config."""
    cfg = config_from_dict({"model": {"name_or_path": str(tiny_dir)}, "method": {"type": "lora", "lora": {"r": 4}},
                            "data": {"thinking": thinking, "train": train or []}, "output_dir": str(run_dir)})
    write_manifest(run_dir, cfg, {"conversations": 0})
    model, tok = _base(tiny_dir)
    model, _ = apply_method(model, cfg, cpu_plan(cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # peft starts B at zero (adapter == base); make the adapter really change outputs
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(run_dir)
    if method != "lora":  # e.g. a qlora run: same adapter files, the config says how it was trained
        cfg.method.type = method
        write_manifest(run_dir, cfg, {"conversations": 0})
    tok.chat_template = CUSTOM_TEMPLATE
    tok.save_pretrained(run_dir)
    (run_dir / "chat_template.jinja").write_text(CUSTOM_TEMPLATE)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    (run_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, tok.eos_token_id + 1],
                                                                "pad_token_id": tok.pad_token_id}))
    return model.eval(), tok, cfg


def test_added_pad_token_trains_only_its_rows_and_survives_the_run_dir(tmp_path):
    """When a pad token had to be added, its embedding rows train as peft trainable tokens and are
    saved with the adapter, so loading the run back gives the same model."""
    from tests.model.test_load import _tokenizer_without_pad_or_template
    from transformers import Qwen3Config, Qwen3ForCausalLM

    base_dir = _tokenizer_without_pad_or_template(tmp_path / "base")
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(vocab_size=9, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                 tie_word_embeddings=True, eos_token_id=1)).save_pretrained(base_dir)
    cfg = config_from_dict({"model": {"name_or_path": str(base_dir)}, "method": {"type": "lora", "lora": {"r": 2}}})
    tok = load_tokenizer(cfg.model)
    base = load_base(cfg.model, tokenizer=tok, device="cpu")
    assert base.resized_embeddings == 1
    model, rep = apply_method(base.model, cfg, cpu_plan(cfg), added_rows=base.resized_embeddings)
    assert rep["trainable_tokens"] == [9]
    shapes = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]
    assert rep["trainable_params"] == sum(2 * (i + o) for i, o in shapes) + 32  # + one 32-wide embedding row
    run = tmp_path / "run"
    write_manifest(run, cfg, {})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    # Only the trained rows need saving (not the whole resized embedding, peft's "auto" default).
    model.save_pretrained(run, save_embedding_layers=False)
    tok.save_pretrained(run)
    from safetensors.torch import load_file

    saved = load_file(run / "adapter_model.safetensors")
    assert not any(v.shape[0] == 10 for v in saved.values()), sorted(saved)
    lm = load_run(run, device="cpu")
    loaded, ltok = lm.model, lm.tokenizer
    assert ltok.pad_token_id == 9
    ids = torch.tensor([[0, 2, 5, 9, 1]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits)

"""chattune.rundir.load: a run loads with exactly its adapter, or not at all."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.model.test_adapters import CUSTOM_TEMPLATE, _base, _cfg, make_adapter_run

from chattune.config import config_from_dict
from chattune.errors import ModelError
from chattune.rundir.layout import ADAPTER_FILE
from chattune.rundir.load import load_run
from chattune.rundir.write import write_manifest


def test_adapter_tensors_that_do_not_load_fail_the_load(tmp_path, tiny_qwen3_dir):
    """Renamed lora_B keys: peft only warns and runs the base model; every load of the run must refuse."""
    run = tmp_path / "run"
    make_adapter_run(run, tiny_qwen3_dir)
    w = load_file(run / ADAPTER_FILE)
    save_file({k.replace("lora_B", "lora_b"): v for k, v in w.items()}, run / ADAPTER_FILE, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"(?s)adapter_model.safetensors.*does not match.*lora_B"):
        load_run(run, device="cpu")


def test_a_no_op_adapter_is_reported(tmp_path, tiny_qwen3_dir):
    """Every lora_B zero (peft's initial state): the run is its base model; the load says so."""
    run = tmp_path / "run"
    make_adapter_run(run, tiny_qwen3_dir)
    w = load_file(run / ADAPTER_FILE)
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in w.items()}, run / ADAPTER_FILE,
              metadata={"format": "pt"})
    info = load_run(run, device="cpu").info
    assert any("changes nothing" in w for w in info.warnings), info


def test_load_run_adapter_run(tmp_path, tiny_qwen3_dir):
    trained, tok, _ = make_adapter_run(tmp_path / "run", tiny_qwen3_dir, thinking="keep")
    lm = load_run(tmp_path / "run", device="cpu")
    model, tok2, info = lm.model, lm.tokenizer, lm.info
    assert info.kind == "adapter" and info.base == str(tiny_qwen3_dir) and info.thinking == "keep"
    assert info.path == str(tmp_path / "run") and info.method == "lora"
    assert not model.training
    assert tok2.chat_template == CUSTOM_TEMPLATE  # from the run dir, not the base model's folder
    eos = model.generation_config.eos_token_id
    assert eos == [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id + 1]
    assert info.eos_token_ids[0] == eos[0] and set(eos) <= set(info.eos_token_ids) and info.warnings == ()
    ids = torch.tensor([tok.encode("hello world, how are you")])
    base, _ = _base(tiny_qwen3_dir)
    with torch.no_grad():
        got, want, plain = model(ids).logits, trained(ids).logits, base(ids).logits
    torch.testing.assert_close(got, want)
    assert (got - plain).abs().max() > 1e-2  # the adapter is really applied


def test_load_run_full_run_and_plain_folder(tmp_path, tiny_qwen3_dir):
    run = tmp_path / "full"
    cfg = config_from_dict({"model": {"name_or_path": "somewhere/else"}, "method": {"type": "full"}})
    write_manifest(run, cfg, {})
    model, tok = _base(tiny_qwen3_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)  # distinguishable from the base
    model.save_pretrained(run)
    tok.save_pretrained(run)
    lm = load_run(run, device="cpu")
    loaded, info = lm.model, lm.info
    assert info.kind == "full" and info.base == "somewhere/else" and info.method == "full"
    torch.testing.assert_close(loaded.model.norm.weight, model.model.norm.weight)

    pl = load_run(tiny_qwen3_dir, device="cpu", dtype=torch.bfloat16)
    plain, pinfo = pl.model, pl.info
    assert pinfo.kind == "model" and pinfo.thinking == "off" and pinfo.dtype == "bfloat16"
    assert next(plain.parameters()).dtype == torch.bfloat16 and not plain.training


def test_load_run_incomplete_run_dir(tmp_path, tiny_qwen3_dir):
    write_manifest(tmp_path, _cfg(tiny_qwen3_dir, type="lora"), {})
    with pytest.raises(ModelError, match="holds no weights"):
        load_run(tmp_path, device="cpu")


def test_a_mixed_thinking_run_answers_with_thinking_on(tmp_path, tiny_qwen3_dir):
    """data.thinking: mixed trained both forms; inference gets one concrete policy (thinking on, as Qwen3's default)."""
    make_adapter_run(tmp_path / "run", tiny_qwen3_dir, thinking="mixed")
    assert load_run(tmp_path / "run", device="cpu").info.thinking == "keep"


def test_engines_without_weights_render_as_load_run(tmp_path, tiny_qwen3_dir):
    """vLLM's and llama.cpp's engines read a run through `infer.engine_ids.read_source`, which never loads the
    weights: the same tokenizer, template, thinking policy (mixed → keep), system prompt, date and end-of-turn ids
    as `load_run` (both go through `rundir.load.read_run_text`), for an adapter run and a plain folder."""
    from tests.export.conftest import make_run

    from chattune.data.render import prompt_ids
    from chattune.infer.engine_ids import read_source

    run = make_run(tmp_path / "run", tiny_qwen3_dir, thinking="mixed", system="Answer in one word.")
    messages = [{"role": "user", "content": "what comes after 3?"}]
    for path in (run, tiny_qwen3_dir):
        info, tok = (lm := load_run(path, device="cpu")).info, lm.tokenizer
        src = read_source(path)
        r = src.renderer
        assert (r.thinking, r.system, r.date, r.eos_token_ids) == (info.thinking, info.system, info.date,
                                                                    info.eos_token_ids)
        assert r.tokenizer.chat_template == tok.chat_template and src.is_adapter == (info.kind == "adapter")
        msgs = ([{"role": "system", "content": info.system}] if info.system else []) + messages
        assert r.with_system(messages) == msgs
        assert r.prompt_ids(msgs) == prompt_ids(tok, msgs, thinking=info.thinking, date=info.date)
    assert read_source(run).renderer.thinking == "keep" and read_source(run).renderer.system == "Answer in one word."

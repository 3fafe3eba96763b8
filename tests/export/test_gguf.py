"""`chattune export --to gguf|ollama` on tiny models with real tokenizers: the GGUF carries the run's template,
end-of-turn and pad tokens, and llama.cpp tokenizes, renders and answers like the run."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chattune.cli import app
from chattune.export.report import REPORT_JSON, REPORT_MD
from chattune.export.run import export
from tests.conftest import real_tokenizer_dir
from tests.export.conftest import HELD_OUT, TRAIN, build_tiny, make_run

N_CONVS = len(TRAIN) + len(HELD_OUT)


def _cli(*args: str):
    res = CliRunner().invoke(app, ["export", *map(str, args)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res


def _parity(rep: dict) -> dict:
    return {p["name"].split(" (")[0] if p["name"].startswith("greedy") else p["name"]: p for p in rep["parity"]}


@pytest.fixture(scope="module")
def qwen3_adapter_run(tmp_path_factory, tiny_qwen3_dir):
    return make_run(tmp_path_factory.mktemp("gguf") / "run", tiny_qwen3_dir, thinking="off")


def test_gguf_f16_from_an_adapter_run_is_token_for_token(tmp_path, qwen3_adapter_run):
    from chattune.export.gguf import load_vocab_only

    out = tmp_path / "exp"
    res = _cli(qwen3_adapter_run, "--to", "gguf", "--quant", "f16", "--out", out,
               "--eval", qwen3_adapter_run.parent / "run-eval.jsonl")
    rep = json.loads((out / REPORT_JSON).read_text())
    assert sorted(rep["files"]) == ["model-f16.gguf"] and (out / REPORT_MD).is_file()
    par = _parity(rep)
    assert par["tokenization"]["matched"] == par["tokenization"]["total"] == N_CONVS
    # 11 prompts: every user turn of every conversation (multi-turn, with system, unicode, tabs)
    assert par["template (llama.cpp)"]["matched"] == par["template (llama.cpp)"]["total"] == 11
    greedy = par["greedy answers"]  # prompts from --eval FILE when given
    assert greedy["ok"] and greedy["total"] == len(HELD_OUT) and greedy["name"].endswith("(held-out (run-eval.jsonl))")
    assert greedy["detail"]["identical"] + greedy["detail"]["ties"] == len(HELD_OUT)
    assert rep["metric"]["n"] == len(HELD_OUT) and rep["metric"]["engine"] == rep["metric"]["hf"]
    assert "tokenization" in res.output and "llama-server -m model-f16.gguf --jinja" in res.output
    # what llama.cpp itself reads back from the file
    run_tpl = (qwen3_adapter_run / "chat_template.jinja").read_text()
    gen = json.loads((qwen3_adapter_run / "generation_config.json").read_text())
    llm = load_vocab_only(out / "model-f16.gguf")
    try:
        assert llm.metadata["tokenizer.chat_template"] == run_tpl
        assert int(llm.metadata["tokenizer.ggml.eos_token_id"]) == gen["eos_token_id"][0]
        assert int(llm.metadata["tokenizer.ggml.padding_token_id"]) == gen["pad_token_id"]
    finally:
        llm.close()
    assert "--chat-template-kwargs '{\"enable_thinking\": false}'" in " ".join(rep["usage"])


def test_ollama_q8_0_modelfile_and_go_template(tmp_path, qwen3_adapter_run):
    out = tmp_path / "ollama"
    _cli(qwen3_adapter_run, "--to", "ollama", "--quant", "q8_0", "--out", out)
    rep = json.loads((out / REPORT_JSON).read_text())
    assert sorted(rep["files"]) == ["Modelfile", "model-q8_0.gguf"]
    par = _parity(rep)
    assert par["template (Ollama, Go)"]["ok"] and par["template (Ollama, Go)"]["total"] == 11
    assert par["tokenization"]["ok"] and par["template (llama.cpp)"]["ok"]
    assert par["greedy answers"]["total"] == len(HELD_OUT)  # reported for q8_0, not required equal
    mf = (out / "Modelfile").read_text().splitlines()
    assert mf[0] == "FROM ./model-q8_0.gguf" and 'PARAMETER stop "<|im_end|>"' in mf
    assert "PARAMETER num_ctx 512" in mf and "<think>\\n\\n</think>\\n\\n" in mf[1]  # thinking off, as trained


@pytest.mark.slow
@pytest.mark.parametrize("name,arch", [("llama3_1", "llama"), ("gemma3", "gemma3")])
def test_real_llama_and_gemma_tokenizers(tmp_path, name, arch):
    """Full-weights runs on the real Llama-3.1 / Gemma-3 tokenizers: tokenization, template and f16 greedy
    parity (the tiny Gemma-3 has query_pre_attn_scalar = head_dim, as llama.cpp computes Gemma-3)."""
    base = build_tiny(tmp_path / "base", real_tokenizer_dir(name), arch=arch)
    run = make_run(tmp_path / "run", base, method="full")
    out = tmp_path / "exp"
    _cli(run, "--to", "gguf", "--quant", "f16", "--out", out)
    par = _parity(json.loads((out / REPORT_JSON).read_text()))
    assert par["tokenization"]["ok"] and par["tokenization"]["total"] == N_CONVS, par["tokenization"]
    assert par["template (llama.cpp)"]["ok"], par["template (llama.cpp)"]
    assert par["greedy answers"]["ok"], par["greedy answers"]


@pytest.mark.slow
def test_qwen3_thinking_keep_ollama(tmp_path, tiny_qwen3_dir):
    """A thinking run keeps its reasoning in the template; the Go TEMPLATE opens no empty think block."""
    train = TRAIN + [{"messages": [{"role": "user", "content": "2+3?"},
                                   {"role": "assistant", "content": "5", "reasoning_content": "2 plus 3 is 5"}]}]
    run = make_run(tmp_path / "run", tiny_qwen3_dir, thinking="keep", train=train)
    out = tmp_path / "exp"
    _cli(run, "--to", "ollama", "--quant", "f16", "--out", out)
    rep = json.loads((out / REPORT_JSON).read_text())
    assert all(p["ok"] for p in rep["parity"]), rep["parity"]
    assert "<think>\\n\\n</think>" not in (out / "Modelfile").read_text()


def test_lora_only_gguf(tmp_path, qwen3_adapter_run):
    out = tmp_path / "lora"
    _cli(qwen3_adapter_run, "--to", "gguf", "--quant", "f16", "--lora-only", "--out", out)
    rep = json.loads((out / REPORT_JSON).read_text())
    assert sorted(rep["files"]) == ["adapter-f16.gguf", "base-f16.gguf", "chat_template.jinja"]
    assert rep["usage"][0].startswith("llama-server -m base-f16.gguf --lora adapter-f16.gguf --jinja")
    greedy = _parity(rep)["greedy answers"]  # llama.cpp with the GGUF LoRA applied vs the adapter run
    assert greedy["ok"] and greedy["total"] == len(HELD_OUT)


@pytest.mark.slow
def test_greedy_differences_are_judged_where_the_generated_ids_differ(tmp_path, qwen3_adapter_run, tiny_qwen3_dir):
    """A GGUF of another adapter against this run: every answer differs and none may pass as a tie. Each
    difference is judged at the first step where the generated ids differ (HF's own ids: its text
    re-tokenized is not them for random text, which judged a SmolLM2 run's differences at the wrong steps,
    with margins down to -14 counted as ties), where HF's token leads (margin >= 0)."""
    from chattune.export.verify_llamacpp import behaviour_parity
    from chattune.infer.generate import Generator

    other = make_run(tmp_path / "other", tiny_qwen3_dir, thinking="off", seed=7)
    export(other, to="gguf", quant="f16", out=tmp_path / "g", verify=False)
    gen = Generator.from_path(qwen3_adapter_run, dtype="float32")
    prompts = [c["messages"][:-1] for c in HELD_OUT]
    par, engine, hf = behaviour_parity(tmp_path / "g" / "model-f16.gguf", gen, prompts)
    hf_ids = gen.generate_ids([gen.prompt_ids(p) for p in prompts], max_new_tokens=32)
    assert not par.ok and par.detail["ties"] == 0 and len(par.detail["differences"]) == len(HELD_OUT)
    for i, d in enumerate(par.detail["differences"]):
        assert hf_ids[i][d["step"]] == d["hf_token"] != d["llama_cpp_token"] and d["margin"] >= 0
        assert d["max_abs_logit_diff"] > 0.05 * d["logit_spread"]  # another model, not rounding

"""Bad input to `chattune export`: a clear error, exit code 2, and nothing half-written beside --out."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chattune.cli import app
from chattune.errors import ChattuneError
from chattune.export import llamacpp
from chattune.export.run import export


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_qwen3_dir):
    from tests.export.conftest import make_run

    return make_run(tmp_path_factory.mktemp("err") / "run", tiny_qwen3_dir, method="full")


def _nothing_beside(out) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_unknown_target(tmp_path, full_run):
    out = tmp_path / "x"
    res = CliRunner().invoke(app, ["export", str(full_run), "--to", "onnx", "--out", str(out)])
    assert res.exit_code == 2 and "--to 'onnx' is not a target; expected one of gguf, ollama, vllm" in res.output
    _nothing_beside(out)
    res = CliRunner().invoke(app, ["export", str(full_run), "--to", "gguf", "--quant", "q3", "--out", str(out)])
    assert res.exit_code == 2 and "--quant 'q3' is not supported" in res.output


def test_run_dir_without_weights(tmp_path, full_run):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(full_run / "chattune.yaml", bare / "chattune.yaml")
    out = tmp_path / "x"
    res = CliRunner().invoke(app, ["export", str(bare), "--to", "vllm", "--out", str(out)])
    assert res.exit_code == 2 and "holds no weights" in res.output and str(bare) in res.output
    _nothing_beside(out)
    res = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), "--to", "gguf", "--out", str(out)])
    assert res.exit_code == 2 and "is not a chattune run directory" in res.output


def test_missing_llama_cpp_build(tmp_path, full_run, monkeypatch):
    out = tmp_path / "x"
    monkeypatch.setenv("CHATTUNE_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(llamacpp.LlamaCppMissing, match=r"convert_hf_to_gguf.py.*make setup"):
        export(full_run, to="gguf", out=out)
    _nothing_beside(out)
    monkeypatch.delenv("CHATTUNE_CACHE")
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(llamacpp.LlamaCppMissing, match="llama-cpp-python is not installed.*make setup"):
        export(full_run, to="ollama", out=out)
    _nothing_beside(out)


def test_unsupported_architecture_leaves_nothing(tmp_path, full_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["architectures"] = ["TotallyNewForCausalLM"]
    (run / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "x"
    with pytest.raises(ChattuneError, match=r"GGUF conversion failed.*cannot convert this architecture.*--to vllm"):
        export(run, to="gguf", quant="f16", out=out)
    _nothing_beside(out)


def test_existing_unrelated_out_is_not_overwritten(tmp_path, full_run):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ChattuneError, match="not a previous export"):
        export(full_run, to="vllm", out=out)
    assert (out / "keep.txt").read_text() == "precious"


def test_default_out_is_beside_the_run():
    from pathlib import Path

    from chattune.export.run import default_out

    assert default_out(Path("/x/run"), "gguf", "f16") == Path("/x/run-gguf-f16")
    assert default_out(Path("/x/run"), "vllm", None) == Path("/x/run-vllm")


def test_gemma3_attention_scale_rule(tmp_path):
    """What llama.cpp computes: 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 62-layer 27B."""
    from chattune.export.gguf import check_same_model

    def cfg(**kw):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "hidden_size": 5376,
                                                          "num_attention_heads": 32, "head_dim": 128,
                                                          "num_hidden_layers": 62, **kw}))
        return tmp_path

    check_same_model(cfg(query_pre_attn_scalar=168))  # Gemma-3 27B: 5376 / 32
    check_same_model(cfg(query_pre_attn_scalar=128, num_hidden_layers=34))  # head_dim elsewhere
    with pytest.raises(ChattuneError, match=r"query_pre_attn_scalar is 128.*1/sqrt\(168\)"):
        check_same_model(cfg(query_pre_attn_scalar=128))
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"model_type": "gemma3", "hidden_size": 64,
        "num_attention_heads": 4, "head_dim": 16, "num_hidden_layers": 2, "query_pre_attn_scalar": 256}}))
    with pytest.raises(ChattuneError, match=r"query_pre_attn_scalar is 256.*1/sqrt\(16\)"):
        check_same_model(tmp_path)  # the text model inside a multimodal config


@pytest.mark.slow
def test_gemma3_llama_cpp_would_compute_differently_is_refused(tmp_path):
    """transformers' default query_pre_attn_scalar (256) with head_dim 16 is another model for llama.cpp,
    which scales Gemma-3 attention by 1/sqrt(head_dim): its f16 logits moved by 0.2-0.5 (a third of their
    range) against 1e-3 with the matching value, so the export refuses instead of shipping it."""
    from tests.conftest import real_tokenizer_dir
    from tests.export.conftest import build_tiny, make_run

    base = build_tiny(tmp_path / "base", real_tokenizer_dir("gemma3"), arch="gemma3", query_pre_attn_scalar=256)
    run = make_run(tmp_path / "run", base, method="full")
    out = tmp_path / "x"
    with pytest.raises(ChattuneError, match=r"config.json: query_pre_attn_scalar is 256.*1/sqrt\(16\).*--to vllm"):
        export(run, to="gguf", quant="f16", out=out, verify=False)
    _nothing_beside(out)

"""`chattune export --to vllm`: a folder vLLM serves as is, adapters vLLM would reject are refused, and the
verification runs the bundle's own serve.sh and compares the server with the run."""
from __future__ import annotations

import json
import shlex

import pytest
from typer.testing import CliRunner

from chattune.cli import app
from chattune.errors import ChattuneError
from chattune.export.report import REPORT_JSON
from chattune.export.run import export
from tests.export.conftest import make_run


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, tiny_qwen3_dir):
    return make_run(tmp_path_factory.mktemp("vllm") / "run", tiny_qwen3_dir, thinking="keep")


def _serve_args(out) -> list[str]:
    """serve.sh's vLLM options (after the entry point every vLLM distribution has)."""
    line = (out / "serve.sh").read_text().strip().splitlines()[-1]
    head = 'exec "${VLLM_PYTHON:-python3}" -m vllm.entrypoints.openai.api_server '
    assert line.startswith(head) and line.endswith(' "$@"')
    return shlex.split(line[len(head):-len(' "$@"')])


def test_merged_bundle_layout_and_command(tmp_path, adapter_run):
    out = tmp_path / "v"
    res = CliRunner().invoke(app, ["export", str(adapter_run), "--to", "vllm", "--out", str(out), "--no-verify"])
    assert res.exit_code == 0, res.output
    model = out / "model"
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()
    assert (model / "chat_template.jinja").read_text() == (adapter_run / "chat_template.jinja").read_text()
    run_gen = json.loads((adapter_run / "generation_config.json").read_text())
    assert json.loads((model / "generation_config.json").read_text())["eos_token_id"] == run_gen["eos_token_id"]
    args = _serve_args(out)
    opts = dict(zip(args[0::2], args[1::2]))
    assert opts["--model"] == "./model" and opts["--served-model-name"] == "run"
    assert opts["--chat-template"] == "./model/chat_template.jinja" and opts["--generation-config"] == "./model"
    assert opts["--max-model-len"] == "512" and opts["--host"] == "127.0.0.1"
    assert opts["--reasoning-parser"] == "qwen3"  # a thinking run
    assert json.loads(opts["--default-chat-template-kwargs"]) == {"enable_thinking": True}
    assert json.loads((out / REPORT_JSON).read_text())["verified"] is False


def test_lora_bundle_and_refusals(tmp_path, adapter_run, tiny_qwen3_dir):
    import shutil

    out = tmp_path / "lora"
    rep = export(adapter_run, to="vllm", out=out, lora_only=True, verify=False)
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and rep.lora_only
    args = _serve_args(out)
    assert args[:2] == ["--model", str(tiny_qwen3_dir)]  # the base the adapter applies to
    i = args.index("--lora-modules")
    assert args[i + 1] == "run=./adapter" and args[args.index("--max-lora-rank") + 1] == "8"  # r=4 → vLLM's 8
    assert "--enable-lora" in args
    # modules_to_save: vLLM would reject it; the message offers the merged export, nothing is written
    bad = tmp_path / "bad"
    shutil.copytree(adapter_run, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["modules_to_save"] = ["lm_head"]
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ChattuneError, match=r"modules_to_save|lm_head.*without --lora-only"):
        export(bad, to="vllm", out=tmp_path / "bad-out", lora_only=True, verify=False)
    assert not (tmp_path / "bad-out").exists()


def test_mixed_thinking_and_trained_tool_calls_reach_serve_sh(tmp_path, tiny_qwen3_dir):
    from chattune.rundir.layout import DATA_FILE

    run = make_run(tmp_path / "mixed", tiny_qwen3_dir, thinking="mixed")
    # What training records when its rows carried tool calls (data/dataset.py: render.tool_rows).
    rec = json.loads((run / DATA_FILE).read_text())
    rec["render"] = {**rec.get("render", {}), "tool_rows": 3}
    (run / DATA_FILE).write_text(json.dumps(rec))
    out = tmp_path / "v"
    export(run, to="vllm", out=out, lora_only=True, verify=False)
    args = _serve_args(out)
    # a mixed run answers with thinking on by default: vLLM must split the think block
    assert args[args.index("--reasoning-parser") + 1] == "qwen3"
    assert json.loads(args[args.index("--default-chat-template-kwargs") + 1]) == {"enable_thinking": True}
    # Qwen3's template writes <tool_call> blocks: vLLM's hermes parser reads them back as tool_calls
    assert "--enable-auto-tool-choice" in args and args[args.index("--tool-call-parser") + 1] == "hermes"


def test_no_tool_parser_for_a_run_without_tool_rows(tmp_path, adapter_run):
    out = tmp_path / "v"
    export(adapter_run, to="vllm", out=out, lora_only=True, verify=False)
    assert "--tool-call-parser" not in _serve_args(out) and "--enable-auto-tool-choice" not in _serve_args(out)


def test_vllm_missing_or_failing_leaves_nothing(tmp_path, adapter_run, monkeypatch):
    # no vLLM venv: the export says how to install it, before any work
    monkeypatch.delenv("CHATTUNE_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("CHATTUNE_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ChattuneError, match=r"vLLM is not installed.*make vllm"):
        export(adapter_run, to="vllm", out=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    # a vLLM that dies at start: its output is shown and nothing is left at --out
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"vllm says: cannot start $*\" >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CHATTUNE_VLLM_PYTHON", str(fake))
    with pytest.raises(ChattuneError, match=r"(?s)vLLM exited with code 3 before serving.*vllm says: cannot start "
                                            r"-m vllm.entrypoints.openai.api_server --model \./model"):
        export(adapter_run, to="vllm", out=tmp_path / "b")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".export-*"))


HELD_OUT_20 = [{"messages": ([{"role": "system", "content": "Answer briefly."}] if i % 4 == 0 else [])
                + [{"role": "user", "content": f"held-out question {i}: what is {i} plus {i % 7}?"},
                   {"role": "assistant", "content": str(i + i % 7)}]} for i in range(20)]


@pytest.mark.slow
def test_vllm_serves_the_lora_bundle_like_the_run(tmp_path, qwen3_tokenizer_dir):
    """The CI check of issue 10: the bundle's own serve.sh starts vLLM (one server), `/tokenize` with the
    messages and the adapter equals chattune's rendering, and float32 greedy answers equal the run's on 20
    held-out prompts."""
    from tests.conftest import build_tiny_qwen3

    from chattune.export.vllm_launch import vllm_python

    try:
        vllm_python()
    except ChattuneError as e:  # CI must run this check: a missing venv fails, it never skips
        pytest.fail(f"{e} (the vLLM parity test needs it)", pytrace=False)
    # vLLM's CPU attention takes head sizes of 32 and more
    base = build_tiny_qwen3(tmp_path / "base", qwen3_tokenizer_dir, head_dim=32)
    run = make_run(tmp_path / "run", base, thinking="off", held_out=HELD_OUT_20, seed=3)
    rep = export(run, to="vllm", out=tmp_path / "out", lora_only=True)
    tok, greedy = rep.parity
    assert tok.name.startswith("tokenization (vLLM /tokenize)") and (tok.matched, tok.total) == (20, 20), tok
    assert greedy.total == 20 and greedy.ok, greedy
    assert greedy.detail["dtype"] == "float32" and greedy.detail["answered"] == 20
    assert greedy.detail["identical"] + greedy.detail["ties"] == 20
    report = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    assert report["verified"] is True and (tmp_path / "out" / "serve.sh").is_file()

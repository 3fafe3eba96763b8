"""`chattune export --to vllm`: a folder `vllm serve` takes as is, adapters vLLM would reject are refused, and
the bundle is what serve.sh serves."""
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
    line = (out / "serve.sh").read_text().strip().splitlines()[-1]
    assert line.startswith("exec ") and line.endswith(' "$@"')
    return shlex.split(line[len("exec "):-len(' "$@"')])


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
    assert args[:3] == ["vllm", "serve", "./model"]
    opts = dict(zip(args[3::2], args[4::2]))
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
    assert args[:3] == ["vllm", "serve", str(tiny_qwen3_dir)]  # the base the adapter applies to
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

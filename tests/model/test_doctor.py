"""chattune.model.doctor: machine report and the training-memory estimate (checked against real models)."""
from __future__ import annotations

import importlib.util
from importlib import metadata

import pytest

from chattune.config import config_from_dict
from chattune.model.adapters import apply_method, count_params
from chattune.model.doctor import GiB, doctor, estimate_memory
from chattune.model.load import load_model


def _cfg(model, **over):
    raw = {"model": {"name_or_path": str(model)}, "method": {}, "train": {}, "data": {}}
    for key, value in over.items():
        section, name = key.split("__")
        raw[section][name] = value
    return config_from_dict(raw)


@pytest.fixture(autouse=True)
def _no_weights(monkeypatch):
    """The estimate reads config.json only: loading any weights here is a bug."""
    import transformers

    def boom(*a, **k):
        raise AssertionError("estimate_memory loaded weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def test_machine_report():
    info = doctor(None)
    assert info["versions"]["torch"] == metadata.version("torch")
    assert info["versions"]["peft"] == metadata.version("peft")
    assert info["optional"]["bitsandbytes"] == (importlib.util.find_spec("bitsandbytes") is not None)
    assert 0 < info["ram_free_gb"] <= info["ram_total_gb"] and info["cpu_count"] >= 1
    import torch

    assert info["cuda"] == torch.cuda.is_available() and len(info["gpus"]) == torch.cuda.device_count()
    assert "estimate" not in info


def test_counts_match_the_real_model(tiny_qwen3_dir, monkeypatch):
    monkeypatch.undo()  # this test builds real models to compare with
    from chattune.config import ModelConfig

    for method, extra in (("lora", {"method__lora": {"r": 4, "use_dora": True}}), ("full", {}),
                          ("freeze", {"method__freeze_trainable_layers": 1})):
        cfg = _cfg(tiny_qwen3_dir, method__type=method, **extra)
        est = estimate_memory(cfg, device="cpu", free_bytes=100 * GiB)
        model = load_model(ModelConfig(name_or_path=str(tiny_qwen3_dir)), device="cpu")
        assert est["params"] == count_params(model)[1]
        _, rep = apply_method(model, cfg)
        assert est["trainable_params"] == rep["trainable_params"], method
        assert est["weights"] == est["params"] * 4 and est["dtype"] == "float32"
        assert est["optimizer"] == 8 * est["trainable_params"]


def test_estimate_grows_with_batch_and_length_and_checkpointing_saves(tiny_qwen3_dir):
    totals = [estimate_memory(_cfg(tiny_qwen3_dir, train__batch_size=b), device="cpu")["total_bytes"]
              for b in (1, 2, 4)]
    assert totals[0] < totals[1] < totals[2]
    lengths = [estimate_memory(_cfg(tiny_qwen3_dir, data__max_length=n), device="cpu") for n in (128, 512, 2048)]
    assert lengths[0]["total_bytes"] < lengths[1]["total_bytes"] < lengths[2]["total_bytes"]
    big = lengths[2]
    # logits: 4 x tokens x vocab x 4 bytes -- the 151k vocabulary dominates a tiny model
    assert big["logits"] == 4 * 8 * 2048 * big["vocab_size"] * 4 and big["vocab_size"] == 151669
    on = estimate_memory(_cfg(tiny_qwen3_dir, train__gradient_checkpointing=True), device="cpu")
    off = estimate_memory(_cfg(tiny_qwen3_dir, train__gradient_checkpointing=False), device="cpu")
    assert on["activations"] < off["activations"] and on["gradient_checkpointing"] and not off["gradient_checkpointing"]
    assert estimate_memory(_cfg(tiny_qwen3_dir), device="cpu")["gradient_checkpointing"] is False  # None on CPU


def test_qlora_weights_are_a_fraction_of_lora_on_smollm2(smollm2_gguf):
    lora = estimate_memory(_cfg("smollm2-135m-instruct", method__type="lora"), device="cuda", free_bytes=80 * GiB)
    qlora = estimate_memory(_cfg("smollm2-135m-instruct", method__type="qlora"), device="cuda", free_bytes=80 * GiB)
    assert lora["params"] == qlora["params"] > 100_000_000
    assert qlora["weights"] < 0.5 * lora["weights"]
    assert qlora["total_bytes"] < lora["total_bytes"]
    assert qlora["lora_params"] == lora["lora_params"] > 0 and lora["lora_targets"] == 30 * 7


def test_verdict_and_advice(tiny_qwen3_dir):
    cfg = _cfg(tiny_qwen3_dir, method__type="full")
    ok = estimate_memory(cfg, device="cpu", free_bytes=1000 * GiB)
    assert ok["verdict"] == "fits" and ok["advice"] == []
    bad = estimate_memory(cfg, device="cpu", free_bytes=GiB // 100)
    assert bad["verdict"] == "does not fit"
    assert any("batch_size" in t for t in bad["advice"]) and any("lora" in t for t in bad["advice"])
    q = estimate_memory(_cfg(tiny_qwen3_dir, method__type="qlora"), device="cpu", free_bytes=1000 * GiB)
    assert any("qlora runs on CPU but slower than lora" in t for t in q["advice"])


def test_cli_doctor(tmp_path, tiny_qwen3_dir):
    from typer.testing import CliRunner

    from chattune.cli import app

    res = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert "transformers" in res.output and metadata.version("transformers") in res.output
    assert "memory estimate" not in res.output
    yml = tmp_path / "c.yaml"
    yml.write_text(f"model:\n  name_or_path: {tiny_qwen3_dir}\n")
    res = CliRunner().invoke(app, ["doctor", str(yml), "train.batch_size=2", "data.max_length=64"],
                             env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert "memory estimate" in res.output and "batch 2 × 64 tokens" in res.output and "verdict:" in res.output


def test_estimate_reads_an_unconverted_gguf_header(smollm2_gguf, tmp_path, monkeypatch):
    """Without the cached conversion, the config comes from the GGUF header: no 30 s conversion for a doctor."""
    cached = estimate_memory(_cfg("smollm2-135m-instruct"), device="cpu", free_bytes=GiB)
    monkeypatch.setenv("CHATTUNE_CACHE", str(tmp_path))
    fresh = estimate_memory(_cfg("smollm2-135m-instruct"), device="cpu", free_bytes=GiB)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    assert fresh["params"] == cached["params"] and fresh["trainable_params"] == cached["trainable_params"]
    assert fresh["vocab_size"] == cached["vocab_size"] == 49152

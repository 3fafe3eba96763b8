"""chattune.model.doctor: machine report and the training-memory estimate (checked against real models)."""
from __future__ import annotations

import importlib.util
from importlib import metadata

import pytest

from chattune.config import config_from_dict
from chattune.model.adapters import apply_method, count_params
from chattune.model.doctor import doctor, plan_for
from chattune.model.load import load_model
from chattune.plan import Capabilities, GiB
from tests.conftest import cpu_plan


def estimate_memory(cfg, *, device="cpu", free_bytes=None):
    """The plan's memory estimate for `cfg` on a CPU or CUDA machine with `free_bytes` of memory."""
    caps = (Capabilities.for_card(memory=free_bytes or 100 * GiB) if device == "cuda"
            else Capabilities(device="cpu", memory_bytes=free_bytes or 100 * GiB))
    return plan_for(cfg, caps).memory


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
        raise AssertionError("the memory estimate loaded weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def test_machine_report():
    info = doctor(None).machine
    assert info["versions"]["torch"] == metadata.version("torch")
    assert info["versions"]["peft"] == metadata.version("peft")
    assert info["optional"]["bitsandbytes"] == (importlib.util.find_spec("bitsandbytes") is not None)
    import os

    import psutil

    assert info["cpu_count"] == os.cpu_count()
    assert info["ram_total_gb"] == round(psutil.virtual_memory().total / GiB, 2)
    assert 0 < info["ram_free_gb"] <= info["ram_total_gb"]
    import torch

    assert info["cuda"] == torch.cuda.is_available() and len(info["gpus"]) == torch.cuda.device_count()
    assert doctor(None).plan is None


def test_counts_match_the_real_model(tiny_qwen3_dir, monkeypatch):
    monkeypatch.undo()  # this test builds real models to compare with
    from chattune.config import ModelConfig

    for method, extra in (("lora", {"method__lora": {"r": 4, "use_dora": True}}), ("full", {}),
                          ("freeze", {"method__freeze_trainable_layers": 1})):
        cfg = _cfg(tiny_qwen3_dir, method__type=method, **extra)
        est = estimate_memory(cfg, device="cpu", free_bytes=100 * GiB)
        model = load_model(ModelConfig(name_or_path=str(tiny_qwen3_dir)), device="cpu")
        assert est.params == count_params(model)[1]
        _, rep = apply_method(model, cfg, cpu_plan(cfg))
        assert est.trainable_params == rep["trainable_params"], method
        assert est.weights == est.params * 4 and est.dtype == "float32"
        assert est.optimizer == 8 * est.trainable_params


def test_estimate_grows_with_batch_and_length_and_checkpointing_saves(tiny_qwen3_dir):
    totals = [estimate_memory(_cfg(tiny_qwen3_dir, train__batch_size=b), device="cpu").total for b in (1, 2, 4)]
    assert totals[0] < totals[1] < totals[2]
    lengths = [estimate_memory(_cfg(tiny_qwen3_dir, data__max_length=n), device="cpu") for n in (128, 512, 2048)]
    assert lengths[0].total < lengths[1].total < lengths[2].total
    big = lengths[2]
    # logits: 4 x tokens x vocab x 4 bytes -- the 151k vocabulary dominates a tiny model
    assert big.logits == 4 * 8 * 2048 * big.vocab_size * 4 and big.vocab_size == 151669
    on = estimate_memory(_cfg(tiny_qwen3_dir, train__gradient_checkpointing=True), device="cpu")
    off = estimate_memory(_cfg(tiny_qwen3_dir, train__gradient_checkpointing=False), device="cpu")
    assert on.activations < off.activations and on.gradient_checkpointing and not off.gradient_checkpointing
    assert estimate_memory(_cfg(tiny_qwen3_dir), device="cpu").gradient_checkpointing is False  # None on CPU


def test_qlora_weights_are_a_fraction_of_lora_on_smollm2(smollm2_gguf):
    lora = estimate_memory(_cfg("smollm2-135m-instruct", method__type="lora"), device="cuda", free_bytes=80 * GiB)
    qlora = estimate_memory(_cfg("smollm2-135m-instruct", method__type="qlora"), device="cuda", free_bytes=80 * GiB)
    assert lora.params == qlora.params > 100_000_000
    # bf16 on the card; NF4 + double quant (4.127 bits) for the 30 × 7 decoder Linears (106,168,320 weights),
    # fp32 for the rest (embeddings, norms: peft's k-bit preparation upcasts them)
    assert lora.weights == 2 * lora.params and lora.dtype == "bfloat16"
    assert qlora.weights == int(106_168_320 * 4.127 / 8) + (qlora.params - 106_168_320) * 4
    assert qlora.total < lora.total
    assert qlora.lora_params == lora.lora_params > 0 and lora.lora_targets == 30 * 7


def test_verdict_and_advice(tiny_qwen3_dir):
    cfg = _cfg(tiny_qwen3_dir, method__type="full")
    ok = estimate_memory(cfg, device="cpu", free_bytes=1000 * GiB)
    assert ok.verdict == "fits" and ok.advice == ()
    bad = estimate_memory(cfg, device="cpu", free_bytes=GiB // 100)
    assert bad.verdict == "does not fit"
    assert any("batch_size" in t for t in bad.advice) and any("lora" in t for t in bad.advice)
    q = doctor(_cfg(tiny_qwen3_dir, method__type="qlora"))  # this machine: a CPU
    assert q.plan.load_in_4bit and "slower than lora" in q.plan.reasons["load_in_4bit"]


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
    assert fresh.params == cached.params and fresh.trainable_params == cached.trainable_params
    assert fresh.vocab_size == cached.vocab_size == 49152


# The tutorials' setups on named cards, offline (the conftest sets HF_HUB_OFFLINE; these Hub ids are not cached,
# so the shape comes from chattune's table). Published reference: LLaMA-Factory's README "Hardware Requirement"
# table gives QLoRA 4-bit 13B 12 GB, LoRA 16-bit 13B 32 GB and 7B 16 GB, and full 16-bit 13B far above 80 GB
# (its own estimates at batch 1, cutoff 1024, with recompute).
TUTORIALS = {
    # name: (overrides, card, verdict, GiB range the total must fall in)
    "qwen3-14b qlora seq1024 b2": (["model.name_or_path=Qwen/Qwen3-14B", "method.type=qlora", "train.batch_size=2"],
                                   "rtx4090", "fits", (11, 20)),
    "qwen3-14b full bf16": (["model.name_or_path=Qwen/Qwen3-14B", "method.type=full", "train.batch_size=1"],
                            "a100-80", "does not fit", (200, 260)),
    "qwen3-14b lora bf16 b1": (["model.name_or_path=Qwen/Qwen3-14B", "train.batch_size=1",
                                "train.gradient_checkpointing=true"], "a100-80", "fits", (28, 40)),
    "qwen3-4b lora bf16 b4": (["model.name_or_path=Qwen/Qwen3-4B", "train.batch_size=4"], "24gb", "fits", (8, 20)),
    "qwen3-1.7b qlora b4": (["model.name_or_path=Qwen/Qwen3-1.7B", "method.type=qlora", "train.batch_size=4"],
                            "t4", "fits", (2, 8)),
    "qwen3-0.6b full b4": (["model.name_or_path=Qwen/Qwen3-0.6B", "method.type=full", "train.batch_size=4"],
                           "24gb", "fits", (8, 20)),
}


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_setups_on_named_cards_offline(name):
    from chattune.config import load_config

    overrides, card, verdict, (lo, hi) = TUTORIALS[name]
    plan = doctor(load_config(None, [*overrides, "data.max_length=1024"]), gpu=card).plan
    est = plan.memory
    assert est.shape_source == "chattune's shape table" and est.verdict == verdict, est.to_dict()["gib"]
    assert lo <= est.gib() <= hi, est.to_dict()["gib"]
    assert est.total == sum(est.parts().values()) and est.weights > 0 and est.activations > 0


def test_qwen3_14b_sizes_come_from_the_shipped_table():
    from chattune.config import load_config

    est = doctor(load_config(None, ["model.name_or_path=Qwen/Qwen3-14B", "method.type=qlora"]),
                 gpu_memory="24GB").plan.memory
    assert est.params == 14_768_307_200  # Qwen3-14B's published 14.8B (tied: no)
    assert est.lora_params == 64_225_280  # r16 on the 40 × 7 decoder Linears


def test_cli_doctor_answers_for_a_card_offline(tmp_path):
    from typer.testing import CliRunner

    from chattune.cli import app

    yml = tmp_path / "q.yaml"
    yml.write_text("model: {name_or_path: Qwen/Qwen3-14B}\nmethod: {type: qlora}\n"
                   "data: {max_length: 1024}\ntrain: {batch_size: 2}\n")
    res = CliRunner().invoke(app, ["doctor", str(yml), "--gpu-memory", "24GB"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for part in ("weights", "lora", "optimizer", "activations", "logits", "budget",
                 "shape from chattune's shape table"):
        assert part in res.output, part
    assert "verdict: fits on GPU with 24 GiB" in res.output
    res = CliRunner().invoke(app, ["doctor", str(yml), "--gpu", "nope"], env={"COLUMNS": "200"})
    assert res.exit_code != 0 and "rtx4090" in str(res.exception)  # chattune.cli.main prints it, exit 2

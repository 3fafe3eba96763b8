"""Distributed training (torchrun + Trainer DDP/FSDP/DeepSpeed kwargs).

The end-to-end test runs a real 2-process DDP job (gloo, CPU) on the tiny random Qwen3 and checks its loss
trajectory against a 1-process run with the same global batch, and that a resumed DDP run continues it.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import cpu_plan

from chattune.config import load_config
from chattune.errors import ConfigError
from chattune.train import distributed as dist

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------- distributed helpers


def _clear_launch_env(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "PMI_SIZE", "PMI_RANK",
                "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(var, raising=False)


def test_rank_helpers_read_the_launcher_env(monkeypatch):
    _clear_launch_env(monkeypatch)
    assert dist.world_size() == 1 and dist.is_main_process() and not dist.is_distributed()
    with dist.main_process_first():  # no process group is created outside a launch
        pass
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert dist.world_size() == 4 and dist.process_rank() == 3 and not dist.is_main_process()


def test_global_batch_is_per_device_times_accum_times_world(monkeypatch):
    _clear_launch_env(monkeypatch)
    cfg = load_config(None, ["train.batch_size=4", "train.grad_accum=3"])
    assert dist.global_batch_size(cfg) == 12
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist.global_batch_size(cfg) == 24
    assert dist.describe_batch(cfg) == ("global batch 24 sequences = 4 per device × 3 accumulation × 2 processes "
                                        "(ddp)")


def test_ddp_args_on_cpu_use_gloo_and_use_cpu(monkeypatch):
    _clear_launch_env(monkeypatch)
    cfg = load_config(None)
    assert dist.distributed_kwargs(cfg) == {"ddp_find_unused_parameters": False}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "_accelerator_available", lambda: False)
    # use_cpu is what makes accelerate build a gloo process group instead of N lone runs
    assert dist.distributed_kwargs(cfg) == {"ddp_find_unused_parameters": False, "ddp_backend": "gloo",
                                           "use_cpu": True}
    monkeypatch.setattr(dist, "_accelerator_available", lambda: True)
    assert dist.distributed_kwargs(cfg)["ddp_backend"] == "nccl"


def test_fsdp2_args_wrap_the_decoder_layer_and_build_training_arguments(monkeypatch, tiny_qwen3_dir, tmp_path):
    _clear_launch_env(monkeypatch)
    from transformers import TrainingArguments

    cfg = load_config(None, ["train.distributed=fsdp", f"model.name_or_path={tiny_qwen3_dir}",
                             "train.gradient_checkpointing=true"])
    kw = dist.distributed_kwargs(cfg, plan=cpu_plan(cfg))  # the plan's recompute moves into FSDP
    fc = kw["fsdp_config"]
    assert kw["fsdp"] is True and kw["activation_checkpointing"] is False
    assert fc["version"] == 2 and fc["transformer_layer_cls_to_wrap"] == ["Qwen3DecoderLayer"]
    assert fc["activation_checkpointing"] is True and fc["state_dict_type"] == "FULL_STATE_DICT"
    args = TrainingArguments(output_dir=str(tmp_path), **kw)
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["transformer_cls_names_to_wrap"] == "Qwen3DecoderLayer"
    assert plugin["activation_checkpointing"] is True and args.activation_checkpointing is False


def test_fsdp_moves_transformers_recompute_into_fsdp(monkeypatch, tiny_qwen3_dir):
    _clear_launch_env(monkeypatch)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir),
                           LoraConfig(r=4, target_modules="all-linear"))
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    kw = dist.distributed_kwargs(load_config(None, ["train.distributed=fsdp"]), model=model)
    assert kw["fsdp_config"]["activation_checkpointing"] is True
    assert kw["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["Qwen3DecoderLayer"]
    assert model.get_base_model().is_activation_checkpointing is False


def test_deepspeed_without_the_package_says_how_to_install_it(monkeypatch):
    # (the config-only combinations, qlora + FSDP and friends, are refused at load: tests/test_config.py)
    _clear_launch_env(monkeypatch)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "deepspeed" else object())
    with pytest.raises(ConfigError, match="pip install deepspeed"):
        dist.distributed_kwargs(load_config(None, ["train.distributed=deepspeed"]))


def test_deepspeed_presets_match_the_shipped_json_files(monkeypatch, tmp_path):
    for name in ("zero2", "zero3"):
        shipped = json.loads((REPO / "examples" / "deepspeed" / f"{name}.json").read_text())
        assert dist.deepspeed_config(name) == shipped
        assert shipped["zero_optimization"]["stage"] == int(name[-1])
    assert dist.deepspeed_config(None)["zero_optimization"]["stage"] == 2
    own = tmp_path / "ds.json"
    own.write_text("{}")
    assert dist.deepspeed_config(str(own)) == str(own)
    with pytest.raises(ConfigError, match="neither 'zero2', 'zero3' nor an existing JSON file"):
        dist.deepspeed_config("zero4")


def test_accelerate_configs_load_and_agree_with_distributed_kwargs():
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = {p.stem: load_config_from_file(str(p)) for p in (REPO / "examples" / "accelerate").glob("*.yaml")}
    assert set(loaded) == {"ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"}
    assert str(loaded["fsdp2"].fsdp_config["fsdp_version"]) == "2"
    assert loaded["fsdp2"].fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    for z in ("zero2", "zero3"):
        ds_file = loaded[f"deepspeed_{z}"].deepspeed_config["deepspeed_config_file"]
        assert json.loads((REPO / ds_file).read_text()) == dist.deepspeed_config(z)


def test_torchrun_command_and_launch_guard(monkeypatch):
    _clear_launch_env(monkeypatch)
    cmd = dist.torchrun_command(dist.train_argv("c.yaml", ["train.lr=1e-4"], resume=True), nproc=2, nnodes=2,
                                node_rank=1, master_addr="10.0.0.1", master_port=29501)
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=2",
                   "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29501",
                   "-m", "chattune", "train", "c.yaml", "train.lr=1e-4", "--resume"]
    with pytest.raises(ConfigError, match="--node-rank must be in 0..1"):
        dist.torchrun_command(["train"], nproc=1, nnodes=2, node_rank=2)
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="inside a process that torchrun"):
        dist.launch(["train", "c.yaml"], nproc=2)


def test_training_arguments_turn_off_the_cache_that_would_merge_packed_examples(tiny_qwen3_dir, tmp_path):
    """The Trainer copies TrainingArguments.use_cache (False in chattune's arguments) onto the model config."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer

    from chattune.train.trainer import training_arguments

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, attn_implementation="sdpa").train()
    a, b = torch.tensor([[11, 12, 13, 14]]), torch.tensor([[21, 22, 23, 24, 25]])
    alone = model(input_ids=b, use_cache=False).logits
    packed = dict(input_ids=torch.cat([a, b], 1), position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4]]))
    assert model.config.use_cache is True
    leaked = model(**packed).logits[:, 4:]
    assert (leaked - alone).abs().max() > 1e-3  # with the cache on, b attends to a
    cfg = load_config(None, ["train.packing=true", f"output_dir={tmp_path}"])
    Trainer(model=model, args=training_arguments(cfg, cpu_plan(cfg), run_dir=tmp_path, has_eval=False))
    assert model.config.use_cache is False
    assert torch.allclose(model(**packed).logits[:, 4:], alone, atol=1e-5)


# ----------------------------------------------------------------------------------------- 2-process DDP on CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_losses(run_dir: Path) -> list[tuple[int, float, float, int]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"], r["grad_norm"], r["tokens_seen"]) for r in rows if r.get("kind") == "train"]


@pytest.mark.slow
def test_ddp_and_fsdp_two_processes_match_one_process_and_resume(tmp_path, tiny_qwen3_dir):
    """2 processes × batch 2 == 1 process × batch 4, step by step (fp32, rtol 1e-4), through a kill-and-resume;
    and FSDP2 gives the same first steps and adapter as DDP.

    The 2-process run stops after its checkpoint at step 2 (max_steps=2 stands in for a crash) and is resumed
    with --resume to step 4. A constant LR keeps the schedule independent of max_steps.
    """
    import subprocess

    import torch

    from chattune.train.trainer import train

    recs = json.loads((REPO / "examples" / "data" / "huanhuan_200.json").read_text(encoding="utf-8"))[:24]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["instruction"]},
                                                     {"role": "assistant", "content": r["output"]}]},
                                       ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_qwen3_dir), "dtype": "float32"},
        "data": {"train": str(data), "max_length": 64, "cache_dir": str(tmp_path / "cache")},
        "method": {"type": "lora", "lora": {"r": 8, "dropout": 0.0}},
        "train": {"max_steps": 4, "lr": 1e-3, "scheduler": "constant", "warmup_ratio": 0.0, "logging_steps": 1,
                  "save_steps": 2, "report_to": ["none"], "seed": 0,
                  # the same sampler in both: grouping by length is on by default for one padded process only
                  "group_by_length": False},
    }))

    one = train(load_config(cfg_path, ["train.batch_size=4", f"output_dir={tmp_path / 'one'}"]))
    assert one.steps == 4

    def ddp(*extra: str, out: str = "two") -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "chattune", "train", str(cfg_path), "train.batch_size=2",
               f"output_dir={tmp_path / out}", *extra, "--nproc", "2", "--master-port", str(_free_port())]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})

    first = ddp("train.max_steps=2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.count("global batch 4 sequences = 2 per device × 1 accumulation × 2 processes") == 1
    assert first.stdout.count("done 2 steps") == 1  # only rank 0 prints
    assert (tmp_path / "two" / "checkpoint-2" / "trainer_state.json").is_file()
    resumed = ddp("--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from checkpoint-2" in resumed.stdout

    ref, got = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
    assert [r[0] for r in got] == [1, 2, 3, 4]  # one line per step: rank 1 never writes metrics
    assert [r[3] for r in got] == [r[3] for r in ref]  # tokens counted over both processes
    assert [r[1] for r in got] == pytest.approx([r[1] for r in ref], rel=1e-4)
    assert [r[2] for r in got] == pytest.approx([r[2] for r in ref], rel=1e-4)
    assert (tmp_path / "two" / "adapter_model.safetensors").is_file()

    # FSDP2 (gloo on CPU) takes the same 2 steps and saves the same adapter as DDP's checkpoint-2
    from safetensors.torch import load_file

    fsdp = ddp("train.max_steps=2", "train.distributed=fsdp", out="fsdp")
    assert fsdp.returncode == 0, fsdp.stdout[-3000:] + fsdp.stderr[-3000:]
    assert [r[1] for r in _train_losses(tmp_path / "fsdp")] == pytest.approx([r[1] for r in ref[:2]], rel=1e-4)
    sharded = load_file(tmp_path / "fsdp" / "adapter_model.safetensors")
    plain = load_file(tmp_path / "two" / "checkpoint-2" / "adapter_model.safetensors")
    assert sorted(sharded) == sorted(plain)
    assert all(torch.allclose(sharded[k], plain[k], rtol=1e-4, atol=1e-6) for k in plain)

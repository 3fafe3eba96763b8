"""Training road on the tiny random Qwen3 (real Qwen3 tokenizer): run-dir layout, memorisation, exact
resume, gradient-accumulation and packing equivalence, CLI exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chattune.config import config_from_dict

# 12 short facts whose completions differ in length, so micro-batches carry different numbers of
# trained tokens (what makes gradient-accumulation scaling observable).
FACTS = [{"prompt": f"Code word {i}?", "completion": " ".join(["blue", "green", "red", "amber"][: 1 + i % 4]) + f" {i}"}
         for i in range(12)]


def write_data(folder: Path) -> Path:
    path = folder / "facts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in FACTS), encoding="utf-8")
    return path


def tiny_cfg(tmp_path: Path, model_dir: Path, run: str = "run", **train):
    """A Config for the tiny model: LoRA r8, constant lr, log every step, no trackers unless asked."""
    data = tmp_path / "facts.jsonl"
    if not data.exists():
        write_data(tmp_path)
    t = {"max_steps": 6, "lr": 1e-2, "batch_size": 4, "logging_steps": 1, "save_steps": 3, "warmup_ratio": 0.0,
         "scheduler": "constant", "report_to": ["none"], **train}
    return config_from_dict({
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(data), "cache_dir": str(tmp_path / "cache")},
        "method": {"lora": {"r": 8, "alpha": 16, "dropout": t.pop("lora_dropout", 0.0)}},
        "train": t, "output_dir": str(tmp_path / run)})


def metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter_model.safetensors")


def test_cli_train_memorises_and_writes_exactly_the_run_dir_layout(tmp_path, tiny_qwen3_dir, monkeypatch):
    """`chattune train` on a memorisation set: loss falls (train and held-out), and the run dir holds
    exactly the documented files (tracker subfolders allowed), with the chat template and EOS list
    exactly as used. Output is not a terminal (CliRunner): progress comes as plain lines."""
    from typer.testing import CliRunner

    import chattune.progress

    from chattune.cli import app
    from chattune.data.render import end_of_turn_ids
    from chattune.model.load import load_tokenizer
    from chattune.rundir.read import read_run

    write_data(tmp_path)
    # A template override, to prove the saved template is the one used (not the tokenizer's original).
    tok_cfg = json.loads((tiny_qwen3_dir / "tokenizer_config.json").read_text())
    template = (tiny_qwen3_dir / "chat_template.jinja").read_text() if (tiny_qwen3_dir / "chat_template.jinja").exists() \
        else tok_cfg["chat_template"]
    (tmp_path / "custom.jinja").write_text(template + "{#- chattune test override -#}", encoding="utf-8")
    cfg = {"model": {"name_or_path": str(tiny_qwen3_dir), "chat_template": str(tmp_path / "custom.jinja")},
           "data": {"train": "facts.jsonl", "cache_dir": str(tmp_path / "cache"), "eval_ratio": 0.25},
           "method": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
           "train": {"max_steps": 8, "lr": 2e-2, "batch_size": 12, "logging_steps": 1, "save_steps": 4,
                     "eval_steps": 4, "warmup_ratio": 0.0, "scheduler": "constant"},
           "output_dir": str(tmp_path / "run")}
    import yaml

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    monkeypatch.setattr(chattune.progress, "DEFAULT_INTERVAL_S", 0.0)  # a line per step (default: every 30 s)
    res = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml"), "train.save_total_limit=1"])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("train step ")]
    assert [x.split(",")[0] for x in lines] == [f"train step {s}/8 ({100 * s / 8:.0f}%)" for s in range(9)], lines
    assert all("tok/s" in x and "ETA" in x for x in lines[1:-1]) and "loss" in lines[-1], lines
    assert "trainable params" in res.output and "9 examples" in res.output and "done 8 steps" in res.output

    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert names == {"chattune.yaml", "versions.json", "data.json", "tokenizer.json", "tokenizer_config.json",
                     "chat_template.jinja", "generation_config.json", "adapter_config.json",
                     "adapter_model.safetensors", "metrics.jsonl", "checkpoint-8", "tensorboard", "plan.json",
                     "heldout.jsonl"}, names  # the 3 conversations data.eval_ratio held out
    plan = json.loads((run / "plan.json").read_text(encoding="utf-8"))  # the plan, with a reason per decision
    assert (plan["device"], plan["dtype"], plan["attention"], plan["gradient_checkpointing"]) == \
        ("cpu", "float32", "sdpa", False)
    assert set(plan["reasons"]) >= {"dtype", "attention", "gradient_checkpointing", "liger", "torch_compile"}
    assert plan["memory"]["trainable_params"] > 0 and plan["memory"]["shape_source"] == "config.json"
    assert {p.name for p in (run / "checkpoint-8").iterdir()} >= {"trainer_state.json", "adapter_model.safetensors",
                                                                  "optimizer.pt", "rng_state.pth"}

    tok = load_tokenizer(read_run(run).config.model)
    assert (run / "chat_template.jinja").read_text(encoding="utf-8") == tok.chat_template
    assert tok.chat_template.endswith("{#- chattune test override -#}")
    gen = json.loads((run / "generation_config.json").read_text())
    assert gen["eos_token_id"][: len(end_of_turn_ids(tok))] == end_of_turn_ids(tok)
    assert gen["pad_token_id"] == tok.pad_token_id != end_of_turn_ids(tok)[0]
    assert read_run(run).is_adapter

    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(set(r) >= {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s"} for r in rows)
    evals = metrics(run, "eval")  # 3 of the 12 facts held out, eval loss every 4 steps
    assert [r["step"] for r in evals] == [4, 8] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert json.loads((run / "data.json").read_text())["eval"]["examples"] == 3
    # one step = the whole train set (batch 12 > 9): real tokens seen grow by exactly the report's token count
    n_tokens = json.loads((run / "data.json").read_text())["train"]["tokens"]
    assert [r["tokens_seen"] for r in rows] == [n_tokens * s for s in range(1, 9)]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"], [r["loss"] for r in rows]
    # logged every step: the run's train loss is the mean of the logged step losses (4-decimal logs)
    mean_logged = sum(r["loss"] for r in rows) / len(rows)
    assert metrics(run, "summary")[0]["train_loss"] == pytest.approx(mean_logged, abs=1e-3)


class _CrashAfterSave:
    """A callback that raises right after checkpoint-`step` is written (what kill -9 leaves, minus the tail)."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class Crash(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                if state.global_step == step:
                    raise KeyboardInterrupt(f"simulated crash right after checkpoint-{step} was written")

        return Crash()


# 12 examples, 3 optimizer steps per epoch: checkpoint-4 is mid-epoch 2, checkpoint-8 mid-epoch 3.
RESUME_CASES = {
    # group_by_length is on by default here (one process, padded batches); lora dropout: RNG state must resume
    "grouped": dict(lora_dropout=0.1),
    "grouped_accum": pytest.param(dict(batch_size=2, grad_accum=2), marks=pytest.mark.slow),
    "random_padded": pytest.param(dict(group_by_length=False, lora_dropout=0.1), marks=pytest.mark.slow),
    "packed_accum": pytest.param(dict(packing=True, batch_size=2, grad_accum=2), marks=pytest.mark.slow),
}


@pytest.mark.parametrize("case", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_resume_mid_epoch_2_and_3_is_bit_exact(tmp_path, tiny_qwen3_dir, case):
    """9 steps straight == crash after checkpoint-4 (mid-epoch 2), resume (past half-written checkpoints),
    crash after checkpoint-8 (mid-epoch 3), resume to 9: same adapter bits and the same loss at every step."""
    from chattune.train.trainer import train

    whole = train(tiny_cfg(tmp_path, tiny_qwen3_dir, "whole", max_steps=9, save_steps=4, **case))
    assert whole.steps == 9 and whole.epochs == 3

    cfg = tiny_cfg(tmp_path, tiny_qwen3_dir, "crashy", max_steps=9, save_steps=4, **case)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[_CrashAfterSave(4)])
    run = tmp_path / "crashy"
    assert not (run / "adapter_model.safetensors").exists()
    # What a process killed mid-save leaves: weights but no trainer_state.json, or a truncated one.
    (run / "checkpoint-6").mkdir()
    (run / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    (run / "checkpoint-5").mkdir()
    (run / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5, "log_hi')

    with pytest.raises(Exception, match="already holds a run"):
        train(cfg)  # without --resume an existing run is never overwritten
    with pytest.raises(KeyboardInterrupt):
        train(cfg, resume=True, callbacks=[_CrashAfterSave(8)])
    assert not (run / "checkpoint-5").exists() and not (run / "checkpoint-6").exists()
    resumed = train(cfg, resume=True)
    assert resumed.resumed_from == "checkpoint-8" and resumed.steps == 9

    # metrics.jsonl of the resumed run: each step once, same losses as the uninterrupted run
    assert [(r["step"], r["loss"]) for r in metrics(run)] == [(r["step"], r["loss"]) for r in metrics(tmp_path / "whole")]
    a, b = adapter(tmp_path / "whole"), adapter(run)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _one_sgd_step(tmp_path, model_dir, run, **train):
    from chattune.train.trainer import train as run_train

    # SGD without clipping: the update is lr * gradient, so any mis-scaled loss shows (Adam's first step
    # is ~lr * sign(gradient) and would hide it).
    # group_by_length off: its sampler draws another order than packing's random one; same examples here
    cfg = tiny_cfg(tmp_path, model_dir, run, max_steps=1, optim="sgd", lr=1.0, max_grad_norm=0.0,
                   save_steps=100, group_by_length=False, **train)
    run_train(cfg)
    return adapter(tmp_path / run)


def test_grad_accumulation_and_packing_match_one_full_batch(tmp_path, tiny_qwen3_dir, monkeypatch):
    """batch 4 x accum 1 == batch 2 x accum 2 == packed batch 4 == all logits computed: the loss is the
    mean over the step's trained tokens however the step is split, and packing or computing logits
    only at trained positions changes nothing."""
    import chattune.train.trainer as trainer_mod

    full = _one_sgd_step(tmp_path, tiny_qwen3_dir, "full", batch_size=4, grad_accum=1)
    accum = _one_sgd_step(tmp_path, tiny_qwen3_dir, "accum", batch_size=2, grad_accum=2)
    packed = _one_sgd_step(tmp_path, tiny_qwen3_dir, "packed", batch_size=4, grad_accum=1, packing=True)
    monkeypatch.setattr(trainer_mod, "supports_trained_logits_only", lambda model, cfg: False)
    all_logits = _one_sgd_step(tmp_path, tiny_qwen3_dir, "all_logits", batch_size=4, grad_accum=1)
    # LoRA B starts at zero, so the first step moves exactly the B matrices
    moved = [k for k in full if "lora_B" in k]
    assert moved and all(full[k].abs().max() > 1e-3 for k in moved)
    for k in moved:
        scale = full[k].abs().max()
        assert (accum[k] - full[k]).abs().max() < 1e-4 * scale, k
        assert (packed[k] - full[k]).abs().max() < 1e-4 * scale, k
        assert (all_logits[k] - full[k]).abs().max() < 1e-4 * scale, k


def test_bad_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1e-4\n  batchsize: 8\n", encoding="utf-8")
    exe = Path(sys.executable).with_name("chattune")
    res = subprocess.run([str(exe), "train", str(bad)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "train.batchsize" in res.stderr and "unknown key" in res.stderr
    res = subprocess.run([str(exe), "train", str(bad), "train.batchsize=", "train.scheduler=wavy"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "train.scheduler" in res.stderr


def test_full_fine_tune_writes_full_weights_not_an_adapter(tmp_path, tiny_qwen3_dir):
    from chattune.rundir.read import read_run
    from chattune.train.trainer import train

    cfg = tiny_cfg(tmp_path, tiny_qwen3_dir, "full", max_steps=2, save_steps=100, lr=1e-4)
    cfg.method.type = "full"
    out = train(cfg)
    run = tmp_path / "full"
    names = {p.name for p in run.iterdir() if not p.name.startswith("checkpoint-")}
    assert names == {"chattune.yaml", "versions.json", "data.json", "tokenizer.json", "tokenizer_config.json",
                     "chat_template.jinja", "generation_config.json", "config.json", "model.safetensors", "plan.json",
                     "metrics.jsonl"}, names
    info = read_run(run)
    assert not info.is_adapter and out.trainable_params > 9_000_000
    weights = load_file(run / "model.safetensors")
    assert any("embed_tokens" in k for k in weights)


def test_packing_is_refused_on_a_model_that_attends_across_examples(tmp_path, qwen3_tokenizer_dir):
    """A packed run starts with the packing proof on the loaded model: a tiny random OPT (its own
    masking code ignores position_ids) is refused before any step, naming the key and the fix."""
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    from chattune.errors import ConfigError
    from chattune.train.trainer import train

    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    torch.manual_seed(0)
    opt = OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                   num_attention_heads=2, word_embed_proj_dim=32, pad_token_id=tok.pad_token_id))
    opt.save_pretrained(tmp_path / "opt")
    tok.save_pretrained(tmp_path / "opt")
    with pytest.raises(ConfigError, match="train.packing: packing check on OPTForCausalLM: ATTENDS ACROSS"):
        train(tiny_cfg(tmp_path, tmp_path / "opt", "opt_run", packing=True))
    assert not list((tmp_path / "opt_run").glob("checkpoint-*"))


def test_chattune_train_is_the_function_even_after_the_package_is_imported(tmp_path, tiny_qwen3_dir):
    """`chattune.train(cfg)` (the README's API) must not turn into the `chattune.train` package once any
    `chattune.train.*` module has been imported."""
    import chattune
    import chattune.train.trainer

    result = chattune.train(tiny_cfg(tmp_path, tiny_qwen3_dir, "api", max_steps=1, save_steps=100))
    assert result.steps == 1 and result.run_dir == str(tmp_path / "api") and result.plan.device == "cpu"

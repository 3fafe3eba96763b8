"""Faults lose nothing that was complete: kill -9 in the middle of every file write (the next command
resumes or starts clean, never reads a half-written file), and a full disk while saving.

kill -9 is real: the command runs in a child process whose `chattune.fsutil.atomic_path` (the one
route every chattune writer takes) tears the temp file to half its size and SIGKILLs the process at
the worst moment — everything written, nothing renamed yet. Checkpoints are written by the Trainer,
so there the child dies inside ``Trainer._save_optimizer_and_scheduler`` (weights on disk, the rest not).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

KILLER = textwrap.dedent('''
    import contextlib, os, signal, sys
    from pathlib import Path
    import chattune.fsutil as fs

    orig = fs.atomic_path

    def tear(p):
        files = [p] if p.is_file() else sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: -f.stat().st_size)
        if files:
            with open(files[0], "r+b") as fh:
                fh.truncate(files[0].stat().st_size // 2)

    @contextlib.contextmanager
    def dying(path):
        with orig(path) as tmp:
            yield tmp
            if Path(path).name == os.environ.get("KILL_AT_WRITE"):
                tear(tmp)
                os.kill(os.getpid(), signal.SIGKILL)

    fs.atomic_path = dying
    ckpt = os.environ.get("KILL_AT_CHECKPOINT")
    if ckpt:
        from transformers import Trainer
        save = Trainer._save_optimizer_and_scheduler
        def save_or_die(self, output_dir):
            if Path(output_dir).name == ckpt:
                os.kill(os.getpid(), signal.SIGKILL)
            return save(self, output_dir)
        Trainer._save_optimizer_and_scheduler = save_or_die
''')


def run_killed(code: str, cwd: Path, **kill) -> None:
    """Run `code` in a child with the kill hook armed (KILL_AT_WRITE=<file/folder name> or
    KILL_AT_CHECKPOINT=checkpoint-N); assert it really died of SIGKILL."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **{k.upper(): v for k, v in kill.items()}}
    res = subprocess.run([sys.executable, "-c", KILLER + textwrap.dedent(code)], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == -signal.SIGKILL, res.stdout[-2000:] + res.stderr[-3000:]


def cli(*args: str) -> str:
    return f"from chattune.cli import app\napp({list(args)!r}, standalone_mode=False)\n"


ROWS = [{"instruction": f"Say {w}.", "output": w} for w in ("one", "two", "three", "four")]


def _data(tmp_path: Path) -> Path:
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return p


def test_kill_during_data_convert_keeps_the_previous_file_whole(tmp_path):
    src = _data(tmp_path)
    out = tmp_path / "out.jsonl"
    out.write_text('{"previous": "complete file"}\n', encoding="utf-8")
    run_killed(cli("data", "convert", str(src), "--to", str(out)), tmp_path, kill_at_write="out.jsonl")
    assert out.read_text(encoding="utf-8") == '{"previous": "complete file"}\n'
    from chattune.data.convert import convert_file

    assert convert_file(src, out) == 4  # the next command starts clean
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4


@pytest.mark.slow
def test_kill_during_tokenization_cache_write_rebuilds_the_cache(tmp_path, qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    from chattune.config import config_from_dict
    from chattune.data.dataset import build_datasets

    cfg_dict = {"model": {"name_or_path": str(qwen3_tokenizer_dir)},
                "data": {"train": str(_data(tmp_path)), "cache_dir": str(tmp_path / "cache")}}
    run_killed(f'''
        from transformers import AutoTokenizer
        from chattune.config import config_from_dict
        from chattune.data.dataset import build_datasets, cache_key
        cfg = config_from_dict({cfg_dict!r})
        tok = AutoTokenizer.from_pretrained({str(qwen3_tokenizer_dir)!r})
        os.environ["KILL_AT_WRITE"] = cache_key(cfg, tok)  # the cache entry's folder
        build_datasets(cfg, tok)
    ''', tmp_path)
    assert list((tmp_path / "cache").iterdir())  # the torn temp folder is there...
    cfg = config_from_dict(cfg_dict)
    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    train, _, report = build_datasets(cfg, tok)  # ...and never read: a clean build
    assert not report.get("cache_hit") and len(train) == 4
    again, _, report = build_datasets(cfg, tok)
    assert report.get("cache_hit") and again["input_ids"] == train["input_ids"]


@pytest.mark.slow
def test_kill_during_predict_write_keeps_the_previous_answers(tmp_path, tiny_qwen3_dir):
    data = _data(tmp_path)
    out = tmp_path / "answers.jsonl"
    out.write_text('{"previous": "answers"}\n', encoding="utf-8")
    run_killed(cli("predict", str(tiny_qwen3_dir), "--data", str(data), "--out", str(out), "--max-new-tokens", "2"),
               tmp_path, kill_at_write="answers.jsonl")
    assert out.read_text(encoding="utf-8") == '{"previous": "answers"}\n'


@pytest.mark.slow
def test_kill_during_merge_save_leaves_no_half_model(tmp_path, tiny_qwen3_dir):
    from chattune.infer.merge import merge

    from .model.test_adapters import make_adapter_run

    run = tmp_path / "run"
    make_adapter_run(run, tiny_qwen3_dir, train=[str(_data(tmp_path))])
    run_killed(cli("merge", str(run), "--out", str(tmp_path / "merged"), "--n-verify", "0"), tmp_path,
               kill_at_write="merged")
    assert not (tmp_path / "merged").exists()
    report = merge(run, tmp_path / "merged", n_verify=2)  # the next merge starts clean and verifies
    assert report["verify"]["identical"] == 2 and (tmp_path / "merged" / "model.safetensors").is_file()


@pytest.mark.slow
def test_kill_during_checkpoint_save_resumes_from_the_last_complete_one(tmp_path, tiny_qwen3_dir):
    import yaml

    from chattune.config import load_config
    from chattune.train.trainer import train

    from .train.test_trainer import write_data

    write_data(tmp_path)
    cfg = {"model": {"name_or_path": str(tiny_qwen3_dir)},
           "data": {"train": str(tmp_path / "facts.jsonl"), "cache_dir": str(tmp_path / "cache")},
           "method": {"lora": {"r": 8, "alpha": 16}},
           "train": {"max_steps": 6, "lr": 1e-2, "batch_size": 4, "save_steps": 2, "logging_steps": 1,
                     "warmup_ratio": 0.0, "report_to": ["none"]}, "output_dir": str(tmp_path / "run")}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    run_killed(cli("train", str(tmp_path / "cfg.yaml")), tmp_path, kill_at_checkpoint="checkpoint-4")
    half = tmp_path / "run" / "checkpoint-4"
    assert half.is_dir() and not (half / "trainer_state.json").exists()
    out = train(load_config(tmp_path / "cfg.yaml", []), resume=True)
    assert out.resumed_from == "checkpoint-2" and out.steps == 6


def _enospc(path):
    return OSError(28, "No space left on device", str(path))  # errno.ENOSPC


def test_disk_full_during_checkpoint_save_is_a_clear_error_and_keeps_the_previous_checkpoint(
        tmp_path, tiny_qwen3_dir, monkeypatch):
    import torch

    from chattune.errors import ChattuneError
    from chattune.rundir.checkpoints import complete_checkpoints
    from chattune.train.trainer import train

    from .train.test_trainer import tiny_cfg

    real_save = torch.save

    def full_disk_at_checkpoint_4(obj, f, *a, **kw):
        if "checkpoint-4" in str(f):
            raise _enospc(f)
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk_at_checkpoint_4)
    with pytest.raises(ChattuneError, match=r"disk full while saving checkpoint-4 .*No space left on device.*"
                                            r"last complete checkpoint: checkpoint-2.*--resume"):
        train(tiny_cfg(tmp_path, tiny_qwen3_dir, "run", max_steps=4, save_steps=2))
    run = tmp_path / "run"
    assert [c.name for c in complete_checkpoints(run)] == ["checkpoint-2"]
    assert not (run / "checkpoint-4").exists()  # the partial one is removed: it only took space


def test_disk_full_while_saving_a_merged_model_writes_nothing(tmp_path, tiny_qwen3_dir, monkeypatch):
    import chattune.infer.merge as M
    from chattune.errors import ChattuneError

    from .model.test_adapters import make_adapter_run

    run = tmp_path / "run"
    make_adapter_run(run, tiny_qwen3_dir)
    real = M._save_merged

    def full_disk(run_info, out, **kw):
        real(run_info, out, **kw)  # most of the folder is written, then the disk fills up
        raise _enospc(out / "model.safetensors")

    monkeypatch.setattr(M, "_save_merged", full_disk)
    with pytest.raises(ChattuneError, match=r"disk full while saving the merged model to .*merged: nothing was kept"
                                            r".*No space left on device"):
        M.merge(run, tmp_path / "merged", n_verify=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no merged folder, no temp folder

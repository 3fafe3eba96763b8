"""Hub datasets: a local folder laid out as a Hub dataset repo reads through datasets (card configs, splits,
column maps), the run records each source's identity, and a Hub id that cannot be reached fails at once
with the id, the reason and how to use a local copy (this machine has no Hub: HF_HUB_OFFLINE is set)."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from chattune.config import DataConfig, DataSource, config_from_dict
from chattune.data.formats import load_conversations
from chattune.data.hub import is_hub_folder, source_identity
from chattune.errors import ConfigError, DataError

CARD = """---
configs:
- config_name: qa
  data_files:
  - split: train
    path: qa/train.jsonl
  - split: test
    path: qa/test.jsonl
- config_name: chat
  data_files:
  - split: train
    path: chat/train-*.jsonl
---
# A dataset card
"""


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.fixture
def hub_folder(tmp_path, monkeypatch):
    """A Hub-style dataset repo: README.md card with two configs (qa: train/test, chat: train shards)."""
    import datasets

    # datasets' cache of the prepared tables goes to the test's folder, not the user's
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    repo = tmp_path / "repo"
    (repo / "qa").mkdir(parents=True)
    (repo / "chat").mkdir()
    (repo / "README.md").write_text(CARD, encoding="utf-8")
    (repo / "qa" / "train.jsonl").write_text("".join(json.dumps({"问题": f"q{i}", "答案": f"a{i}"}, ensure_ascii=False)
                                                   + "\n" for i in range(3)), encoding="utf-8")
    (repo / "qa" / "test.jsonl").write_text(json.dumps({"问题": "tq", "答案": "ta"}, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    for i, row in enumerate([_chat("hi", "hello"), _chat("bye", "see you")]):
        (repo / "chat" / f"train-0000{i}.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return repo


def test_hub_folder_subsets_splits_and_column_maps(hub_folder):
    qa = DataSource(path=str(hub_folder), subset="qa", split="test", columns={"question": "问题", "answer": "答案"})
    convs, report = load_conversations([qa], DataConfig())
    assert [c.messages for c in convs] == [[{"role": "user", "content": "tq"}, {"role": "assistant", "content": "ta"}]]
    assert report["files"][0]["format"] == "qa" and report["files"][0]["path"] == str(hub_folder)
    train = DataSource(path=str(hub_folder), subset="qa", columns={"question": "问题", "answer": "答案"})
    assert len(load_conversations([train], DataConfig())[0]) == 3  # split defaults to train
    chat, _ = load_conversations([DataSource(path=str(hub_folder), subset="chat")], DataConfig())
    assert [c.messages[-1]["content"] for c in chat] == ["hello", "see you"]
    assert chat[1].row == 2 and chat[1].source == str(hub_folder)


def test_hub_folder_without_a_card_uses_file_name_splits(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    repo = tmp_path / "plain"
    (repo / "data").mkdir(parents=True)
    pd.DataFrame([_chat("a", "b")]).to_parquet(repo / "data" / "train-00000-of-00001.parquet")
    pd.DataFrame([_chat("c", "d")]).to_parquet(repo / "data" / "validation-00000-of-00001.parquet")
    assert is_hub_folder(repo)
    val, _ = load_conversations([DataSource(path=str(repo), split="validation")], DataConfig())
    assert val[0].messages[-1]["content"] == "d"
    with pytest.raises(DataError, match=r"no split 'dev'; the dataset holds \['train', 'validation'\]") as e:
        load_conversations([DataSource(path=str(repo), split="dev")], DataConfig())
    assert e.value.field == "split"


def test_unreadable_hub_folder_says_what_a_folder_must_hold(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="Hub-style dataset folder .*save_to_disk folder") as e:
        load_conversations([DataSource(path=str(tmp_path / "empty"))], DataConfig())
    assert e.value.file == str(tmp_path / "empty")


def test_identity_is_the_folders_content(hub_folder):
    src = DataSource(path=str(hub_folder), subset="chat")
    first = source_identity(src)
    assert first["path"] == str(hub_folder) and len(first["sha256"]) == 64
    (hub_folder / "qa" / "test.jsonl").write_text(json.dumps({"问题": "x", "答案": "y"}) + "\n", encoding="utf-8")
    assert source_identity(src)["sha256"] != first["sha256"]


def test_run_data_report_records_the_hub_folder(hub_folder, qwen3_tokenizer, tmp_path):
    from chattune.data.dataset import build_datasets

    cfg = config_from_dict({"data": {"train": [{"path": str(hub_folder), "subset": "chat"}],
                                     "cache_dir": str(tmp_path / "cache")}})
    train, _, report = build_datasets(cfg, qwen3_tokenizer)
    assert len(train) == 2
    assert report["files"][0]["sha256"] == source_identity(cfg.data.train[0])["sha256"]
    _, _, again = build_datasets(cfg, qwen3_tokenizer)
    assert again["cache_hit"] and again["cache_key"] == report["cache_key"]


def test_config_takes_exactly_one_of_path_and_hub():
    cfg = config_from_dict({"data": {"train": [{"hub": "owner/name", "subset": "s", "split": "train",
                                                "revision": "v1"}]}})
    src = cfg.data.train[0]
    assert src.path is None and src.label == "hub:owner/name"
    with pytest.raises(ConfigError, match=r"data.train\[0\]: set exactly one of path .* and hub"):
        config_from_dict({"data": {"train": [{"hub": "owner/name", "path": "x.jsonl"}]}})
    with pytest.raises(ConfigError, match=r"data.eval\[0\].revision is for Hub datasets"):
        config_from_dict({"data": {"train": "a.jsonl", "eval": [{"path": "b.jsonl", "revision": "main"}]}})


def test_offline_hub_id_fails_at_once_with_the_fix(tmp_path):
    """HF_HUB_OFFLINE (set by the test session) and no cached copy: one clear error, no retries."""
    import datasets
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    src = DataSource(hub="nobody/no-such-dataset", split="train")
    with pytest.raises(DataError) as e:
        load_conversations([src], DataConfig())
    msg = str(e.value)
    assert "nobody/no-such-dataset" in msg and "unreachable" in msg
    assert "hf download nobody/no-such-dataset --repo-type dataset --local-dir DIR" in msg and "path: DIR" in msg


def test_unreachable_hub_fails_before_datasets_retries(tmp_path):
    """Online mode, Hub unreachable: the CLI run says so at once (one API call, no datasets retries)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  train:\n    - {hub: owner/some-dataset, split: train}\n", encoding="utf-8")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
    code = ("from chattune.config import load_config\nfrom chattune.data.formats import load_conversations\n"
            f"cfg = load_config({str(cfg)!r})\nload_conversations(cfg.data.train, cfg.data)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()[-1]
    assert "DataError" in err and "owner/some-dataset" in err and "unreachable" in err and "path: DIR" in err
    assert "Retrying" not in out.stderr  # datasets' own retries (tens of seconds) never started

"""The system prompt a run trained with reaches every inference path (issue 14, item 12).

One tiny run trains on two files: `a.jsonl` with a per-file ``system:`` and `b.jsonl` with the dataset-level
``data.system``. Each inference path must feed the model exactly the prompt tokens training put before the
answer of the same question.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

A_ROWS = [{"question": f"Alpha question {i}?", "answer": f"alpha {i}"} for i in range(3)]
B_ROWS = [{"question": f"Beta question {i}?", "answer": f"beta {i}"} for i in range(2)]
SYS_A, SYS_D = "You answer for file A.", "You are the dataset default."


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_qwen3_dir):
    from chattune.config import config_from_dict
    from chattune.data.dataset import build_datasets
    from chattune.data.render import IGNORE
    from chattune.model.load import load_tokenizer
    from chattune.train.trainer import train

    tmp = tmp_path_factory.mktemp("sysrun")
    a, b = _jsonl(tmp / "a.jsonl", A_ROWS), _jsonl(tmp / "b.jsonl", B_ROWS)
    cfg = config_from_dict({
        "model": {"name_or_path": str(tiny_qwen3_dir)},
        "data": {"train": [{"path": str(a), "system": SYS_A}, {"path": str(b)}], "system": SYS_D,
                 "cache_dir": str(tmp / "cache")},
        "method": {"lora": {"r": 4, "alpha": 8}},
        "train": {"max_steps": 1, "batch_size": 2, "report_to": ["none"], "save_steps": 100},
        "output_dir": str(tmp / "run")})
    train(cfg)
    # What training fed the model before each answer: the cached training set itself (a cache hit).
    tok = load_tokenizer(cfg.model)
    ds, _, report = build_datasets(cfg, tok)
    assert report["cache_hit"]
    prompts = {}
    for ids, labels in zip(ds["input_ids"], ds["labels"]):
        first = next(i for i, t in enumerate(labels) if t != IGNORE)
        question = next(r["question"] for r in A_ROWS + B_ROWS if r["question"] in tok.decode(ids[:first]))
        prompts[question] = list(ids[:first])
    assert len(prompts) == 5
    return tmp, Path(cfg.output_dir), prompts


def test_every_inference_path_renders_the_trained_system_prompt(trained, monkeypatch):
    from fastapi.testclient import TestClient

    from chattune.config import ServeConfig
    from chattune.infer.evaluate import evaluate, predict
    from chattune.infer.chat import ChatSession
    from chattune.infer.generate import Generator
    from chattune.infer.engine_hf import HfEngine
    from chattune.infer.serve import create_app
    from chattune.infer.merge import verification_prompts
    from chattune.rundir.read import read_run

    tmp, run, want = trained
    info = read_run(run)
    assert info.system_prompts.default == SYS_A  # 3 of 5 training conversations
    assert info.system_prompts.for_file(tmp / "a.jsonl") == SYS_A
    assert info.system_prompts.for_file(tmp / "b.jsonl") == SYS_D

    gen = Generator.from_path(run)
    assert gen.system == SYS_A
    seen: list[list[int]] = []
    real = gen.prompt_ids
    monkeypatch.setattr(gen, "prompt_ids", lambda m, tools=None: seen.append(real(m, tools)) or seen[-1])

    # eval on the per-file-system file, predict on the dataset-system file
    ev = evaluate(run, tmp / "a.jsonl", metrics=["exact"], max_new_tokens=1, generator=gen)
    assert set(map(tuple, seen)) == {tuple(want[r["question"]]) for r in A_ROWS}
    assert [real(r["messages"]) for r in ev["rows"]] == [want[r["question"]] for r in A_ROWS]
    seen.clear()
    predict(run, tmp / "b.jsonl", tmp / "pred.jsonl", max_new_tokens=1, generator=gen)
    assert set(map(tuple, seen)) == {tuple(want[r["question"]]) for r in B_ROWS}

    # chat starts with the run's system prompt; --system overrides it
    assert real(ChatSession(gen).messages + [{"role": "user", "content": A_ROWS[0]["question"]}]) == \
        want[A_ROWS[0]["question"]]
    assert ChatSession(gen, system="other").system == "other"

    # serve: a request without a system message is rendered with the run's
    seen.clear()
    with TestClient(create_app(HfEngine([gen], ServeConfig()), ServeConfig())) as client:
        r = client.post("/v1/chat/completions", json={
            "model": "x", "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "user", "content": A_ROWS[1]["question"]}]})
        assert r.status_code == 200, r.text
    assert set(map(tuple, seen)) == {tuple(want[A_ROWS[1]["question"]])}

    # merge verification prompts are training's prompts
    vp, source = verification_prompts(info, gen.tokenizer, 5)
    assert source == "training data" and sorted(map(tuple, vp)) == sorted(map(tuple, want.values()))


def test_a_hub_source_gets_the_system_prompt_training_recorded_for_it(tmp_path, tiny_qwen3_dir):
    """Eval (and export's held-out prompts) of a run whose data names a Hub dataset: that source has no path,
    and training recorded its system prompt under its label (hub:owner/name)."""
    from chattune.config import DataSource
    from chattune.infer.evaluate import data_config_for
    from chattune.rundir.layout import DATA_FILE
    from tests.export.conftest import make_run

    run = make_run(tmp_path / "run", tiny_qwen3_dir)
    record = json.loads((run / DATA_FILE).read_text(encoding="utf-8"))
    record["system_prompts"] = {"default": SYS_D, "sources": [{"path": "hub:owner/qa", "sha256": "f" * 16,
                                                               "system": SYS_A}]}
    (run / DATA_FILE).write_text(json.dumps(record), encoding="utf-8")
    assert data_config_for(run, DataSource(hub="owner/qa", split="test")).system == SYS_A
    assert data_config_for(run, DataSource(hub="owner/other", split="test")).system == SYS_D

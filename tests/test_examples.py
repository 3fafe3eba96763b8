"""Every example config loads, validates, and its data files read in the declared format."""
from __future__ import annotations

from pathlib import Path

import pytest

from chattune.config import DEFAULT_MODEL, load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMES = ["qwen3_city_date_lora", "smollm2_city_date_lora", "qwen3_huanhuan_lora", "qwen3_14b_qlora",
         "qwen3_qa_dialog", "text_continuation", "demo_city_date", "demo_weather_tool"]


def test_the_example_set_is_complete():
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_example_loads_and_its_data_reads(name, tmp_path, monkeypatch):
    from chattune.data.formats import load_conversations

    monkeypatch.chdir(tmp_path)  # relative data paths must resolve against the YAML's folder
    path = EXAMPLES / f"{name}.yaml"
    assert path.read_text(encoding="utf-8").lstrip().startswith("#"), "each example starts with a comment"
    cfg = load_config(path)
    assert cfg.output_dir.startswith("runs/")
    for split in (cfg.data.train, cfg.data.eval):
        for src in split:
            assert Path(src.path).is_file(), src.path
    convs, report = load_conversations(cfg.data.train, cfg.data)
    assert len(convs) >= 20 and report["files"][0]["records"] >= 20
    if cfg.data.eval:
        assert load_conversations(cfg.data.eval, cfg.data)[0]


def test_example_specifics():
    huanhuan = load_config(EXAMPLES / "qwen3_huanhuan_lora.yaml")
    assert huanhuan.data.system == "假设你是皇帝身边的女人--甄嬛。" and huanhuan.train.report_to == ["swanlab"]
    assert huanhuan.data.train[0].format == "alpaca"
    assert load_config(EXAMPLES / "qwen3_14b_qlora.yaml").method.type == "qlora"
    assert load_config(EXAMPLES / "smollm2_city_date_lora.yaml").model.name_or_path == DEFAULT_MODEL
    assert load_config(EXAMPLES / "qwen3_city_date_lora.yaml").model.name_or_path == "Qwen/Qwen3-0.6B"
    qa = load_config(EXAMPLES / "qwen3_qa_dialog.yaml")
    assert qa.data.eval_ratio > 0 and qa.data.train[0].system and qa.data.train[0].format == "qa"
    assert load_config(EXAMPLES / "text_continuation.yaml").data.train[0].format == "text"


def test_smollm2_example_takes_the_tutorial_spreadsheet(tmp_path, monkeypatch):
    from chattune.data.formats import load_conversations

    monkeypatch.chdir(tmp_path)
    cfg = load_config(EXAMPLES / "smollm2_city_date_lora.yaml",
                      ["data.train=[{path: data/train.xlsx, format: prompt_completion}]"])
    convs, _ = load_conversations(cfg.data.train, cfg.data)
    assert len(convs) == 50 and convs[0].messages[-1]["role"] == "assistant"

"""evaluate / compare / predict end to end on the scripted tiny Qwen3 (known answers) and the random one."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tests.infer.test_generate import SCRIPTS, scripted_model_dir

ROWS = [
    {"instruction": "alpha", "output": SCRIPTS["alpha"]},        # exact
    {"instruction": "beta", "output": "one two three"},          # contained in the answer
    {"instruction": "gamma", "output": "你好，世界！"},            # answer adds 龘
    {"instruction": "epsilon", "output": '{"city": "北京", "n": 3}'},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scripted_dir(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    return scripted_model_dir(tmp_path_factory, qwen3_tokenizer_dir)


@pytest.fixture(scope="module")
def scripted_gen(scripted_dir):
    from chattune.infer.generate import Generator

    return Generator.from_path(scripted_dir)


def test_evaluate_scores_files_and_loss(tmp_path, scripted_dir, scripted_gen):
    from chattune.infer.evaluate import evaluate

    data = write_jsonl(tmp_path / "test.jsonl", ROWS)
    res = evaluate(scripted_dir, data, metrics=["exact", "contains", "rouge_l", "loss"], max_new_tokens=16,
                   batch_size=3, out_dir=tmp_path / "out", generator=scripted_gen)
    assert res["n"] == 4
    outputs = [r["output"] for r in res["rows"]]
    assert outputs == [SCRIPTS["alpha"], "one two three four five six seven eight nine ten", SCRIPTS["gamma"],
                       SCRIPTS["epsilon"]]
    m = res["metrics"]
    assert m["exact"] == pytest.approx(1 / 4)
    assert m["contains"] == pytest.approx(3 / 4)
    # rows: 1, P=3/10 R=1 -> 6/13, chars P=6/7 R=1 -> 12/13, '{"city":"北京"}' vs '{"city":"北京","n":3}' (words)
    beta = 2 * 0.3 / 1.3
    gamma = 12 / 13
    assert [r["scores"]["rouge_l"] for r in res["rows"]][:3] == pytest.approx([1.0, beta, gamma])
    # Reference loss: the model's own answer costs almost nothing, a different one a lot.
    losses = [r["loss"] for r in res["rows"]]
    assert losses[0] < 0.1 and losses[1] > 1.0
    n = [r["loss_tokens"] for r in res["rows"]]
    assert n[0] == 7  # 6 answer tokens + <|im_end|>, exactly what training trains
    assert m["loss"] == pytest.approx(sum(a * b for a, b in zip(losses, n)) / sum(n))
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    # Files: one line per example, consistent with the returned numbers; nothing half-written left.
    lines = [json.loads(x) for x in Path(res["predictions_path"]).read_text(encoding="utf-8").splitlines()]
    assert [x["output"] for x in lines] == outputs and lines[2]["input"] == "gamma"
    assert lines[1]["reference"] == "one two three" and lines[1]["scores"]["exact"] == 0.0
    doc = json.loads(Path(res["metrics_path"]).read_text(encoding="utf-8"))
    assert doc["n"] == 4 and doc["metrics"] == pytest.approx(m)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "predictions.jsonl"]


def test_json_fields_metric_end_to_end(tmp_path, scripted_dir, scripted_gen):
    from chattune.infer.evaluate import evaluate

    data = write_jsonl(tmp_path / "j.jsonl", [
        {"instruction": "epsilon", "output": '{"city": "北京"}'},           # all right
        {"instruction": "epsilon", "output": '{"city": "北京", "n": 3}'},   # city right, n missing
        {"instruction": "alpha", "output": '{"city": "上海"}'},             # output is not JSON
    ])
    res = evaluate(scripted_dir, data, metrics=["json_fields"], max_new_tokens=16, generator=scripted_gen)
    m = res["metrics"]
    assert m["json_fields"] == pytest.approx(1 / 3)
    assert m["json_valid"] == pytest.approx(2 / 3) and m["json_invalid"] == 1
    assert m["json_field/city"] == pytest.approx(2 / 3) and m["json_field/n"] == 0.0
    assert m["json_field_acc"] == pytest.approx(2 / 4)
    assert res["predictions_path"] is None  # no out_dir: nothing written


def test_reference_loss_equals_training_loss_per_row(tiny_qwen3_dir):
    """Batched, left-padded, logits_to_keep loss == the model's own loss on the training rendering."""
    import torch

    from chattune.data.render import render_conversation
    from chattune.infer.evaluate import reference_nll
    from chattune.infer.generate import Generator

    gen = Generator.from_path(tiny_qwen3_dir)
    convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "天气怎么样？"},
              {"role": "assistant", "content": "晴天。"}],
             [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
              {"role": "user", "content": "count to five please"}, {"role": "assistant", "content": "1 2 3 4 5"}]]
    got = reference_nll(gen, convs, batch_size=2)
    for conv, (nll, n) in zip(convs, got):
        [seq] = render_conversation(conv, gen.tokenizer, loss="last")
        with torch.no_grad():
            ref = gen.model(input_ids=torch.tensor([seq.input_ids]), labels=torch.tensor([seq.labels])).loss
        assert n == sum(t != -100 for t in seq.labels)
        assert nll / n == pytest.approx(float(ref), rel=1e-4)


def fake_run_dir(path: Path, weights_dir: Path, base: str, system: str) -> Path:
    """A full-weights run dir as `chattune train` leaves it (config + weights + tokenizer)."""
    import shutil

    from chattune.config import config_from_dict

    shutil.copytree(weights_dir, path)
    cfg = config_from_dict({"model": {"name_or_path": base}, "data": {"system": system}, "method": {"type": "full"}})
    (path / "chattune.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    return path


def test_compare_base_vs_tuned_run_dir(tmp_path, scripted_dir, tiny_qwen3_dir):
    from chattune.infer.compare import compare

    run = fake_run_dir(tmp_path / "run", scripted_dir, str(tiny_qwen3_dir), "Be brief.")
    data = write_jsonl(tmp_path / "test.jsonl", ROWS)
    res = compare("base", run, data, out_dir=tmp_path / "cmp", metrics=["exact", "contains"], max_new_tokens=12)
    assert res["base_model"] == str(tiny_qwen3_dir)
    assert res["tuned"]["exact"] == pytest.approx(1 / 4) and res["tuned"]["contains"] == pytest.approx(3 / 4)
    assert res["base"]["exact"] == 0.0  # a random model
    assert [r["tuned_ok"] for r in res["rows"]] == ["✓", "✗", "✗", "✗"]
    assert all(r["base_ok"] == "✗" for r in res["rows"])
    out = tmp_path / "cmp"
    md = (out / "compare.md").read_text(encoding="utf-8")
    assert "| exact | 0.0000 | 0.2500 | +0.2500 |" in md
    assert "| 0 | alpha | Hello! How are you? |" in md
    assert json.loads((out / "compare.json").read_text(encoding="utf-8"))["tuned"]["exact"] == pytest.approx(0.25)
    for side in ("base", "tuned"):
        preds = [json.loads(x) for x in (out / side / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(preds) == 4
        # Both models saw the run's training system prompt, rendered the same way.
        assert preds[0]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_predict_keeps_reference_and_accepts_prompt_only_rows(tmp_path, scripted_dir, scripted_gen):
    from chattune.infer.evaluate import predict

    data = write_jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "user", "content": "alpha"}]},
                                               {"messages": [{"role": "user", "content": "gamma"},
                                                             {"role": "assistant", "content": "ref"}]}])
    res = predict(scripted_dir, data, tmp_path / "out.jsonl", batch_size=2, max_new_tokens=16, generator=scripted_gen)
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert res["n"] == 2 and [r["output"] for r in rows] == [SCRIPTS["alpha"], SCRIPTS["gamma"]]
    assert "reference" not in rows[0] and rows[1]["reference"] == "ref"


def test_bad_inputs_are_clear_errors(tmp_path, scripted_dir, scripted_gen):
    from chattune.errors import ConfigError, DataError
    from chattune.infer.evaluate import evaluate

    data = write_jsonl(tmp_path / "t.jsonl", ROWS[:1])
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate(scripted_dir, data, metrics=["accuracy"], generator=scripted_gen)
    with pytest.raises(DataError, match=r"t\.jsonl, line 1: json_fields needs references that are JSON"):
        evaluate(scripted_dir, data, metrics=["json_fields"], generator=scripted_gen, max_new_tokens=4)


def test_eval_and_predict_cli(tmp_path, scripted_dir, monkeypatch):
    """...and, with output that is not a terminal (CliRunner), progress comes as plain lines."""
    from typer.testing import CliRunner

    import chattune.progress

    from chattune.cli import app
    from chattune.errors import ConfigError

    monkeypatch.setattr(chattune.progress, "DEFAULT_INTERVAL_S", 0.0)  # a line per batch (default: every 30 s)
    runner = CliRunner()
    data = write_jsonl(tmp_path / "test.jsonl", ROWS)
    res = runner.invoke(app, ["eval", str(scripted_dir), "--data", str(data), "--metrics", "exact,contains",
                              "--out", str(tmp_path / "ev"), "--max-new-tokens", "16", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    assert f"generating 2/{len(ROWS)} ({100 * 2 // len(ROWS)}%)" in res.output, res.output
    assert f"generating {len(ROWS)}/{len(ROWS)} (100%)" in res.output and "ETA" in res.output
    assert "exact" in res.output and "0.2500" in res.output
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    assert doc["metrics"]["exact"] == pytest.approx(0.25) and doc["metrics"]["contains"] == pytest.approx(0.75)

    res = runner.invoke(app, ["predict", str(scripted_dir), "--data", str(data), "--out", str(tmp_path / "p.jsonl"),
                              "--max-new-tokens", "16", "--limit", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["output"], r["reference"]) for r in rows] == [(SCRIPTS["alpha"], SCRIPTS["alpha"]),
                                                               (SCRIPTS["beta"], "one two three")]

    res = runner.invoke(app, ["eval", str(scripted_dir), "--data", str(data), "--metrics", "exact,acc"])
    assert isinstance(res.exception, ConfigError) and "acc" in str(res.exception)


def test_predict_writes_the_format_its_suffix_names(tmp_path, scripted_dir, scripted_gen):
    """--out answers.xlsx is a real workbook, .csv a real CSV; an unknown suffix fails before any generation."""
    import pandas as pd

    from chattune.errors import DataError
    from chattune.infer.evaluate import predict

    data = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    for suffix, read in ((".xlsx", pd.read_excel), (".csv", pd.read_csv)):
        out = tmp_path / f"answers{suffix}"
        predict(scripted_dir, data, out, max_new_tokens=16, generator=scripted_gen)
        table = read(out)
        assert list(table["output"]) == [SCRIPTS["alpha"], "one two three four five six seven eight nine ten"]
        assert list(table["input"]) == ["alpha", "beta"] and list(table["reference"]) == [r["output"] for r in ROWS[:2]]
        assert json.loads(table["messages"][0]) == [{"role": "user", "content": "alpha"}]

    class NoGen:
        def __getattr__(self, name):
            raise AssertionError("generated before checking the output suffix")

    with pytest.raises(DataError, match=r"answers\.txt.*expected one of .jsonl, .json, .xlsx, .csv"):
        predict(scripted_dir, data, tmp_path / "answers.txt", generator=NoGen())
    assert not (tmp_path / "answers.txt").exists()

"""`chattune demo`: the report writer on hand-made metrics, the recipe/YAML mirror, and (slow) the whole road
on the tiny random Qwen3: synthesise → eval base → train → eval tuned → report.md/report.html/loss.png."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from chattune import report
from chattune.errors import ChattuneError

ROOT = Path(__file__).resolve().parent.parent

BASE = {"exact": 0.0, "json_fields": 0.02, "json_valid": 0.25, "json_invalid": 75, "json_field_acc": 0.11,
        "json_field/city": 0.2, "json_field/date": 0.02}
TUNED = {"exact": 0.93, "json_fields": 0.95, "json_valid": 1.0, "json_invalid": 0, "json_field_acc": 0.975,
         "json_field/city": 0.96, "json_field/date": 0.99}


def _summary(**extra) -> dict:
    return {"title": "demo test", "model": "m", "n_train": 400, "n_test": 100, "run_dir": "runs/demo/run",
            "metrics": {"base": BASE, "tuned": TUNED},
            "examples": [{"input": "a|b", "reference": '{"city": "x"}', "base": "```json\nno", "tuned": '{"city": "x"}',
                          "base_ok": False, "tuned_ok": True}],
            "stages": [{"name": "train (lora)", "seconds": 123.4}, {"name": "evaluate", "seconds": 20.0}],
            "total_seconds": 143.4, "recipe": {"learning rate": 0.001}, "commands": ["chattune demo --n-train 400"],
            **extra}


def _md_table(md: str) -> dict[str, list[str]]:
    """label → [base, tuned, change] from the report's before/after table."""
    section = md.split("## Before / after")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("metric", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def test_report_writes_md_html_png_with_the_given_numbers(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"kind": "train", "step": s, "loss": 3.0 / s} for s in range(1, 6)] + [{"kind": "summary", "step": 5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")

    paths = report.write_report(tmp_path, _summary(), metrics_jsonl=run / "metrics.jsonl")

    assert paths["loss_points"] == 5
    png = Path(paths["loss_png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    md = Path(paths["markdown"]).read_text(encoding="utf-8")
    table = _md_table(md)
    assert table["exact match"] == ["0.0%", "93.0%", "+93.0 pts"]
    assert table["all JSON fields right"] == ["2.0%", "95.0%", "+93.0 pts"]
    assert table["invalid JSON (count)"] == ["75", "0", "-75"]
    assert table["date right"] == ["2.0%", "99.0%", "+97.0 pts"]
    assert "![training loss](loss.png)" in md
    # example row: the pipe is escaped, the newline shown as ⏎, marks per model
    assert "| a\\|b | {\"city\": \"x\"} | ```json⏎no | ✗ | {\"city\": \"x\"} | ✓ |" in md
    assert "| train (lora) | 2 min 3 s |" in md and "| **total** | **2 min 23 s** |" in md
    assert "```bash\nchattune demo --n-train 400\n```" in md

    page = Path(paths["html"]).read_text(encoding="utf-8")
    assert "data:image/png;base64," in page  # self-contained
    row = re.search(r"<tr data-key='exact'><td>exact match</td><td>(.*?)</td><td>(.*?)</td>", page)
    assert row.groups() == ("0.0%", "93.0%")
    assert "a|b" in page and "```json\nno" in page and "<script" not in page


def test_report_escapes_html_and_needs_both_metric_sets(tmp_path):
    s = _summary()
    s["examples"][0]["tuned"] = "<script>alert(1)</script>"
    page = report.render_html(s)
    assert "<script>" not in page and "&lt;script&gt;" in page
    with pytest.raises(ValueError, match="base"):
        report.write_report(tmp_path, {"metrics": {"tuned": TUNED}})
    # no metrics.jsonl: no PNG, no image link, the report still says everything else
    paths = report.write_report(tmp_path, _summary())
    assert paths["loss_png"] is None and "![training loss]" not in Path(paths["markdown"]).read_text(encoding="utf-8")


def test_loss_curve_reads_only_train_records(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"kind": "train", "step": 1, "loss": 2.5}\n{"kind": "eval", "step": 1, "eval_loss": 9}\n\n'
                 '{"kind": "train", "step": 2, "loss": null}\n{"kind": "train", "step": 3, "loss": 1.0}\n',
                 encoding="utf-8")
    assert report.read_loss_curve(p) == [(1, 2.5), (3, 1.0)]
    assert report.read_loss_curve(tmp_path / "missing.jsonl") == []


def test_builtin_recipe_equals_the_example_yaml():
    """DEMO_RECIPE is what runs from a fresh clone or a wheel; the YAML documents it. They must not drift."""
    from chattune.config import load_config
    from chattune.demo import DEMO_RECIPE, demo_config

    from_yaml = load_config(ROOT / "examples" / "demo_city_date.yaml").model_dump(mode="json")
    builtin = demo_config().model_dump(mode="json")
    for cfg in (from_yaml, builtin):  # the demo fills these in itself
        cfg["data"].pop("train")
        cfg.pop("output_dir")
    assert builtin == from_yaml
    assert DEMO_RECIPE["model"]["name_or_path"] == "smollm2-135m-instruct"
    assert demo_config(model="x", overrides=["train.lr=5e-4"]).model_dump()["train"]["lr"] == 5e-4
    assert yaml.safe_load((ROOT / "examples" / "demo_city_date.yaml").read_text())["eval"]["metrics"] == \
        ["json_fields", "exact"]


def test_demo_refuses_a_folder_it_did_not_write(tmp_path):
    from chattune.demo import run_demo

    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ChattuneError, match="notes.txt"):
        run_demo(out=tmp_path, n_train=4, n_test=2)
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"
    with pytest.raises(ChattuneError, match="n-train"):
        run_demo(out=tmp_path / "new", n_train=0)


@pytest.mark.slow
def test_demo_end_to_end_on_the_tiny_model(tmp_path, tiny_qwen3_dir):
    """The CLI road end to end (tiny random Qwen3, a few steps): every file, the printed table, and the
    report's numbers equal to the eval metrics files and the run's metrics.jsonl."""
    from typer.testing import CliRunner

    from chattune.cli import app

    out = tmp_path / "demo"
    args = ["demo", "--model", str(tiny_qwen3_dir), "--n-train", "16", "--n-test", "6", "--out", str(out),
            "train.max_steps=6", "train.lr=1e-2", "train.batch_size=4", "train.warmup_ratio=0",
            "eval.max_new_tokens=8", "eval.batch_size=6", f"data.cache_dir={tmp_path / 'cache'}"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output

    for name in ("report.md", "report.html", "loss.png", "demo.json", "train.yaml", "data/train.jsonl",
                 "data/test.jsonl", "eval_base/metrics.json", "eval_tuned/metrics.json", "run/adapter_model.safetensors",
                 "run/metrics.jsonl"):
        assert (out / name).is_file(), name
    train_rows = [json.loads(x) for x in (out / "data/train.jsonl").read_text(encoding="utf-8").splitlines()]
    test_rows = [json.loads(x) for x in (out / "data/test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(train_rows) == 16 and len(test_rows) == 6
    assert not {r["sentence"] for r in train_rows} & {r["sentence"] for r in test_rows}

    base = json.loads((out / "eval_base/metrics.json").read_text(encoding="utf-8"))
    tuned = json.loads((out / "eval_tuned/metrics.json").read_text(encoding="utf-8"))
    assert base["n"] == tuned["n"] == 6
    table = _md_table((out / "report.md").read_text(encoding="utf-8"))
    labels = {k: label for k, label, *_ in report.metric_rows(base["metrics"], tuned["metrics"])}
    for key in ("exact", "json_fields", "json_valid"):
        assert table[labels[key]][:2] == [report.format_value(key, base["metrics"][key]),
                                          report.format_value(key, tuned["metrics"][key])], key
    page = (out / "report.html").read_text(encoding="utf-8")
    exact_row = re.search(r"<tr data-key='exact'><td>[^<]*</td><td>(.*?)</td><td>(.*?)</td>", page).groups()
    assert exact_row == (report.format_value("exact", base["metrics"]["exact"]),
                         report.format_value("exact", tuned["metrics"]["exact"]))

    summary = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    assert summary["metrics"] == {"base": base["metrics"], "tuned": tuned["metrics"]}
    assert len(summary["examples"]) == 6 and summary["examples"][0]["input"] == test_rows[0]["sentence"]
    assert [s["name"].split(" ")[0] for s in summary["stages"]] == ["prepare", "synthesise", "evaluate", "train",
                                                                      "evaluate", "write"]
    assert all(s["seconds"] >= 0 for s in summary["stages"]) and summary["total_seconds"] > 0
    losses = [json.loads(x) for x in (out / "run/metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [r["loss"] for r in losses if r["kind"] == "train"]
    assert len(losses) == 6 and losses[-1] < losses[0]  # it trained, and the curve has every step
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["commands"][1].startswith("chattune demo --model ") and "train.max_steps=6" in summary["commands"][1]
    # the printed table and the report path
    assert "exact match" in res.output and "report:" in res.output and "report.md" in res.output

    # a second demo into the same folder replaces the first
    res2 = CliRunner().invoke(app, args[:-7] + ["train.max_steps=1", "eval.max_new_tokens=2", "eval.batch_size=6",
                                                f"data.cache_dir={tmp_path / 'cache'}"], catch_exceptions=False)
    assert res2.exit_code == 0, res2.output
    assert "replacing" in res2.output
    assert len([r for r in map(json.loads, (out / "run/metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"]) == 1


@pytest.mark.slow
def test_reduced_demo_on_the_real_default_model(tmp_path, smollm2_gguf):
    """What `make demo` runs, cut down for CI: the built-in recipe on the real default model
    (SmolLM2-135M-Instruct from its GGUF), 24 train / 8 held-out sentences, 6 optimizer steps."""
    from typer.testing import CliRunner

    from chattune.cli import app
    from chattune.demo import demo_config

    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--n-train", "24", "--n-test", "8", "--out", str(out),
                                   "train.max_steps=6", f"data.cache_dir={tmp_path / 'cache'}"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output

    used = yaml.safe_load((out / "train.yaml").read_text(encoding="utf-8"))
    recipe = demo_config().model_dump(mode="json")
    assert used["model"]["name_or_path"] == "smollm2-135m-instruct"
    assert used["method"] == recipe["method"] and used["eval"] == recipe["eval"]
    assert {k: v for k, v in used["train"].items() if k != "max_steps"} == \
        {k: v for k, v in recipe["train"].items() if k != "max_steps"}
    assert used["train"]["max_steps"] == 6
    for name in ("eval_base", "eval_tuned"):
        m = json.loads((out / name / "metrics.json").read_text(encoding="utf-8"))
        assert m["n"] == 8 and 0.0 <= m["metrics"]["exact"] <= 1.0
        preds = (out / name / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(preds) == 8
    losses = [r["loss"] for r in map(json.loads, (out / "run/metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert (out / "run" / "adapter_model.safetensors").is_file()
    assert "exact match" in res.output and "report.md" in res.output

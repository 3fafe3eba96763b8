"""The demo report writer (`chattune.report`) on hand-made metrics: markdown table, HTML page, loss PNG."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chattune import report

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


def md_table(md: str) -> dict[str, list[str]]:
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
    table = md_table(md)
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

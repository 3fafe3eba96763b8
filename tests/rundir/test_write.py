"""chattune.rundir.write: what training writes besides the weights."""
from __future__ import annotations

import json

from tests.data.test_dataset import ROWS, _cfg, _write_jsonl

from chattune.data.dataset import build_datasets
from chattune.data.formats import read_conversations
from chattune.rundir.layout import HELDOUT_FILE
from chattune.rundir.write import write_manifest


def test_eval_ratio_held_out_rows_are_saved_in_the_run_dir(tmp_path, qwen3_tokenizer):
    """Issue 14 item 14: the rows an eval_ratio split held out land in the run dir as a file `eval --data`
    reads, so a user can evaluate on exactly what training never saw (from a warm cache too)."""
    cfg = _cfg(tmp_path, _write_jsonl(tmp_path / "a.jsonl", ROWS), eval_ratio=0.1)
    for attempt in ("cold", "warm"):
        ds, ev, rep = build_datasets(cfg, qwen3_tokenizer)
        assert rep["cache_hit"] == (attempt == "warm")
        run = tmp_path / f"run_{attempt}"
        write_manifest(run, cfg, rep)
        held = read_conversations(run / HELDOUT_FILE)
        assert len(held) == len(ev) == 4
        answers = {c.messages[-1]["content"] for c in held}
        train_answers = {r["output"] for r in ROWS} - answers
        assert len(train_answers) == 36 and answers <= {r["output"] for r in ROWS}
        assert json.loads((run / "data.json").read_text())["heldout"]["conversations"] == 4


def test_no_held_out_file_without_eval_ratio(tmp_path, qwen3_tokenizer):
    cfg = _cfg(tmp_path, _write_jsonl(tmp_path / "a.jsonl", ROWS[:5]))
    _, ev, rep = build_datasets(cfg, qwen3_tokenizer)
    write_manifest(tmp_path / "run", cfg, rep)
    assert ev is None and not (tmp_path / "run" / HELDOUT_FILE).exists()

"""Greedy parity is judged on prompts the run did not train on: --eval FILE, else data.eval, else the
data.eval_ratio split the run dir keeps (heldout.jsonl); a run with none of them is refused, never
compared on its last training rows."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from chattune.cli import app
from chattune.export.run import heldout_prompts
from chattune.rundir.read import read_run
from tests.export.conftest import HELD_OUT, TRAIN, make_run, write_jsonl


def _prompt(conv: dict) -> list[dict]:
    return conv["messages"][:-1]


def test_split_heldout_eval_file_and_none(tmp_path, tiny_qwen3_dir):
    split = make_run(tmp_path / "split", tiny_qwen3_dir, method="full", held_out=HELD_OUT[:3], held_out_as="split")
    assert (split / "heldout.jsonl").is_file()
    prompts, source = heldout_prompts(split, read_run(split).config)
    assert prompts == [_prompt(c) for c in HELD_OUT[:3]] and source == "held-out (heldout.jsonl)"
    # --eval FILE wins over the run's own held-out data
    ev = write_jsonl(tmp_path / "mine.jsonl", HELD_OUT[3:])
    prompts, source = heldout_prompts(split, read_run(split).config, ev)
    assert prompts == [_prompt(c) for c in HELD_OUT[3:]] and source == "held-out (mine.jsonl)"
    assert not any(p == _prompt(c) for p in prompts for c in TRAIN)
    # no held-out data at all: refused before any work, saying what to pass
    bare = make_run(tmp_path / "bare", tiny_qwen3_dir, method="full", held_out=None)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["export", str(bare), "--to", "vllm", "--out", str(out)])
    assert res.exit_code == 2 and "no held-out data" in res.output and "--eval FILE" in res.output, res.output
    assert not out.exists()
    # --no-verify needs no prompts; --eval makes the verification possible
    res = CliRunner().invoke(app, ["export", str(bare), "--to", "vllm", "--out", str(out), "--no-verify"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "export_report.json").read_text())["verified"] is False


@pytest.mark.slow
def test_gguf_greedy_parity_runs_on_the_split(tmp_path, tiny_qwen3_dir):
    """The product route: an eval_ratio run's GGUF is compared on its heldout.jsonl prompts."""
    from chattune.export.run import export

    run = make_run(tmp_path / "run", tiny_qwen3_dir, held_out=HELD_OUT[:3], held_out_as="split")
    rep = export(run, to="gguf", quant="f16", out=tmp_path / "g")
    greedy = next(p for p in rep.parity if p.name.startswith("greedy"))
    assert greedy.name.endswith("(held-out (heldout.jsonl))") and greedy.total == 3 and greedy.ok, greedy

"""The UI's API without a browser: it answers with what the library (and so the CLI) says, refuses paths
outside its roots, caps uploads, starts nothing on a bad config, and reads run statuses from the run dirs."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
import yaml

from chattune.config import config_from_dict, load_config
from chattune.data.check import check_data
from chattune.errors import ConfigError
from chattune.model.doctor import plan_for
from chattune.plan import probe_capabilities

from .conftest import REPO

QA = "examples/data/qa_dialog.jsonl"


def test_paths_outside_the_roots_are_refused(ui_client, ui_roots, tmp_path):
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    (ui_roots.runs / "link.jsonl").symlink_to(outside)  # a symlink inside a root pointing out of it
    for path in ("../../../etc/passwd", "/etc/passwd", str(outside), "link.jsonl", "runs/../../secret.jsonl"):
        r = ui_client.post("/api/data/check", json={"path": path})
        assert r.status_code == 400, path
        assert r.json()["field"] == "path" and "outside the folders this UI may read" in r.json()["error"]
    r = ui_client.get("/api/runs/..%2F..%2F..%2Fetc")
    assert r.status_code == 400 and "no run" in r.json()["error"]
    assert ui_client.post("/api/data/check", json={"path": QA}).status_code == 200  # inside: fine


def test_uploads_are_capped_named_safely_and_kept_under_runs(ui_client, ui_roots):
    ok = ui_client.post("/api/upload", params={"name": "../../evil name.jsonl"}, content=b'{"q": 1}\n')
    assert ok.status_code == 200
    saved = ui_roots.runs / ok.json()["path"]
    assert saved.parent == ui_roots.runs / "uploads" and saved.name.endswith("-evil_name.jsonl")
    big = ui_client.post("/api/upload", params={"name": "big.jsonl"}, content=b"x" * (64 * 1024 + 1))
    assert big.status_code == 400 and "upload limit" in big.json()["error"]
    exe = ui_client.post("/api/upload", params={"name": "tool.exe"}, content=b"MZ")
    assert exe.status_code == 400 and ".jsonl" in exe.json()["error"]
    assert sorted(p.name for p in (ui_roots.runs / "uploads").iterdir()) == [saved.name]  # nothing half-written


def test_data_check_is_the_cli_report(ui_client, tiny_qwen3_dir):
    from transformers import AutoTokenizer

    r = ui_client.post("/api/data/check", json={"path": QA, "model": str(tiny_qwen3_dir)})
    assert r.status_code == 200
    body = r.json()
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    want = check_data([str(REPO / QA)], tokenizer=tok)
    assert body["report"]["tokens"] == json.loads(json.dumps(want["tokens"]))
    assert body["report"]["files"][0]["format"] == "qa" and body["report"]["fidelity"]["failed"] == 0
    first = body["preview"][0]["sequences"][0]["segments"]
    trained = "".join(text for text, on in first if on)
    assert trained.endswith("<|im_end|>") and trained.startswith("星河云客服热线")


@pytest.mark.parametrize("name,body,expect", [
    ("gbk.jsonl", '{"question": "价格？", "answer": "一百元"}\n'.encode("gbk"), "not valid UTF-8"),
    ("cols.jsonl", b'{"foo": "a", "bar": "b"}\n', "no known data shape"),
])
def test_bad_files_get_the_readers_message(ui_client, ui_roots, name, body, expect):
    path = ui_client.post("/api/upload", params={"name": name}, content=body).json()["path"]
    report = ui_client.post("/api/data/check", json={"path": path}).json()["report"]
    assert report["errors"] == check_data([str(ui_roots.runs / path)])["errors"]
    assert expect in report["errors"][0] and str(ui_roots.runs / path) in report["errors"][0]
    assert report["exit_code"] == 2


def test_form_has_every_config_field_with_description_and_default(ui_client):
    from chattune.config import Config
    from chattune.config_doc import field_docs

    fields = {f["key"]: f for f in ui_client.get("/api/config/schema").json()["fields"]}
    assert set(fields) == {d.key for d in field_docs() if "[]" not in d.key}
    assert all(f["description"] for f in fields.values())
    assert fields["train.lr"]["default"] == Config().train.lr and not fields["train.lr"]["advanced"]
    assert fields["method.type"]["options"] == ["lora", "qlora", "full", "freeze"]
    assert fields["train.gradient_checkpointing"]["options"] == [None, True, False]


def _cli_lines(overrides):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    return [line.strip() for line in str(e.value).splitlines()[1:]]


def test_config_errors_are_the_cli_lines_next_to_their_fields(ui_client, tiny_qwen3_dir):
    base = {"data.train": [QA], "model.name_or_path": str(tiny_qwen3_dir)}
    r = ui_client.post("/api/config/check", json={"values": {**base, "train.lr": "abc", "method.type": "lorax"}}).json()
    assert not r["ok"]
    cli = _cli_lines(["train.lr=abc", "method.type=lorax"])
    assert r["errors"]["train.lr"] == [cli[1]] and r["errors"]["method.type"] == [cli[0]]
    # a cross-field rule: shown at the first key it names
    r = ui_client.post("/api/config/check", json={"values": {**base, "train.load_best_model_at_end": True}}).json()
    assert r["errors"]["train.load_best_model_at_end"] == [_cli_lines(["train.load_best_model_at_end=true"])[0]]
    # the YAML tab goes through load_config as a file
    r = ui_client.post("/api/config/check", json={"yaml": "train:\n  lrr: 1\n"}).json()
    assert r["errors"][""][0].startswith("train.lrr: unknown key")  # no field to put it next to
    r = ui_client.post("/api/config/check", json={"values": {**base, "output_dir": "../outside"}}).json()
    assert "inside the runs folder" in r["errors"]["output_dir"][0]
    r = ui_client.post("/api/config/check", json={"values": {**base, "model.name_or_path": "/usr/lib"}}).json()
    assert "outside the folders this UI may read" in r["errors"]["model.name_or_path"][0]


def test_check_estimates_memory_and_start_refuses_a_bad_config(ui_client, ui_roots, tiny_qwen3_dir):
    good = {"data.train": [QA], "model.name_or_path": str(tiny_qwen3_dir), "output_dir": "r1"}
    r = ui_client.post("/api/config/check", json={"values": good}).json()
    assert r["ok"] and r["config_yaml"]
    # what `chattune doctor` says: the run plan's memory estimate for this machine
    plan = plan_for(config_from_dict(yaml.safe_load(r["config_yaml"])), probe_capabilities())
    want = plan.memory.to_dict()
    assert {row["decision"]: row["reason"] for row in r["plan"]} == plan.reasons
    assert {k: r["estimate"][k] for k in ("params", "trainable_params", "total")} == \
        {k: want[k] for k in ("params", "trainable_params", "total")}
    assert r["output_dir"] == str(ui_roots.runs / "r1")
    bad = ui_client.post("/api/train/start", json={"values": {**good, "train.batch_size": "0"}})
    assert bad.status_code == 400 and "train.batch_size" in bad.json()["errors"]
    assert not (ui_roots.runs / "r1").exists() and not (ui_roots.runs / ".ui" / "jobs").exists()


def _fake_run(runs, name, *, weights=False, checkpoint=False, age_s=0):
    d = runs / name
    d.mkdir(parents=True)
    (d / "chattune.yaml").write_text(f"output_dir: {d}\ntrain:\n  max_steps: 4\n", encoding="utf-8")
    m = d / "metrics.jsonl"
    m.write_text(json.dumps({"kind": "train", "step": 2, "loss": 1.5}) + "\n", encoding="utf-8")
    os.utime(m, (time.time() - age_s, time.time() - age_s))
    if weights:
        (d / "adapter_model.safetensors").write_bytes(b"")
    if weights:
        (d / "plan.json").write_text(json.dumps({"device": "cpu", "attention": "sdpa", "reasons": {
            "device": "cpu (2 cores)", "attention": "cpu: no flash-attention kernels"}}), encoding="utf-8")
    if checkpoint:
        (d / "checkpoint-2").mkdir()
        (d / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "max_steps": 4}')
    return d


def test_run_statuses_come_from_the_run_dirs_and_job_records(ui_client, ui_roots):
    from chattune.ui.jobs import Job, Jobs

    _fake_run(ui_roots.runs, "done", weights=True, age_s=3600)
    _fake_run(ui_roots.runs, "demo/run", checkpoint=True, age_s=3600)   # nested, killed mid-run
    _fake_run(ui_roots.runs, "live", age_s=5)                            # started elsewhere, writing now
    broken = _fake_run(ui_roots.runs, "broken", age_s=3600)
    Jobs(ui_roots)._save(Job(name="broken", run_dir=str(broken), config="", log="", cmd=["x"], pid=2**22 + 7,
                             started=time.time(), proc_start=None, returncode=1))
    runs = {r["name"]: r for r in ui_client.get("/api/runs").json()["runs"]}
    assert {k: v["status"] for k, v in runs.items()} == {"done": "finished", "demo/run": "interrupted",
                                                         "live": "running", "broken": "failed"}
    assert runs["demo/run"]["resumable"] and not runs["done"]["resumable"]
    assert runs["demo/run"]["step"] == 2 and runs["demo/run"]["max_steps"] == 4
    detail = ui_client.get("/api/runs/demo/run").json()
    assert detail["metrics"]["train"] == [[2, 1.5]] and "max_steps: 4" in detail["config"]
    assert detail["demo"] is None and detail["evals"] == [] and detail["plan"] is None
    assert ui_client.get("/api/runs/done").json()["plan"] == [
        {"decision": "device", "value": "cpu", "reason": "cpu (2 cores)"},
        {"decision": "attention", "value": "sdpa", "reason": "cpu: no flash-attention kernels"}]
    # what `chattune eval --compare` and `chattune demo` write: before/after tables and the demo report
    cmp = {"base": {"exact": 0.0}, "tuned": {"exact": 0.5}, "n": 2, "primary": "exact", "base_model": "b",
           "data": "t.jsonl", "rows": [{"index": 0, "input": "q", "reference": "a", "base_output": "x",
                                        "tuned_output": "a", "base_ok": "✗", "tuned_ok": "✓"}]}
    (ui_roots.runs / "demo" / "run" / "eval" / "t").mkdir(parents=True)
    (ui_roots.runs / "demo" / "run" / "eval" / "t" / "compare.json").write_text(json.dumps(cmp), encoding="utf-8")
    (ui_roots.runs / "demo" / "report.md").write_text("# demo\n", encoding="utf-8")
    (ui_roots.runs / "demo" / "report.html").write_text("<h1>demo</h1>", encoding="utf-8")
    detail = ui_client.get("/api/runs/demo/run").json()
    assert detail["evals"] == [{"name": "t", "compare": {k: cmp[k] for k in ("base", "tuned", "n", "primary",
                                                                            "base_model", "data")},
                                "rows": cmp["rows"]}]
    assert detail["demo"] == {"markdown": "# demo\n", "html": "<h1>demo</h1>"}
    # what `chattune export` writes beside the run: its report, listed with the run
    from chattune.export.report import REPORT_JSON

    parity = [{"name": "tokenization", "matched": 3, "total": 3, "ok": True, "percent": 100.0, "first_mismatch": None}]
    for folder, run_dir in (("run-gguf-q8_0", ui_roots.runs / "demo" / "run"), ("run2-gguf", ui_roots.runs / "x")):
        (ui_roots.runs / "demo" / folder).mkdir()
        (ui_roots.runs / "demo" / folder / REPORT_JSON).write_text(json.dumps({
            "run_dir": str(run_dir), "target": "gguf", "quant": "q8_0", "files": {"m.gguf": 2**20}, "seconds": 3.0,
            "verified": True, "parity": parity, "usage": ["llama-server -m m.gguf"]}), encoding="utf-8")
    exports = ui_client.get("/api/runs/demo/run").json()["exports"]
    assert [(e["folder"], e["target"], e["size"], e["parity"]) for e in exports] == [
        ("run-gguf-q8_0", "gguf", 2**20, parity)]  # run2-gguf belongs to another run


def test_a_key_guards_the_api_and_open_addresses_need_one(ui_roots):
    from fastapi.testclient import TestClient

    from chattune.ui import run_ui
    from chattune.ui.app import UiSettings, create_app

    client = TestClient(create_app(UiSettings(roots=ui_roots, api_key="s3cret")))
    assert client.get("/api/info").json()["auth"] is True
    assert client.get("/").status_code == 200  # the page itself holds no data
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    os.environ.pop("CHATTUNE_API_KEY", None)
    with pytest.raises(ConfigError, match="without an API key"):
        run_ui(ui_roots.runs, host="0.0.0.0", port=0)


@pytest.mark.slow
def test_stop_then_resume_a_training_job(ui_client, ui_roots, tiny_qwen3_dir):
    """A real `chattune train` subprocess: stopped after its first checkpoint, interrupted and resumable,
    resumed to the end. (Stop is SIGINT to the job's process group: the trainer ends cleanly.)"""
    # Enough steps after the first checkpoint that the stop always lands mid-run: an idle machine trains the tiny
    # model at ~10 steps/s, and 12 steps used to finish before the stop arrived.
    steps = 80
    values = {"data.train": [QA], "model.name_or_path": str(tiny_qwen3_dir), "output_dir": "sr",
              "train.max_steps": str(steps), "train.save_steps": "2", "train.logging_steps": "1",
              "train.batch_size": "2", "train.report_to": "[none]"}
    # As under a non-interactive shell's background job (a CI runner, `nohup`): SIGINT is ignored, and the job
    # inherits that. Stop must still stop it.
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert ui_client.post("/api/train/start", json={"values": values}).status_code == 200
    finally:
        signal.signal(signal.SIGINT, inherited)
    run = ui_roots.runs / "sr"
    deadline = time.monotonic() + 240
    while not (run / "checkpoint-2" / "trainer_state.json").is_file():
        assert time.monotonic() < deadline, ui_client.get("/api/runs/sr").json()["log"]
        time.sleep(0.05)
    assert ui_client.get("/api/runs/sr").json()["status"] == "running"
    assert ui_client.post("/api/runs/sr/stop").status_code == 200
    while (row := ui_client.get("/api/runs/sr").json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert row["status"] == "interrupted" and row["resumable"], row["log"]
    assert ui_client.post("/api/runs/sr/resume").status_code == 200
    while (row := ui_client.get("/api/runs/sr").json())["status"] == "running":
        assert time.monotonic() < deadline + 240
        time.sleep(1)
    assert row["status"] == "finished", row["log"]
    assert row["step"] == steps and "resuming from checkpoint-" in row["log"]

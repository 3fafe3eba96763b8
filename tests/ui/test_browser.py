"""The whole road in a real browser (Debian's chromium driven by Playwright): data check → bad inputs →
train a tiny Qwen3 → live loss curve → the finished run → streamed chat → compare with base.

Screenshots of every page go to a tmp folder (and to $CHATTUNE_UI_SHOTS when set, for a person to look at).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHATTUNE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser(p):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no chromium at {CHROMIUM}: run `make setup` (apt-get install chromium)", pytrace=False)
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS)


@pytest.fixture
def ui_url(ui_roots):
    from chattune.infer.serve import BackgroundServer, bind_socket
    from chattune.ui.app import UiSettings, create_app

    app = create_app(UiSettings(roots=ui_roots, max_upload_bytes=1 << 20))
    with BackgroundServer(app, bind_socket("127.0.0.1", 0)) as server:
        yield server.url


@pytest.mark.slow
def test_whole_road_in_browser(ui_url, ui_roots, tiny_qwen3_dir, tmp_path):
    try:
        import playwright.sync_api as pw
    except ImportError:
        pytest.fail("playwright is not installed: run `make setup` (pip install playwright)", pytrace=False)
    from chattune.data.check import check_data

    shots = tmp_path / "shots"
    shots.mkdir()
    keep = os.environ.get("CHATTUNE_UI_SHOTS")
    t0 = time.monotonic()

    def shot(page, name):
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        print(f"{name}: {time.monotonic() - t0:.1f} s")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shots / f"{name}.png", Path(keep) / f"{name}.png")

    with pw.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(60_000)
        page.goto(ui_url)

        # --- Data: pick the QA file, name the model: shape, report, histogram, highlighted tokens
        page.fill("#data-model", str(tiny_qwen3_dir))
        page.select_option("#data-file", "examples/data/qa_dialog.jsonl")
        page.wait_for_selector("#data-preview .seq .t")
        assert page.inner_text("#data-shape") == "qa"
        report = page.inner_text("#data-report")
        assert "60/60 sampled conversations match apply_chat_template" in report
        assert page.locator("svg .bar").count() >= 1
        trained = page.locator("#data-preview .seq .t").first.inner_text()
        assert "<|im_end|>" in trained and "<|im_start|>" not in trained  # the answer and its end-of-turn only
        shot(page, "1-data")

        # --- bad files: the reader's own message (what `chattune data check` prints), next to the file field
        bad_bytes = '{"question": "价格是多少？", "answer": "一百元"}\n'.encode("gbk")
        for name, body in (("gbk.jsonl", bad_bytes), ("cols.jsonl", b'{"foo": "a", "bar": "b"}\n')):
            page.set_input_files("#data-upload", files=[{"name": name, "mimeType": "application/json", "buffer": body}])
            page.wait_for_function("(n) => document.querySelector('#err-path').textContent.includes(n)", arg=name)
            shown = page.inner_text("#err-path")
            uploaded = next((ui_roots.runs / "uploads").glob(f"*-{name}"))
            assert shown == "\n".join(check_data([str(uploaded)])["errors"])
        gbk = next((ui_roots.runs / "uploads").glob("*-gbk.jsonl"))
        assert "not valid UTF-8" in check_data([str(gbk)])["errors"][0]
        shot(page, "2-data-bad-file")
        page.select_option("#data-file", "examples/data/qa_dialog.jsonl")
        page.wait_for_selector("#data-preview .seq .t")

        # --- Train: an invalid value is refused next to its field and nothing starts
        page.click("#data-to-train")
        assert page.input_value('[data-key="data.train"]') == "examples/data/qa_dialog.jsonl"
        page.fill('[data-key="train.lr"]', "abc")
        page.click("#train-start")
        err = page.locator('.ferr[data-for="train.lr"]')
        err.wait_for()
        assert err.inner_text() == "train.lr: 'abc': Input should be a valid number, unable to parse string as a number"
        assert not list(ui_roots.runs.glob(".ui/jobs/*.json")) and {p.name for p in ui_roots.runs.iterdir()} <= {
            "uploads", ".ui"}  # no job, no run dir
        shot(page, "3-train-invalid")
        for key, value in (("train.lr", "0.01"), ("train.max_steps", "8"), ("train.logging_steps", "1"),
                           ("train.batch_size", "4"), ("data.max_length", "128"),
                           ("train.report_to", "[none]"), ("output_dir", "browser-run")):
            page.fill(f'[data-key="{key}"]', value)
        page.click("#train-check")
        page.wait_for_selector("#train-estimate")
        assert "gradient_checkpointing" in page.inner_text("#train-plan")  # the run plan's decisions, with reasons
        assert "fits" in page.inner_text("#train-estimate")
        page.click("#train-start")
        page.wait_for_function("document.querySelectorAll('#train-live circle.pt.train').length >= 2")
        shot(page, "4-train-live")

        # --- a reload leaves training running; the Runs page follows it live until it finishes
        page.reload()
        page.click("#nav-runs")
        page.click('#runs-table tr[data-run="browser-run"]')
        page.wait_for_selector("#run-view .badge.b-finished", timeout=120_000)
        assert page.inner_text('#runs-table tr[data-run="browser-run"] .badge') == "finished"
        detail = page.inner_text("#run-detail")
        assert "qa_dialog.jsonl" in detail and "output_dir:" in detail
        assert page.locator("#run-detail circle.pt.train").count() == 8
        assert "attention" in page.inner_text("#run-plan")  # plan.json written by the run
        shot(page, "5-runs")

        # --- Chat: streamed reply from the run (text arrives in several updates)
        page.click("#run-chat")
        page.wait_for_selector("#chat-col-0")
        page.fill("#chat-max", "24")
        page.evaluate("""() => { window.__updates = 0; new MutationObserver(() => window.__updates++)
            .observe(document.querySelector('#chat-cols'), {subtree: true, childList: true, characterData: true}); }""")
        page.fill("#chat-input", "星河云的客服电话是多少？")
        page.click("#chat-send")
        page.wait_for_selector("#chat-col-0 .msg.assistant.done")
        assert page.inner_text("#chat-col-0 .msg.assistant").strip()
        assert page.evaluate("window.__updates") > 3
        shot(page, "6-chat")

        # --- Compare: base and tuned answer the same prompt side by side
        page.check("#chat-compare")
        page.fill("#chat-input", "如何重置我的登录密码？")
        page.click("#chat-send")
        page.wait_for_function("document.querySelectorAll('.msg.assistant.done').length === 2")
        heads = page.locator("#chat-cols h3").all_inner_texts()
        assert heads[0] == "base model" and heads[1].startswith("tuned")
        shot(page, "7-chat-compare")
        browser.close()
    print(f"browser test: {time.monotonic() - t0:.1f} s")

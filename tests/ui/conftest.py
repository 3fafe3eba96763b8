"""Fixtures for the UI tests: the app on a real socket, with a runs folder and allowed roots in tmp."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ui_roots(tmp_path, tiny_qwen3_dir):
    from chattune.ui.paths import Roots

    runs = tmp_path / "runs"
    runs.mkdir()
    return Roots(runs=runs.resolve(), extra=(REPO, Path(tiny_qwen3_dir).resolve()))


@pytest.fixture
def ui_client(ui_roots):
    from fastapi.testclient import TestClient

    from chattune.ui.app import UiSettings, create_app

    with TestClient(create_app(UiSettings(roots=ui_roots, max_upload_bytes=64 * 1024))) as client:
        yield client

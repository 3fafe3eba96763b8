"""CLI commands: model (registered on the app in cli/__init__.py)."""
from __future__ import annotations

from . import app, console, data_app  # noqa: F401

"""The Data page: ``chattune data check`` and ``chattune data preview`` on one file, for a named tokenizer/model.

The report and the preview are `check_data` and `preview` themselves; this module only resolves the file
inside the allowed roots, loads the tokenizer the way the CLI does (``--model`` or ``--tokenizer``) and
keeps a few tokenizers loaded, since a 151k-token tokenizer takes a second or more to read.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..errors import ChattuneError
from .paths import PathError, Roots

_TOKENIZERS: OrderedDict[tuple[str, str], object] = OrderedDict()
_LOCK = threading.Lock()
MAX_TOKENIZERS = 4
PREVIEW_N = 3


def local_or_hub(name: str, roots: Roots) -> str:
    """A model/tokenizer name as given: a local folder must lie inside the roots; anything else is a Hub id
    or alias (``smollm2-135m-instruct``), which the loader resolves (offline: from the local cache)."""
    if name.startswith(("/", ".", "~")) or any((r / name).exists() for r in roots.all) or Path(name).exists():
        return str(roots.resolve(name))
    return name


def tokenizer_for(roots: Roots, model: str | None, tokenizer: str | None):
    """The tokenizer ``chattune data check --model M`` / ``--tokenizer T`` would use (None when neither)."""
    from ..config import ModelConfig
    from ..model.load import load_tokenizer

    if model and tokenizer:
        raise ChattuneError("name a model or a tokenizer, not both")
    if not (model or tokenizer):
        return None
    kind, name = ("model", model) if model else ("tokenizer", tokenizer)
    name = local_or_hub(str(name).strip(), roots)
    with _LOCK:
        if (kind, name) in _TOKENIZERS:
            _TOKENIZERS.move_to_end((kind, name))
            return _TOKENIZERS[(kind, name)]
    tok = load_tokenizer(ModelConfig(name_or_path=name) if kind == "model" else ModelConfig(tokenizer=name))
    with _LOCK:
        _TOKENIZERS[(kind, name)] = tok
        while len(_TOKENIZERS) > MAX_TOKENIZERS:
            _TOKENIZERS.popitem(last=False)
    return tok


def check_file(roots: Roots, body: dict, user_error) -> dict:
    """Run the data check (and, with a tokenizer, the preview) for the Data page.

    Args:
        roots: allowed folders.
        body: ``{path, model | tokenizer, format, system, loss, thinking, max_length, n}`` as the CLI options.
        user_error: the exception class to raise for a bad field (message, field name).

    Returns:
        ``{"path", "report": check_data's report, "preview": preview's items or None}``; a file that cannot
        be read gives a report whose ``errors`` hold the reader's message (as ``chattune data check`` prints).
    """
    from ..data.check import check_data
    from ..data.preview import preview

    try:
        path = roots.resolve(str(body.get("path") or ""))
    except PathError as e:
        raise user_error(str(e), "path") from None
    which = "model" if body.get("model") else "tokenizer"
    try:
        tok = tokenizer_for(roots, body.get("model") or None, body.get("tokenizer") or None)
    except ChattuneError as e:
        raise user_error(str(e), which) from None
    except (OSError, ValueError) as e:  # transformers' own "can't load tokenizer" errors
        raise user_error(f"cannot load the tokenizer of {body.get(which)!r}: {e}", which) from None
    opts: dict[str, Any] = {"fmt": body.get("format") or "auto", "system": body.get("system") or None,
            "loss": body.get("loss") or "assistant", "thinking": body.get("thinking") or "off",
            "max_length": int(body["max_length"]) if body.get("max_length") else None}
    try:
        report = check_data([str(path)], tokenizer=tok, **opts)
    except ChattuneError as e:
        raise user_error(str(e), "options") from None
    items = None
    if tok is not None and report.get("files"):
        try:
            items = preview([str(path)], tok, n=int(body.get("n") or PREVIEW_N), **opts)
        except ChattuneError as e:
            report["errors"].append(str(e))
    return {"path": roots.display(path), "report": report, "preview": items}

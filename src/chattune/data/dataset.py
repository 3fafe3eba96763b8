"""Config → tokenized, masked, cached ``datasets.Dataset`` for training and eval.

Columns: ``input_ids``, ``labels`` (-100 = not trained), ``length``. Rendering is `render.render_batch`
inside ``datasets.map(batched=True)``; the result is saved under a key that changes whenever anything
that could change a token changes (input bytes, tokenizer, chat template, render options, the data
code itself), so a rerun loads it memory-mapped in a fraction of a second.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, DataConfig
from ..errors import DataError, TemplateError
from ..fsutil import atomic_path, atomic_write_text, cache_root
from .hub import source_identity
from .render import (
    describe_kwargs,
    end_of_turn_ids,
    inference_thinking,
    render_batch,
    template_kwargs,
    thinking_split,
    untemplatable_tools,
)
from .template_policy import uses_tools
from .tools import located_problems

if TYPE_CHECKING:
    import datasets

    from .types import Conversation

log = logging.getLogger(__name__)

# "where" = "file:line" of the source row, so a failing batch (e.g. a NaN loss) can name its examples
COLUMNS = ("input_ids", "labels", "length", "where")
# The conversations an eval_ratio split held out, as messages JSONL inside the cache entry.
HELDOUT_FILE = "heldout.jsonl"
# Extra columns the render map writes for the report; dropped before the dataset is returned.
_OK, _DROPPED, _ERROR = 0, 1, 2
_AUX = ("_status", "_truncated", "_trained", "_skipped", "_error")
# The code that decides the tokens is chattune.data's modules: editing any of them invalidates the cache,
# so a fix in the renderer can never be hidden by a stale cache (version numbers do not change during
# development). All of them, not a hand-kept list that a new module could be missing from.
_MAX_ERRORS_REPORTED = 5


def default_cache_root() -> Path:
    """``<chattune cache>/datasets`` (see `chattune.fsutil.cache_root`)."""
    return cache_root() / "datasets"


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of everything in the tokenizer that decides token ids (vocab, merges, added and special tokens).

    Memoised per tokenizer object (serialising Gemma's 262k vocabulary takes ~1 s); adding tokens
    changes ``len(tokenizer)`` and so recomputes it.
    """
    try:
        size, fp = _FINGERPRINTS[tokenizer]
        if size == len(tokenizer):
            return fp
    except (KeyError, TypeError):
        pass
    fp = _fingerprint(tokenizer)
    try:
        _FINGERPRINTS[tokenizer] = (len(tokenizer), fp)
    except TypeError:  # not weak-referenceable
        pass
    return fp


def _fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizer: the vocabulary is what we can see
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps({k: str(v) for k, v in tokenizer.special_tokens_map.items()}, sort_keys=True).encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()


def _code_fingerprint() -> str:
    from .. import __version__

    h = hashlib.sha256(__version__.encode())
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def cache_key(cfg: Config, tokenizer) -> str:
    """The cache key of `cfg`'s tokenized data: a hex SHA-256 (see the module docstring for what goes in)."""
    d = cfg.data
    parts: dict[str, Any] = {
        "train": [[s.model_dump(mode="json"), source_identity(s)["sha256"]] for s in d.train],
        "eval": [[s.model_dump(mode="json"), source_identity(s)["sha256"]] for s in d.eval],
        "data": d.model_dump(mode="json", exclude={"train", "eval", "cache_dir", "num_proc"}),
        "seed": cfg.train.seed,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": getattr(tokenizer, "chat_template", None),
        "code": _code_fingerprint(),
    }
    for k in ("train", "eval"):
        for entry in parts[k]:
            entry[0].pop("path", None)  # content decides, not where the file sits
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@contextlib.contextmanager
def _quiet_bars(quiet: bool) -> Iterator[None]:
    """Hide datasets' progress bars for small inputs (they flood test and CLI output for no information)."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    if quiet and was:
        ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was:
            ds_logging.enable_progress_bar()


def _render_map(batch: dict, *, tokenizer, data_cfg: DataConfig, eot: list[int]) -> dict:
    convs = [json.loads(c) for c in batch["conv"]]
    tools = [json.loads(t) if t else None for t in batch["tools"]]
    results = render_batch(convs, tokenizer, loss=data_cfg.loss, thinking=data_cfg.thinking,
                           multi_turn=data_cfg.multi_turn, max_length=data_cfg.max_length, eot_ids=eot[:1],
                           date=data_cfg.date, tools=tools)
    out: dict[str, list] = {k: [] for k in (*COLUMNS, *_AUX)}

    def row(ids, labels, status, truncated, trained, skipped, error, where):
        out["where"].append(where)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["_status"].append(status)
        out["_truncated"].append(truncated)
        out["_trained"].append(trained)
        out["_skipped"].append(skipped)
        out["_error"].append(error)

    for src, num, res in zip(batch["source"], batch["row"], results):
        if res.error:
            row([], [], _ERROR, False, 0, len(res.skipped_turns), f"{src}, line/row {num}: {res.error}", f"{src}:{num}")
            continue
        skipped = len(res.skipped_turns)
        for r in res.sequences:
            trained = r.n_trained
            row(r.input_ids, r.labels, _OK if trained else _DROPPED, r.truncated, trained, skipped, "", f"{src}:{num}")
            skipped = 0
    return out


def tokenize_conversations(convs: list[Conversation], tokenizer, data_cfg: DataConfig,
                           num_proc: int | None = None) -> tuple[datasets.Dataset, dict]:
    """Render conversations into a dataset with columns ``input_ids``, ``labels``, ``length``.

    Args:
        convs: the conversations (from `formats.load_conversations`).
        tokenizer: tokenizer with a chat template.
        data_cfg: loss, thinking, multi_turn and max_length.
        num_proc: worker processes for ``datasets.map`` (default: 1 below 20k conversations, else half
            the available cores, at most 8).

    Returns:
        ``(dataset, stats)``; stats = ``{"conversations", "examples", "tokens", "trained_tokens",
        "truncated", "dropped", "errors", "skipped_turns", "error_examples": [first few messages]}``.
        Sequences whose every label was cut by ``max_length`` are dropped and counted, never silently.
    """
    import datasets

    if num_proc is None:
        # Worker start-up (fork + pickling the tokenizer) costs seconds; it pays only on big inputs and
        # idle cores. Half the cores leaves room for the fast tokenizer's own threads.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        num_proc = 1 if len(convs) < 20_000 else max(1, min(8, cores // 2))
    raw = datasets.Dataset.from_dict({
        "conv": [json.dumps(c.messages, ensure_ascii=False) for c in convs],
        "tools": [json.dumps(c.tools, ensure_ascii=False) if c.tools else "" for c in convs],
        "source": [c.source for c in convs],
        "row": [c.row for c in convs],
    })
    eot = end_of_turn_ids(tokenizer)
    features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "length": datasets.Value("int32"), "where": datasets.Value("string"), "_status": datasets.Value("int8"),
        "_truncated": datasets.Value("bool"), "_trained": datasets.Value("int32"),
        "_skipped": datasets.Value("int32"), "_error": datasets.Value("string")})
    with _quiet_bars(len(convs) < 5000):
        ds = raw.map(_render_map, batched=True, batch_size=512, remove_columns=raw.column_names,
                     fn_kwargs={"tokenizer": tokenizer, "data_cfg": data_cfg, "eot": eot},
                     num_proc=num_proc if num_proc > 1 else None, features=features,
                     new_fingerprint=os.urandom(16).hex(),  # don't hash the tokenizer
                     desc="rendering")
    table = ds.data
    status = table.column("_status").to_pylist()
    stats = {
        "conversations": len(convs),
        "examples": status.count(_OK),
        "truncated": 0, "tokens": 0, "trained_tokens": 0,
        "dropped": status.count(_DROPPED),
        "errors": status.count(_ERROR),
        "skipped_turns": int(sum(table.column("_skipped").to_pylist())),
        "error_examples": [e for e, s in zip(table.column("_error").to_pylist(), status) if s == _ERROR]
        [:_MAX_ERRORS_REPORTED],
    }
    if stats["errors"] or stats["dropped"]:
        with _quiet_bars(True):
            ds = ds.filter(lambda s: [x == _OK for x in s], input_columns="_status", batched=True,
                           batch_size=4096).flatten_indices()
    table = ds.data
    stats["truncated"] = int(sum(table.column("_truncated").to_pylist()))
    stats["tokens"] = int(sum(table.column("length").to_pylist()))
    stats["trained_tokens"] = int(sum(table.column("_trained").to_pylist()))
    ds = ds.remove_columns(list(_AUX))
    if stats["errors"]:
        log.warning("%d conversation(s) could not be rendered, e.g. %s", stats["errors"], stats["error_examples"][0])
    if stats["dropped"]:
        log.warning("%d sequence(s) dropped: max_length=%d cut every trained token", stats["dropped"],
                    data_cfg.max_length)
    return ds, stats


def system_prompts(convs: list[Conversation], files: list[dict], held_out: Sequence[Conversation] = ()) -> dict:
    """The system prompts training rendered, for the run dir: inference must render the same ones.

    Args:
        convs: the training conversations (after cleaning and the eval split).
        files: the loader's file report (``path``, ``sha256``) of the train and eval files.
        held_out: the eval conversations (their files' prompts are recorded; the default is training's).

    Returns:
        ``{"default": the most common system prompt of all conversations (None when most have none),
        "sources": [{"path", "sha256", "system"}]}`` with each file's most common one.
    """
    from collections import Counter

    def top(systems: list[str | None]) -> str | None:
        # most common; ties go to the first seen (Counter keeps insertion order)
        return Counter(systems).most_common(1)[0][0] if systems else None

    def system_of(c) -> str | None:
        m = c.messages[0] if c.messages else {}
        return m.get("content") if m.get("role") == "system" else None

    by_source: dict[str, list[str | None]] = {}
    for c in [*convs, *held_out]:
        by_source.setdefault(c.source, []).append(system_of(c))
    return {"default": top([system_of(c) for c in convs]),
            "sources": [{"path": f["path"], "sha256": f["sha256"], "system": top(by_source.get(f["path"], []))}
                        for f in files]}


def split_eval(convs: list, ratio: float, seed: int) -> tuple[list, list]:
    """Seeded split of conversations (before rendering, so turns of one conversation never straddle)."""
    if ratio <= 0 or len(convs) < 2:
        return convs, []
    idx = list(range(len(convs)))
    random.Random(seed).shuffle(idx)
    n_eval = min(len(convs) - 1, max(1, round(len(convs) * ratio)))
    held = set(idx[:n_eval])
    return [c for i, c in enumerate(convs) if i not in held], [c for i, c in enumerate(convs) if i in held]


def _refuse_tool_errors(convs: list[Conversation]) -> None:
    """Tool calls that would teach something wrong (undeclared functions, arguments that are not JSON or lack a
    required key, results that answer no call) stop training before any token is rendered."""
    errors = [text for level, text in located_problems(convs) if level == "error"]
    if errors:
        raise DataError(f"{len(errors)} tool-call error(s), e.g. " + "; ".join(errors[:3]) +
                        "; `chattune data check FILE` lists them all")


def build_datasets(cfg: Config, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset | None, dict]:
    """Load, convert, render and cache the training (and eval) data of `cfg`.

    Args:
        cfg: the run config (``data`` section; ``train.seed`` for the eval split).
        tokenizer: the tokenizer with the chat template to train with.

    Returns:
        ``(train, eval_or_None, report)``. Datasets have columns ``input_ids``, ``labels``, ``length``.
        report = the loader report (``files``, ``duplicates_removed``, ``conversations``) plus
        ``train`` / ``eval`` stats (see `tokenize_conversations`), ``eval_files`` (loader report of the
        eval files, if any), ``cache_key``, ``cache_path`` and ``cache_hit``; with an eval_ratio split also
        ``heldout`` = {"file": name inside cache_path, "conversations": n} (messages JSONL).

    Raises:
        DataError: no training files, or no trainable example at all (the first errors are quoted).
    """
    import datasets

    from .formats import load_conversations

    d = cfg.data
    if not d.train:
        raise DataError("no training data: set data.train to one or more files (e.g. data.train=train.jsonl)")
    for s in [*d.train, *d.eval]:
        if s.path is not None and not Path(s.path).exists():
            raise DataError("file not found", file=s.path)
    key = cache_key(cfg, tokenizer)
    root = Path(d.cache_dir).expanduser() if d.cache_dir else default_cache_root()
    path = root / key
    if (path / "report.json").is_file():
        try:
            report = json.loads((path / "report.json").read_text(encoding="utf-8"))
            train = datasets.load_from_disk(str(path / "train"))
            ev = datasets.load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
            report.update(cache_hit=True, cache_path=str(path))
            return train, ev, report
        except (OSError, ValueError, json.JSONDecodeError) as e:  # a damaged cache is rebuilt, not trusted
            log.warning("dataset cache at %s is unreadable (%s); rebuilding", path, e)

    convs, report = load_conversations(d.train, d)
    _refuse_tool_errors(convs)
    eval_report = None
    if d.eval:
        eval_convs, eval_report = load_conversations(d.eval, d)
        _refuse_tool_errors(eval_convs)
    else:
        convs, eval_convs = split_eval(convs, d.eval_ratio, cfg.train.seed)
    refused = untemplatable_tools([*convs, *eval_convs], tokenizer, d.thinking, d.date)
    if refused:
        raise TemplateError(f"{len(refused)} conversation(s) use tools the chat template cannot render, e.g. "
                            f"{refused[0]}")
    train, train_stats = tokenize_conversations(convs, tokenizer, d, d.num_proc)
    if train_stats["examples"] == 0:
        raise DataError(f"no trainable example in {len(convs)} conversations (errors: {train_stats['errors']}, "
                        f"dropped by max_length={d.max_length}: {train_stats['dropped']}); first errors: "
                        f"{train_stats['error_examples']}", file=d.train[0].label)
    ev, eval_stats = (tokenize_conversations(eval_convs, tokenizer, d, d.num_proc) if eval_convs else (None, None))
    prompts = system_prompts(convs, report["files"] + (eval_report or {}).get("files", []), eval_convs)
    report = {**report, "system_prompts": prompts, "train": train_stats, "eval": eval_stats, "eval_files": eval_report,
              "render": {"loss": d.loss, "thinking": d.thinking, "multi_turn": d.multi_turn,
                         "max_length": d.max_length, "date": d.date,
                         "inference_thinking": inference_thinking(d.thinking),
                         "thinking_rows": thinking_split([c.messages for c in convs], d.thinking),
                         "tool_rows": sum(1 for c in convs if c.tools or uses_tools(c.messages, None)),
                         "template_kwargs": describe_kwargs(template_kwargs(tokenizer, d.thinking, d.date))},
              "cache_key": key}
    if eval_convs and not d.eval:  # held out by eval_ratio: kept as messages JSONL (rundir copies it)
        report["heldout"] = {"file": HELDOUT_FILE, "conversations": len(eval_convs)}
    try:
        with atomic_path(path) as tmp, _quiet_bars(True):
            tmp.mkdir(parents=True)
            train.save_to_disk(str(tmp / "train"))
            if ev is not None:
                ev.save_to_disk(str(tmp / "eval"))
            if "heldout" in report:
                rows = [{"messages": c.messages, **({"tools": c.tools} if c.tools else {})} for c in eval_convs]
                atomic_write_text(tmp / HELDOUT_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            atomic_write_text(tmp / "report.json", json.dumps(report, ensure_ascii=False, indent=1))
        # Reload memory-mapped from the cache so a cold and a warm run hand the trainer the same thing.
        train = datasets.load_from_disk(str(path / "train"))
        ev = datasets.load_from_disk(str(path / "eval")) if ev is not None else None
    except OSError as e:  # a read-only or full cache disk must not stop training
        log.warning("could not cache the tokenized dataset at %s: %s", path, e)
        report.pop("heldout", None)
    report.update(cache_hit=False, cache_path=str(path))
    return train, ev, report

"""Evaluate a model on a data file: batched greedy generation, task metrics, reference loss, before/after.

* `evaluate`: prompt = each conversation minus its last assistant turn, reference = that turn; greedy
  generation in left-padded batches that stop at end-of-turn; metrics from `metrics.py`; "loss" is the
  token-weighted mean NLL of the reference answers rendered exactly as training renders them
  (`render_conversation(loss="last")`), with its perplexity. Writes predictions.jsonl + metrics.json.
* `chattune.infer.compare`: the same data through a base and a tuned model, before/after.
* `predict`: batch generation over any data file, the reference (if any) kept beside the output.

The data is read with the run dir's own data settings (cleaning) and the system prompt training rendered
(`data_config_for`), so eval prompts are training prompts; dedupe is off, so every test row counts.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig, DataSource
from ..errors import ConfigError, DataError
from ..fsutil import atomic_path, atomic_write_text
from . import metrics as M

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
Progress = Callable[[int, int], None]


@dataclass
class Example:
    """One eval item: the prompt messages, the reference answer (None if the data has none), its origin, and
    the functions its prompt declares."""

    messages: list[dict]
    reference: str | None
    conversation: list[dict]  # prompt + reference turn (what the loss is computed on)
    source: str = ""
    row: int = 0
    tools: list[dict] | None = None


# ------------------------------------------------------------------------------------------- data

def data_config_for(model_path, data_path=None) -> DataConfig:
    """The run dir's data settings (cleaning) with dedupe off; defaults for other models.

    The system prompt is the one training rendered for rows without their own: that of the training file
    with the same content as `data_path` (per-file ``system:``), else the run's most common one
    (`rundir.SystemPrompts`). A merged folder carries the run's in its merge report.
    """
    from ..rundir.layout import is_run_dir
    from ..rundir.read import read_merge_report, read_run

    if model_path is not None and is_run_dir(model_path):
        run = read_run(model_path)
        cfg = run.config.data
        system = run.system_prompts.for_file(as_source(data_path).label) if data_path is not None else \
            run.system_prompts.default
    else:
        merged = read_merge_report(model_path) if model_path is not None and Path(str(model_path)).is_dir() else None
        cfg, system = DataConfig(), (merged or {}).get("system")
    return cfg.model_copy(update={"clean": cfg.clean.model_copy(update={"dedupe": False}), "system": system})


def as_source(data) -> DataSource:
    """A path or `DataSource` as a `DataSource`."""
    return data if isinstance(data, DataSource) else DataSource(path=str(data))


def load_examples(data, data_cfg: DataConfig | None = None, *, limit: int | None = None,
                  need_reference: bool = True) -> list[Example]:
    """Read a data file (any supported format) into eval examples.

    Args:
        data: a path or `DataSource`.
        data_cfg: data settings (default: `DataConfig()` with dedupe off).
        limit: keep the first N.
        need_reference: raise when a conversation does not end with an assistant answer.

    Returns:
        The examples, in file order.

    Raises:
        DataError: unreadable data, or (need_reference) a conversation without a final answer.
    """
    from ..data.formats import load_conversations

    if data_cfg is None:
        data_cfg = data_config_for(None)
    # Without need_reference, prompt-only rows (no answer field, or a trailing user turn) are kept.
    convs, _ = load_conversations([as_source(data)], data_cfg, require_answer=need_reference)
    out = []
    for c in convs[:limit] if limit else convs:
        msgs = list(c.messages)
        if msgs and msgs[-1]["role"] == "assistant":
            out.append(Example(msgs[:-1], msgs[-1]["content"], msgs, c.source, c.row, tools=c.tools))
        elif need_reference:
            raise DataError("evaluation needs a reference answer: the conversation must end with an "
                            "assistant message", file=c.source, row=c.row)
        else:
            out.append(Example(msgs, None, msgs, c.source, c.row, tools=c.tools))
    if not out:
        raise DataError("no examples to evaluate", file=as_source(data).label)
    return out


# ------------------------------------------------------------------------------------- generation

def generate_all(gen, prompts: Sequence[list[dict]], *, batch_size: int = 16, max_new_tokens: int = 128,
                 progress: Progress | None = None, tools: Sequence[list[dict] | None] | None = None) -> list:
    """Greedy completions for many prompts, in batches of similar length (returned in input order).

    Sorting by prompt length cuts padding; it cannot change results because batched greedy output
    equals unbatched output (tests/test_generate.py). `tools`: per prompt, the functions it declares.
    """
    per = list(tools) if tools is not None and any(tools) else None
    lengths = [len(gen.prompt_ids(p, per[i] if per else None)) for i, p in enumerate(prompts)]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    out: list = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch_tools = [per[i] for i in idx] if per else None
        for i, c in zip(idx, gen.generate([prompts[i] for i in idx], max_new_tokens=max_new_tokens,
                                          tools=batch_tools)):
            out[i] = c
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return out


def reference_nll(gen, conversations: Sequence[list[dict]], *, batch_size: int = 16,
                  tools: Sequence[list[dict] | None] | None = None) -> list[tuple[float, int]]:
    """Sum of NLL and token count of each conversation's last assistant turn, as training scores it.

    Rendering is `render_batch(loss="last", thinking=gen.thinking)`: the trained tokens (answer +
    end-of-turn) are exactly those training puts a loss on. Batches are left-padded with explicit
    position_ids, and only the last positions' logits are computed (`logits_to_keep`), so a 150k
    vocabulary does not cost a full (batch, length, vocab) tensor.
    """
    import torch
    import torch.nn.functional as F

    from ..data.render import IGNORE, render_batch
    from ..errors import TemplateError
    from .batching import tail_logits

    # One batched render: what `render_conversation` gives per conversation, without probing the
    # template again for every one.
    seqs = []
    for res in render_batch(conversations, gen.tokenizer, loss="last", thinking=gen.thinking, date=gen.date,
                            tools=tools):
        if res.error:
            raise TemplateError(res.error)
        seqs.append([(r.input_ids, r.labels) for r in res.sequences])
    flat = [(i, ids, labels) for i, rs in enumerate(seqs) for ids, labels in rs]
    totals = [[0.0, 0] for _ in conversations]
    model, pad = gen.model, gen.pad_token_id
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        width = max(len(ids) for _, ids, _ in chunk)
        first = [next((j for j, t in enumerate(lab) if t != IGNORE), len(lab)) for _, _, lab in chunk]
        keep = max(len(ids) - f + 1 for (_, ids, _), f in zip(chunk, first))
        # target at position q is the label of token q + 1
        shifted = torch.tensor([[IGNORE] * (width - len(lab)) + lab[1:] + [IGNORE] for _, _, lab in chunk])
        logits = tail_logits(model, [x for _, x, _ in chunk], pad, keep)
        targets = shifted[:, -keep:].to(logits.device)
        for row, (i, _, _) in enumerate(chunk):
            nll = F.cross_entropy(logits[row].float(), targets[row], ignore_index=IGNORE, reduction="sum")
            totals[i][0] += float(nll)
            totals[i][1] += int((targets[row] != IGNORE).sum())
    return [(s, int(n)) for s, n in totals]


# --------------------------------------------------------------------------------------- evaluate

def check_metric_names(metrics: Sequence[str]) -> list[str]:
    """`metrics.check_metrics` with the error a user sees (names the --metrics option)."""
    try:
        return M.check_metrics(metrics)
    except ValueError as e:
        raise ConfigError(f"--metrics: {e}") from None


def _write(out_dir: Path, rows: list[dict], doc: dict) -> tuple[Path, Path]:
    pred_path, met_path = out_dir / PREDICTIONS_FILE, out_dir / METRICS_FILE
    with atomic_path(pred_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(met_path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return pred_path, met_path


def _calls_kw(answer: str, reference: dict, fmt) -> dict:
    """`metrics.score_row`'s tool_calls inputs: the answer parsed as the template writes calls, and the
    reference turn's calls (a reference that cannot be read raises ValueError, named by the caller)."""
    from .tool_calls import parse_tool_calls

    expected = M.reference_calls(reference)
    parsed = parse_tool_calls(answer, fmt)
    return {"calls": [(c.name, c.arguments) for c in parsed.calls], "expected_calls": expected,
            "malformed": parsed.malformed}


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def evaluate(model_path, data_path, *, metrics: Sequence[str] = ("exact",), max_new_tokens: int = 128,
             batch_size: int = 16, limit: int | None = None, out_dir=None, generator=None,
             data_cfg: DataConfig | None = None, thinking: str | None = None,
             progress: Progress | None = None, device: str | None = None, dtype: str | None = None) -> dict:
    """Generate answers for a test file and score them.

    Args:
        model_path: run dir, model folder, alias, .gguf or Hub id (used for loading unless `generator`).
        data_path: test data (any supported format); each conversation's last assistant turn is the reference.
        metrics: any of exact, contains, json_fields, rouge_l, bleu4, loss, tool_calls (the answer's calls,
            parsed with the template's tool-call format, against the reference turn's ``tool_calls``).
        max_new_tokens: generation limit per answer.
        batch_size: generation (and loss) batch size.
        limit: evaluate only the first N examples.
        out_dir: where predictions.jsonl and metrics.json go (None: write nothing).
        generator: an already loaded `Generator` (skips loading).
        data_cfg: data settings (default: the run dir's, dedupe off).
        thinking: "off"/"keep" (default: the run dir's).
        progress: called with (done, total) after each generation batch.
        device, dtype: passed to the loader (default: cuda if available, the run's dtype).

    Returns:
        ``{"metrics": {...}, "n", "predictions_path", "metrics_path", "rows", "model", "timing"}``.
    """
    from .generate import Generator

    metrics = check_metric_names(metrics)
    if data_cfg is None:
        data_cfg = data_config_for(model_path, data_path)
    examples = load_examples(data_path, data_cfg, limit=limit)
    gen = generator or Generator.from_path(model_path, thinking=thinking, device=device, dtype=dtype)
    fmt = gen.renderer.tool_format() if "tool_calls" in metrics else None  # no tool support: refused here
    t0 = time.perf_counter()
    comps = generate_all(gen, [e.messages for e in examples], batch_size=batch_size,
                         max_new_tokens=max_new_tokens, progress=progress, tools=[e.tools for e in examples])
    gen_s = time.perf_counter() - t0
    rows, scores = [], []
    for i, (e, c) in enumerate(zip(examples, comps)):
        assert e.reference is not None  # load_examples refused rows without one
        try:  # a reference json_fields (or tool_calls) cannot parse is bad data: name its file and row
            calls = _calls_kw(c.content, e.conversation[-1], fmt) if fmt is not None else {}
            s = M.score_row(c.content, e.reference, metrics, **calls)  # the answer, not the think block
        except ValueError as err:
            raise DataError(str(err), file=e.source, row=e.row) from None
        scores.append(s)
        rows.append({"index": i, "source": e.source, "row": e.row, "input": _last_user(e.messages),
                     "messages": e.messages, "reference": e.reference, "output": c.content,
                     "reasoning": c.reasoning,
                     "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens, "scores": s})
        if fmt is not None:
            rows[-1]["tool_calls"] = [{"name": n, "arguments": a} for n, a in calls["calls"]]
            rows[-1]["reference_tool_calls"] = [{"name": n, "arguments": a} for n, a in calls["expected_calls"]]
    result = M.aggregate(scores)
    if "loss" in metrics:
        nll = reference_nll(gen, [e.conversation for e in examples], batch_size=batch_size,
                            tools=[e.tools for e in examples])
        for r, (summed, n) in zip(rows, nll):
            r["loss"], r["loss_tokens"] = (summed / n if n else None), n
        total_n = sum(n for _, n in nll)
        loss = sum(s for s, _ in nll) / total_n if total_n else float("nan")
        result["loss"] = loss
        result["perplexity"] = math.exp(min(loss, 700.0))
    new_tokens = sum(c.completion_tokens for c in comps)
    timing = {"generation_seconds": round(gen_s, 3), "new_tokens": new_tokens,
              "tokens_per_second": round(new_tokens / gen_s, 2) if gen_s > 0 else None,
              "finished_by_length": sum(c.finish_reason == "length" for c in comps)}
    doc = {"model": str(model_path) if model_path is not None else gen.name, "data": as_source(data_path).label,
           "n": len(rows), "metrics": result, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
           "thinking": gen.thinking, "timing": timing}
    pred_path = met_path = None
    if out_dir is not None:
        pred_path, met_path = _write(Path(out_dir), rows, doc)
    return {"metrics": result, "n": len(rows), "predictions_path": str(pred_path) if pred_path else None,
            "metrics_path": str(met_path) if met_path else None, "rows": rows, "model": doc["model"],
            "timing": timing}


# ---------------------------------------------------------------------------------------- predict

def predict(model_path, data_path, out_path, *, batch_size: int = 16, max_new_tokens: int = 256,
            limit: int | None = None, generator=None, progress: Progress | None = None,
            device: str | None = None, dtype: str | None = None) -> dict:
    """Batch generation over a data file; writes one record per example (atomically) as .jsonl, .json, .xlsx
    or .csv, by the suffix of `out_path` (anything else is refused before loading the model).

    Each record: ``{"index", "source", "row", "messages", "input", "output" (the answer), "reasoning" (the think
    block, or null), "finish_reason", "completion_tokens"}`` plus ``"reference"`` when the data holds an answer.

    Returns:
        ``{"n", "out_path", "timing"}``.
    """
    from ..data.convert import check_record_suffix, write_records
    from .generate import Generator

    check_record_suffix(out_path)  # before any loading or generation
    examples = load_examples(data_path, data_config_for(model_path, data_path), limit=limit, need_reference=False)
    gen = generator or Generator.from_path(model_path, device=device, dtype=dtype)
    t0 = time.perf_counter()
    comps = generate_all(gen, [e.messages for e in examples], batch_size=batch_size,
                         max_new_tokens=max_new_tokens, progress=progress, tools=[e.tools for e in examples])
    secs = time.perf_counter() - t0
    rows = []
    for i, (e, c) in enumerate(zip(examples, comps)):
        row = {"index": i, "source": e.source, "row": e.row, "messages": e.messages,
               "input": _last_user(e.messages), "output": c.content, "reasoning": c.reasoning,
               "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens}
        if e.reference is not None:
            row["reference"] = e.reference
        rows.append(row)
    write_records(rows, out_path)
    new_tokens = sum(c.completion_tokens for c in comps)
    return {"n": len(examples), "out_path": str(out_path),
            "timing": {"generation_seconds": round(secs, 3), "new_tokens": new_tokens,
                       "tokens_per_second": round(new_tokens / secs, 2) if secs > 0 else None}}

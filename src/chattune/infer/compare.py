"""Before / after: the same data through a base and a tuned model (`evaluate` twice, identical prompts), with
compare.md / compare.json holding a metric table and an example table."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fsutil import atomic_write_text
from .evaluate import Progress, as_source, check_metric_names, data_config_for, evaluate


def _cell(text, width: int = 80) -> str:
    s = "" if text is None else str(text)
    s = s.replace("|", "\\|").replace("\r", "").replace("\n", "⏎")
    return s if len(s) <= width else s[:width - 1] + "…"


def _mark(score: dict, primary: str | None) -> str:
    if primary is None:
        return ""
    v = score.get(primary)
    if primary in ("rouge_l", "bleu4"):
        return f"{v:.2f}"
    return "✓" if v == 1.0 else "✗"


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def compare_markdown(res: dict, *, examples: int = 20) -> str:
    """The before/after report: a metric table and the first `examples` rows side by side."""
    base, tuned = res["base"], res["tuned"]
    lines = [f"# Before / after: {res['base_model']} → {res['tuned_model']}", "",
             f"Data: {res['data']} ({res['n']} examples)", "", "| metric | base | tuned | Δ |", "|---|---|---|---|"]
    for k in dict.fromkeys([*base, *tuned]):
        b, t = base.get(k), tuned.get(k)
        if isinstance(b, int) and isinstance(t, int):
            delta = f"{t - b:+d}"  # counts (json_invalid)
        elif isinstance(b, (int, float)) and isinstance(t, (int, float)):
            delta = f"{t - b:+.4f}"
        else:
            delta = ""
        lines.append(f"| {k} | {_fmt(b)} | {_fmt(t)} | {delta} |")
    p = res.get("primary")
    lines += ["", f"## Examples ({p or 'outputs'})", "",
              "| # | input | reference | base | ok | tuned | ok |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"][:examples]:
        lines.append(f"| {r['index']} | {_cell(r['input'])} | {_cell(r['reference'])} | {_cell(r['base_output'])} | "
                     f"{r['base_ok']} | {_cell(r['tuned_output'])} | {r['tuned_ok']} |")
    return "\n".join(lines) + "\n"


def compare(base_path, tuned_path, data_path, *, out_dir=None, metrics: Sequence[str] = ("exact",),
            max_new_tokens: int = 128, batch_size: int = 16, limit: int | None = None,
            progress: Progress | None = None, device: str | None = None, dtype: str | None = None) -> dict:
    """Evaluate a base and a tuned model on the same data and tabulate before/after.

    Args:
        base_path: the model before tuning; "base" means the tuned run dir's base model.
        tuned_path: the tuned run dir (or any model).
        data_path, metrics, max_new_tokens, batch_size, limit, progress, device, dtype: as in `evaluate`.
        out_dir: writes base/ and tuned/ (predictions + metrics), compare.md and compare.json.

    Returns:
        ``{"base": metrics, "tuned": metrics, "n", "rows": [{index, input, reference, base_output,
        tuned_output, base_ok, tuned_ok}], "primary", "base_model", "tuned_model", "data"}``.
    """
    import gc

    from ..rundir.layout import is_run_dir
    from ..rundir.load import load_run_base
    from ..rundir.read import read_run
    from .generate import Generator

    metrics = check_metric_names(metrics)
    run_base = str(base_path) == "base"
    if run_base:
        if not is_run_dir(tuned_path):
            raise ConfigError("--compare base needs a run dir to find the base model; pass the base model path")
        base_path = read_run(tuned_path).base_model
    # Both models see identical prompts: the tuned run's data settings and thinking policy.
    data_cfg = data_config_for(tuned_path, data_path)
    tuned_gen = Generator.from_path(tuned_path, device=device, dtype=dtype)
    thinking = tuned_gen.thinking
    out = Path(out_dir) if out_dir is not None else None
    kw: dict[str, Any] = dict(metrics=metrics, max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit,
                              data_cfg=data_cfg, progress=progress, device=device, dtype=dtype)
    tuned = evaluate(tuned_path, data_path, generator=tuned_gen, out_dir=out / "tuned" if out else None, **kw)
    del tuned_gen
    gc.collect()
    # the run's base renders with the run's tokenizer and template (model.chat_template included)
    base_gen = (Generator.from_loaded(load_run_base(tuned_path, device=device, dtype=dtype), base_path,
                                      thinking=thinking) if run_base else None)
    base = evaluate(base_path, data_path, thinking=thinking, generator=base_gen, out_dir=out / "base" if out else None,
                    **kw)
    primary = next((m for m in metrics if m != "loss"), None)
    rows = [{"index": b["index"], "input": b["input"], "reference": b["reference"], "base_output": b["output"],
             "tuned_output": t["output"], "base_ok": _mark(b["scores"], primary),
             "tuned_ok": _mark(t["scores"], primary)} for b, t in zip(base["rows"], tuned["rows"])]
    res = {"base": base["metrics"], "tuned": tuned["metrics"], "n": tuned["n"], "rows": rows, "primary": primary,
           "base_model": str(base_path), "tuned_model": str(tuned_path), "data": as_source(data_path).label,
           "timing": {"base": base["timing"], "tuned": tuned["timing"]}}
    if out is not None:
        atomic_write_text(out / "compare.json", json.dumps(res, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(out / "compare.md", compare_markdown(res))
        res["report_path"] = str(out / "compare.md")
    return res

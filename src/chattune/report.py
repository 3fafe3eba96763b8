"""The demo's report: before/after metrics, the loss curve, example predictions, stage times, commands.

`write_report` takes one summary dict (what `chattune.demo.run_demo` measured) and writes, atomically,
``report.md``, ``report.html`` (self-contained: the loss PNG is embedded) and ``loss.png`` into a folder.
It computes nothing about models; every number it prints comes from the summary, which `demo.py`
fills from the eval metrics files and the run's metrics.jsonl, so the report and those files agree.

Summary keys used (all but ``metrics`` optional)::

    title, model, n_train, n_test, recipe {key: value}, data {train, test},
    metrics {"base": {...}, "tuned": {...}}   (as in eval metrics.json "metrics")
    metrics_files {"base": path, "tuned": path}
    examples [{input, reference, base, tuned, base_ok, tuned_ok}]   (booleans)
    stages [{name, seconds}], total_seconds, commands [str], run_dir, machine {key: value}
"""
from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from .fsutil import atomic_path, atomic_write_text

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
LOSS_PNG = "loss.png"

# Metrics shown in the table, in this order, when present; the rest follow alphabetically.
# Shares (0..1) print as percentages; counts print as integers.
_ORDER = ("exact", "json_fields", "json_valid", "json_field/city", "json_field/date", "json_field_acc",
          "json_invalid", "tool_call_name_acc", "tool_arg_acc", "tool_calls", "tool_names", "tool_expected",
          "tool_missed", "tool_spurious", "tool_malformed", "contains", "rouge_l", "bleu4", "loss", "perplexity")
_COUNTS = {"json_invalid", "tool_expected", "tool_missed", "tool_spurious", "tool_malformed"}
_RAW = {"loss", "perplexity"}
_LABELS = {"exact": "exact match", "json_fields": "all JSON fields right", "json_valid": "valid JSON",
           "json_field/city": "city right", "json_field/date": "date right", "json_field_acc": "fields right (share)",
           "json_invalid": "invalid JSON (count)",
           "tool_call_name_acc": "calls the tool when it should", "tool_arg_acc": "arguments right (share)",
           "tool_calls": "decision and call all right", "tool_names": "right function or none",
           "tool_expected": "rows that should call (count)", "tool_missed": "answered instead of calling (count)",
           "tool_spurious": "called instead of answering (count)", "tool_malformed": "unreadable calls (count)"}


# ------------------------------------------------------------------------------------------ data

def read_loss_curve(metrics_jsonl: str | Path) -> list[tuple[int, float]]:
    """(step, loss) of every train record in a run's metrics.jsonl (records without a loss are skipped).

    Args:
        metrics_jsonl: the run dir's metrics.jsonl (one JSON object per line, ``kind: train`` has a loss).

    Returns:
        Points in file order; empty when the file does not exist.
    """
    path = Path(metrics_jsonl)
    if not path.is_file():
        return []
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("kind", "train") == "train" and rec.get("loss") is not None and rec.get("step") is not None:
            points.append((int(rec["step"]), float(rec["loss"])))
    return points


def format_value(key: str, value) -> str:
    """How one metric value is printed in every table (markdown, HTML and the CLI use the same text)."""
    if value is None:
        return "–"
    if key in _COUNTS:
        return str(int(value))
    if key in _RAW or not isinstance(value, (int, float)):
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    return f"{100 * value:.1f}%"


def metric_rows(base: dict, tuned: dict) -> list[tuple[str, str, str, str, str]]:
    """Rows of the before/after table: (key, label, base text, tuned text, change text)."""
    keys = [k for k in _ORDER if k in base or k in tuned]
    keys += sorted(k for k in {*base, *tuned} if k not in keys)
    rows = []
    for k in keys:
        b, t = base.get(k), tuned.get(k)
        change = ""
        if isinstance(b, (int, float)) and isinstance(t, (int, float)):
            d = t - b
            change = (f"{d:+.0f}" if k in _COUNTS else f"{d:+.4f}" if k in _RAW else f"{100 * d:+.1f} pts")
        rows.append((k, _LABELS.get(k, k), format_value(k, b), format_value(k, t), change))
    return rows


# ------------------------------------------------------------------------------------------ plot

def plot_loss(points: Sequence[tuple[int, float]], out_png: str | Path, *, title: str = "training loss") -> Path:
    """Draw the loss curve into a PNG (matplotlib, Agg backend: no display needed).

    Args:
        points: (step, loss) pairs; an empty list draws an empty chart that says so.
        out_png: where the PNG goes (written atomically).
        title: chart title.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot: no global state, nothing left open

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.add_subplot()
    if points:
        steps, losses = zip(*points)
        ax.plot(steps, losses, marker="o", markersize=3, linewidth=1.5, color="#1f77b4")
        if min(losses) > 0 and max(losses) / min(losses) > 20:
            ax.set_yscale("log")  # the loss falls by orders of magnitude on this task
    else:
        ax.text(0.5, 0.5, "no loss records", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return out_png


# ------------------------------------------------------------------------------------------ text

def _md_cell(text) -> str:
    s = "" if text is None else str(text)
    return s.replace("|", "\\|").replace("\r", "").replace("\n", "⏎")


def _mark(ok) -> str:
    return "✓" if ok else "✗"


def _dur(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 90 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def render_markdown(summary: dict, loss_png: str | None = LOSS_PNG) -> str:
    """The report as Markdown (see the module docstring for the summary keys)."""
    m = summary["metrics"]
    lines = [f"# {summary.get('title', 'chattune demo')}", ""]
    facts = [("model", summary.get("model")), ("train examples", summary.get("n_train")),
             ("held-out test sentences", summary.get("n_test")), ("run dir", summary.get("run_dir")),
             ("total time", _dur(summary.get("total_seconds")) if summary.get("total_seconds") else None)]
    lines += [f"- **{k}**: {v}" for k, v in facts if v is not None]
    lines += ["", "## Before / after (same held-out test set)", "", "| metric | base | tuned | change |",
              "|---|---|---|---|"]
    lines += [f"| {label} | {b} | {t} | {c} |" for _, label, b, t, c in metric_rows(m["base"], m["tuned"])]
    files = summary.get("metrics_files") or {}
    if files:
        lines += ["", "Numbers from " + ", ".join(f"`{p}` ({k})" for k, p in files.items()) + "."]
    if loss_png:
        lines += ["", "## Training loss", "", f"![training loss]({loss_png})"]
    ex = summary.get("examples") or []
    if ex:
        lines += ["", f"## {len(ex)} example predictions", "", "| sentence | expected | base | | tuned | |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {_md_cell(e.get('input'))} | {_md_cell(e.get('reference'))} | {_md_cell(e.get('base'))} | "
                  f"{_mark(e.get('base_ok'))} | {_md_cell(e.get('tuned'))} | {_mark(e.get('tuned_ok'))} |" for e in ex]
    stages = summary.get("stages") or []
    if stages:
        lines += ["", "## Time per stage", "", "| stage | time |", "|---|---|"]
        lines += [f"| {_md_cell(s['name'])} | {_dur(s.get('seconds'))} |" for s in stages]
        if summary.get("total_seconds") is not None:
            lines.append(f"| **total** | **{_dur(summary['total_seconds'])}** |")
    recipe = summary.get("recipe") or {}
    if recipe:
        lines += ["", "## Recipe", "", "| setting | value |", "|---|---|"]
        lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in recipe.items()]
    cmds = summary.get("commands") or []
    if cmds:
        lines += ["", "## Reproduce", "", "```bash", *cmds, "```"]
    machine = summary.get("machine") or {}
    if machine:
        lines += ["", "## Machine", "", *[f"- {k}: {v}" for k, v in machine.items()]]
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.ok{color:#1a7f37;font-weight:bold}td.bad{color:#cf222e;font-weight:bold}
code,pre{background:#f6f8fa}pre{padding:1em;overflow-x:auto}td.out{font-family:ui-monospace,monospace;font-size:90%;
max-width:320px;word-break:break-all}img{max-width:100%}"""


def render_html(summary: dict, loss_png: str | Path | None = None) -> str:
    """The report as one self-contained HTML page (the loss PNG is embedded as base64 when given)."""
    e = html.escape
    m = summary["metrics"]
    title = summary.get("title", "chattune demo")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"
           f"</head><body><h1>{e(title)}</h1><ul>"]
    facts = [("model", summary.get("model")), ("train examples", summary.get("n_train")),
             ("held-out test sentences", summary.get("n_test")), ("run dir", summary.get("run_dir")),
             ("total time", _dur(summary.get("total_seconds")) if summary.get("total_seconds") else None)]
    out += [f"<li><b>{e(k)}</b>: {e(str(v))}</li>" for k, v in facts if v is not None]
    out.append("</ul><h2>Before / after (same held-out test set)</h2><table id='metrics'>"
               "<tr><th>metric</th><th>base</th><th>tuned</th><th>change</th></tr>")
    for key, label, b, t, c in metric_rows(m["base"], m["tuned"]):
        out.append(f"<tr data-key='{e(key)}'><td>{e(label)}</td><td>{e(b)}</td><td>{e(t)}</td><td>{e(c)}</td></tr>")
    out.append("</table>")
    if loss_png is not None and Path(loss_png).is_file():
        data = base64.b64encode(Path(loss_png).read_bytes()).decode("ascii")
        out.append(f"<h2>Training loss</h2><img alt='training loss' src='data:image/png;base64,{data}'>")
    ex = summary.get("examples") or []
    if ex:
        out.append(f"<h2>{len(ex)} example predictions</h2><table><tr><th>sentence</th><th>expected</th>"
                   "<th>base</th><th></th><th>tuned</th><th></th></tr>")
        for x in ex:
            cells = []
            for key, ok in (("base", x.get("base_ok")), ("tuned", x.get("tuned_ok"))):
                cells.append(f"<td class='out'>{e(str(x.get(key, '')))}</td>"
                             f"<td class='{'ok' if ok else 'bad'}'>{_mark(ok)}</td>")
            out.append(f"<tr><td>{e(str(x.get('input', '')))}</td><td class='out'>{e(str(x.get('reference', '')))}</td>"
                       + "".join(cells) + "</tr>")
        out.append("</table>")
    stages = summary.get("stages") or []
    if stages:
        out.append("<h2>Time per stage</h2><table><tr><th>stage</th><th>time</th></tr>")
        out += [f"<tr><td>{e(s['name'])}</td><td>{e(_dur(s.get('seconds')))}</td></tr>" for s in stages]
        if summary.get("total_seconds") is not None:
            out.append(f"<tr><th>total</th><th>{e(_dur(summary['total_seconds']))}</th></tr>")
        out.append("</table>")
    recipe = summary.get("recipe") or {}
    if recipe:
        out.append("<h2>Recipe</h2><table><tr><th>setting</th><th>value</th></tr>")
        out += [f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in recipe.items()]
        out.append("</table>")
    cmds = summary.get("commands") or []
    if cmds:
        out.append("<h2>Reproduce</h2><pre>" + e("\n".join(cmds)) + "</pre>")
    machine = summary.get("machine") or {}
    if machine:
        out.append("<h2>Machine</h2><ul>" + "".join(f"<li>{e(str(k))}: {e(str(v))}</li>" for k, v in machine.items())
                   + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(out_dir: str | Path, summary: dict, *, metrics_jsonl: str | Path | None = None) -> dict:
    """Write loss.png, report.md and report.html into `out_dir`.

    Args:
        out_dir: the demo folder.
        summary: see the module docstring; ``metrics`` with ``base`` and ``tuned`` is required.
        metrics_jsonl: the training run's metrics.jsonl (source of the loss curve); None draws no curve.

    Returns:
        ``{"markdown": path, "html": path, "loss_png": path or None, "loss_points": n}``.

    Raises:
        ValueError: the summary has no base/tuned metrics.
    """
    if not isinstance(summary.get("metrics"), dict) or not {"base", "tuned"} <= set(summary["metrics"]):
        raise ValueError("summary['metrics'] must hold 'base' and 'tuned' metric dicts")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = None
    points: list = []
    if metrics_jsonl is not None:
        points = read_loss_curve(metrics_jsonl)
        png = plot_loss(points, out_dir / LOSS_PNG, title=f"training loss — {summary.get('model', '')}".rstrip(" —"))
    md = atomic_write_text(out_dir / REPORT_MD, render_markdown(summary, LOSS_PNG if png else None))
    page = atomic_write_text(out_dir / REPORT_HTML, render_html(summary, png))
    return {"markdown": str(md), "html": str(page), "loss_png": str(png) if png else None, "loss_points": len(points)}

"""CLI commands: ``data check`` and ``data preview`` (the ``data`` group, attached in cli/__init__.py)."""
from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ChattuneError
from ._common import console, fail

app = typer.Typer(help="Check, preview, convert and synthesise data.", no_args_is_help=True)

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"



def _tokenizer(model: str | None, tokenizer: str | None):
    from ..config import ModelConfig
    from ..model.load import load_tokenizer

    if model and tokenizer:
        raise ChattuneError("pass --model or --tokenizer, not both")
    if not (model or tokenizer):
        return None
    return load_tokenizer(ModelConfig(name_or_path=model) if model else ModelConfig(tokenizer=tokenizer))


_LOSS = typer.Option("assistant", "--loss", help="assistant, last or all (as data.loss).")
_THINKING = typer.Option("off", "--thinking", help="off, keep or mixed (as data.thinking).")
_FORMAT = typer.Option("auto", "--format", help="auto, alpaca, qa, prompt_completion, messages, sharegpt, text.")
_SYSTEM = typer.Option(None, "--system", help="System prompt for conversations without one.")


@app.command("check")
def check(
    files: list[Path] = typer.Argument(..., help="Data files (json, jsonl, csv, tsv, xlsx, parquet, save_to_disk dirs)."),
    model: str | None = typer.Option(None, "--model", help="Model whose tokenizer and chat template to check with."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Tokenizer folder or Hub id (instead of --model)."),
    max_length: int | None = typer.Option(None, "--max-length", min=8, help="Token limit (default 1024)."),
    fmt: str = _FORMAT,
    system: str | None = _SYSTEM,
    loss: str = _LOSS,
    thinking: str = _THINKING,
    sample: int = typer.Option(200, "--sample", min=0, help="Conversations to re-verify against the template."),
) -> None:
    """Report shape, counts, empty/duplicate rows, token lengths and template fidelity. Exit 0 clean, 1 warnings, 2 errors."""
    from ..data.check import check_data

    try:
        tok = _tokenizer(model, tokenizer)
        report = check_data([str(f) for f in files], tokenizer=tok, max_length=max_length, fmt=fmt, system=system,
                            loss=loss, thinking=thinking, sample=sample)
    except ChattuneError as e:
        raise fail(e) from None
    _print_check(report)
    raise typer.Exit(report["exit_code"])


def _print_check(report: dict) -> None:
    from rich.table import Table

    if report.get("files"):
        t = Table(title="files")
        for col in ("path", "format", "records", "conversations", "skipped"):
            t.add_column(col)
        for f in report["files"]:
            skipped = ", ".join(f"{k} {v}" for k, v in (f.get("skipped") or {}).items()) or "-"
            t.add_row(str(f["path"]), str(f["format"]), str(f["records"]), str(f["conversations"]), skipped)
        console.print(t)
        s = Table(title="summary", show_header=False)
        s.add_row("conversations", str(report["conversations"]))
        s.add_row("duplicates removed", str(report["duplicates_removed"]))
        s.add_row("assistant turns / conversation", _stats(report["turns"]))
        s.add_row("prompt chars", _stats(report["chars"]["prompt"]))
        s.add_row("answer chars", _stats(report["chars"]["answer"]))
        th, tl = report.get("thinking") or {}, report.get("tools") or {}
        if th:
            s.add_row(f"thinking: {th['policy']}", f"{th['rows']['keep']} row(s) with thinking, {th['rows']['off']} "
                      f"without; inference default: {th['inference_default']}")
        if tl.get("calls") or tl.get("rows_with_tools"):
            s.add_row("tools", f"{tl['rows_with_tools']} row(s) declare tools ({', '.join(tl['functions']) or '-'}); "
                      f"{tl['calls']} call(s), {tl['results']} result(s)")
        tk = report.get("tokens")
        if tk:
            s.add_row("sequences", str(tk["sequences"]))
            s.add_row("tokens", f"{tk['total']:,} ({tk['trained']:,} trained, {tk['trained_share']:.1%})")
            s.add_row("sequence tokens", _stats(tk["lengths"]))
            s.add_row(f"over max_length={tk['max_length']}",
                      f"{tk['over_max_length']} ({tk['over_share']:.1%}); would drop {tk['would_drop']}")
            s.add_row("template kwargs", str(tk["template_kwargs"] or "-"))
        fid = report.get("fidelity")
        if fid:
            s.add_row("fidelity (a)(b)(c)", f"{fid['checked'] - fid['failed']}/{fid['checked']} sampled "
                      "conversations match apply_chat_template")
        console.print(s)
        if tk:
            h = Table(title="sequence length (tokens)")
            h.add_column("range")
            h.add_column("count", justify="right")
            h.add_column("")
            top = max((b["count"] for b in tk["histogram"]), default=1) or 1
            for b in tk["histogram"]:
                h.add_row(b["range"], str(b["count"]), "█" * round(30 * b["count"] / top))
            console.print(h)
    if report.get("control_tokens"):
        console.print(f"[bold]control tokens in content[/] ({len(report['control_tokens'])}; encoded as text):")
        for row in report["control_tokens"]:
            console.print(f"  {_esc(row)}", highlight=False)
    if (report.get("tools") or {}).get("problems"):
        console.print(f"[bold]tool problems[/] ({len(report['tools']['problems'])}):")
        for row in report["tools"]["problems"]:
            console.print(f"  {_esc(row)}", highlight=False)
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/] {_esc(w)}")
    for e in report["errors"]:
        console.print(f"[bold red]error:[/] {_esc(e)}")
    if not report["warnings"] and not report["errors"]:
        console.print("[green]clean[/]")


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _stats(st: dict) -> str:
    if not st:
        return "-"
    return f"min {st['min']} · median {st['median']} · p95 {st['p95']} · max {st['max']}"


@app.command("preview")
def preview(
    file: Path = typer.Argument(..., help="Data file."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Tokenizer folder or Hub id."),
    model: str | None = typer.Option(None, "--model", help="Model whose tokenizer to use (instead of --tokenizer)."),
    n: int = typer.Option(3, "-n", "--n", min=1, help="How many conversations."),
    max_length: int | None = typer.Option(None, "--max-length", min=8, help="Token limit, as in training."),
    fmt: str = _FORMAT,
    system: str | None = _SYSTEM,
    loss: str = _LOSS,
    thinking: str = _THINKING,
) -> None:
    """Show conversations as the model will be trained on them; trained tokens highlighted (⟦…⟧ when piped)."""
    from rich.text import Text

    from ..data.preview import preview as run_preview

    try:
        tok = _tokenizer(model, tokenizer)
        if tok is None:
            raise ChattuneError("pass --tokenizer (or --model) to preview the rendered tokens")
        items = run_preview([str(file)], tok, n=n, fmt=fmt, system=system, max_length=max_length, loss=loss,
                            thinking=thinking)
    except ChattuneError as e:
        raise fail(e) from None
    tty = console.is_terminal
    for item in items:
        console.rule(f"{item['source']} · line/row {item['row']}", style="dim")
        if item["error"]:
            console.print(f"[red]cannot render:[/] {_esc(item['error'])}")
        for seq in item["sequences"]:
            text = Text()
            for part, trained in seq["segments"]:
                if tty:
                    text.append(part, style="bold green" if trained else "dim")
                else:
                    text.append(f"{TRAINED_OPEN}{part}{TRAINED_CLOSE}" if trained else part)
            console.print(text, soft_wrap=True, highlight=False)
            console.print(f"[dim]{seq['tokens']} tokens, {seq['trained_tokens']} trained"
                          f"{', TRUNCATED' if seq['truncated'] else ''} · first {seq['messages']} messages[/]")
        for s in item["skipped_turns"]:
            console.print(f"[yellow]message {s['message']} not trained:[/] {_esc(s['why'])}")

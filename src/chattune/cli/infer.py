"""CLI commands: eval, predict, chat (attached to the root app in cli/__init__.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from ._common import console, err_console

app = typer.Typer()  # attached to the root app by cli/__init__.py

_MODEL_HELP = "Run dir, merged/plain model folder, 'smollm2-135m-instruct', a .gguf file or a Hub id."


def _default_out(model: str, data: Path) -> Path:
    from ..rundir.layout import is_run_dir

    if is_run_dir(model):
        return Path(model) / "eval" / data.stem
    return Path("eval") / f"{Path(model).name or 'model'}-{data.stem}"


def _progress(label: str):
    """Progress on stderr, returned as (context manager, callback(done, total)): a rich bar on a terminal,
    else a plain line at a steady interval (a live bar draws nothing into a log file)."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not err_console.is_terminal:
        from ..progress import ProgressLines

        lines = ProgressLines(label, lambda line: err_console.print(line, markup=False, highlight=False,
                                                                    soft_wrap=True))
        return contextlib.nullcontext(), lambda done, total: lines.update(done, total, final=done >= total)
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True)
    task = bar.add_task(label, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


def _metrics_table(title: str, columns: dict[str, dict]):
    from rich.table import Table

    t = Table(title=title)
    t.add_column("metric")
    for name in columns:
        t.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for m in columns.values() for k in m))
    for k in keys:
        t.add_row(k, *[f"{m[k]:.4f}" if isinstance(m.get(k), float) else str(m.get(k, "")) for m in columns.values()])
    return t


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    data: Path = typer.Option(..., "--data", help="Test data, any supported format; the last assistant turn is "
                              "the reference answer."),
    metrics: str = typer.Option("exact", "--metrics", help="Comma list: exact, contains, json_fields, rouge_l, "
                                "bleu4, loss, tool_calls."),
    compare: str | None = typer.Option(None, "--compare", help="Also evaluate this base model ('base' = the run "
                                          "dir's base) and write a before/after report."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: RUN_DIR/eval/<data name>, "
                                       "else ./eval/<model>-<data name>)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate only the first N examples."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    device: str | None = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    dtype: str | None = typer.Option(None, help="float32, bfloat16 or float16 (default: the run's)."),
) -> None:
    """Generate answers for a test file (batched greedy) and score them; optionally before/after a base model."""
    from ..infer.compare import compare as run_compare
    from ..infer.evaluate import evaluate

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    out = out or _default_out(model, data)
    bar, cb = _progress("generating")
    kw = dict(metrics=names, max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit, out_dir=out,
              progress=cb, device=device, dtype=dtype)
    with bar:
        res = run_compare(compare, model, data, **kw) if compare else evaluate(model, data, **kw)
    if compare:
        console.print(_metrics_table(f"{res['n']} examples from {data}", {"base": res["base"], "tuned": res["tuned"]}))
        console.print(f"report: {res['report_path']}", highlight=False)
    else:
        console.print(_metrics_table(f"{res['n']} examples from {data}", {Path(model).name or model: res["metrics"]}))
        t = res["timing"]
        console.print(f"{t['new_tokens']} tokens in {t['generation_seconds']} s ({t['tokens_per_second']} tok/s); "
                      f"predictions: {res['predictions_path']}", highlight=False)


@app.command("predict")
def predict_cmd(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    data: Path = typer.Option(..., "--data", help="Input data, any supported format (answers optional)."),
    out: Path = typer.Option(..., "--out", help="Output file, one record per example (output beside reference): "
                             ".jsonl, .json, .xlsx or .csv by its suffix."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N examples."),
    device: str | None = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    dtype: str | None = typer.Option(None, help="float32, bfloat16 or float16 (default: the run's)."),
) -> None:
    """Batch generation (greedy) over a data file; writes OUT atomically."""
    from ..infer.evaluate import predict

    bar, cb = _progress("generating")
    with bar:
        res = predict(model, data, out, batch_size=batch_size, max_new_tokens=max_new_tokens, limit=limit,
                      progress=cb, device=device, dtype=dtype)
    t = res["timing"]
    console.print(f"{res['n']} predictions → {res['out_path']} ({t['new_tokens']} tokens, "
                  f"{t['tokens_per_second']} tok/s)", highlight=False)


_CHAT_HELP = ('commands: /reset (forget the conversation), /system TEXT (set or, empty, remove the system prompt), '
              '/exit; multi-line: end a line with \\ to continue it, or paste between two lines of """')
_PASTE = '"""'
_DIM, _PLAIN = "\x1b[2m", "\x1b[0m"


def read_message(readline, more) -> str | None:
    """One chat message from `readline` (None at end of input).

    A line ending in a backslash continues on the next line; a line that is exactly ``\"\"\"`` starts a paste
    block that runs to the next such line (blank lines kept), so multi-line prompts can be typed or pasted.
    `more` is called before each continuation line (the interactive prompt).
    """
    line = readline()
    if not line:
        return None
    text = line.rstrip("\r\n")
    if text.strip() == _PASTE:
        parts: list[str] = []
        while True:
            more()
            line = readline()
            if not line or line.rstrip("\r\n").strip() == _PASTE:
                return "\n".join(parts)
            parts.append(line.rstrip("\r\n"))
    parts = []
    while text.endswith("\\"):
        parts.append(text[:-1])
        more()
        line = readline()
        if not line:
            break
        text = line.rstrip("\r\n")
    else:
        parts.append(text)
    return "\n".join(parts)


@app.command("chat")
def chat_cmd(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    system: str | None = typer.Option(None, "--system", help="System prompt (default: the one the run trained "
                                         "with; \"\" for none)."),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(0.9, "--top-p", min=0.0, max=1.0),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1),
    seed: int | None = typer.Option(None, "--seed", help="Seed the sampler for reproducible answers."),
    device: str | None = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    dtype: str | None = typer.Option(None, help="float32, bfloat16 or float16 (default: the run's)."),
) -> None:
    """Chat in the terminal, token by token, with history. Reads stdin (works from a pipe); a line ending in \\
    continues the message, and text between two lines of \"\"\" is one message. Reasoning (thinking: keep) is dimmed."""
    from ..infer.chat import ChatSession
    from ..infer.generate import Generator

    interactive = sys.stdin.isatty()
    err_console.print(f"loading {model} …", highlight=False)
    gen = Generator.from_path(model, device=device, dtype=dtype)
    session = ChatSession(gen, system=system, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p, seed=seed)
    err_console.print(f"ready ({gen.name}, thinking {gen.thinking}). {_CHAT_HELP}", highlight=False, markup=False)
    if session.system:
        origin = "--system" if system is not None else "the run's"
        err_console.print(f"system prompt ({origin}): {session.system}", highlight=False, markup=False)
    out = sys.stdout
    dim = out.isatty()

    def prompt(text: str) -> None:
        if interactive:
            out.write(text)
            out.flush()

    while True:
        prompt("\n>>> ")
        try:
            text = read_message(sys.stdin.readline, lambda: prompt("... "))
        except KeyboardInterrupt:
            break
        if text is None:  # EOF
            break
        if not text.strip():
            continue
        cmd, _, arg = text.strip().partition(" ")
        if cmd in ("/exit", "/quit"):
            break
        if cmd == "/reset":
            session.reset()
            out.write("[history cleared]\n")
            out.flush()
            continue
        if cmd == "/system":
            session.set_system(arg)
            out.write(f"[system prompt {'set' if session.system else 'removed'}]\n")
            out.flush()
            continue
        if cmd.startswith("/"):
            out.write(f"[unknown command {cmd}; {_CHAT_HELP}]\n")
            out.flush()
            continue
        split, last = gen.reasoning_stream(), None
        try:
            for part in session.send(text):
                pieces = split.feed(part) if isinstance(part, str) else split.finish(part.text)
                for kind, piece in pieces:
                    if kind != last and last is not None:
                        out.write("\n")  # reasoning, then the answer on its own line
                    last = kind
                    out.write(f"{_DIM}{piece}{_PLAIN}" if kind == "reasoning" and dim else piece)
                out.flush()
                if not isinstance(part, str) and part.finish_reason == "length":
                    out.write(f" [cut at --max-new-tokens {max_new_tokens}]")
        except KeyboardInterrupt:  # Ctrl-C stops this answer (the stream cancels itself), not the chat
            out.write(" [interrupted]")
        out.write("\n")
        out.flush()

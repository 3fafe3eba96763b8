"""CLI commands: ``data synth city-date|weather-tool`` and ``data convert`` (joined to the ``data`` group in cli/__init__.py)."""
from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ChattuneError
from ._common import console, fail

app = typer.Typer()

synth_app = typer.Typer(help="Generate synthetic training data.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")



@synth_app.command("city-date")
def city_date(
    n: int = typer.Option(1000, "--n", min=0, help="Number of train rows."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same rows)."),
    out: Path = typer.Option(..., "--out", help="Train file: .jsonl (prompt/completion/sentence) or .xlsx "
                             "(Prompt/Completion, pandas index) or .json."),
    prompt: str = typer.Option("short", "--prompt", help="short (one-line instruction) or steps (the "
                               "tutorial's step-by-step prompt)."),
    split: int = typer.Option(0, "--split", min=0, help="Number of held-out test rows (no sentence in both)."),
    test_out: Path | None = typer.Option(None, "--test-out", help="Test file, needed with --split."),
) -> None:
    """City + date → JSON extraction examples (the Chinese SFT tutorials' task)."""
    from ..data.synth import make_city_date_files

    if prompt not in ("short", "steps"):
        raise fail(ChattuneError(f"--prompt {prompt!r}: expected short or steps"))
    try:
        counts = make_city_date_files(out, n, seed, prompt=prompt, n_test=split, test_out=test_out)
    except ChattuneError as e:
        raise fail(e) from None
    console.print(f"wrote {counts['train']} train rows to {out}")
    if test_out is not None:
        console.print(f"wrote {counts['test']} test rows to {test_out}")


@synth_app.command("weather-tool")
def weather_tool(
    n: int = typer.Option(1000, "--n", min=0, help="Number of train rows."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same rows)."),
    out: Path = typer.Option(..., "--out", help="Train file (.jsonl or .json): messages with tool calls + tools."),
    split: int = typer.Option(0, "--split", min=0, help="Number of held-out test rows (no sentence in both); "
                              "they end at the decision turn (a call, or an answer without a tool)."),
    test_out: Path | None = typer.Option(None, "--test-out", help="Test file, needed with --split."),
    answer_share: float = typer.Option(0.3, "--answer-share", min=0.0, max=1.0,
                                       help="Share of rows to answer without calling the tool."),
    decision_only: bool = typer.Option(False, "--decision-only", help="Train rows end at the decision turn "
                                       "(the call, or the answer) too, without the tool result and final answer."),
    compact: bool = typer.Option(False, "--compact", help="Declare get_weather without descriptions (shorter "
                                 "prompts for a CPU run)."),
) -> None:
    """Weather tool calling: get_weather(city, date) calls taken from the city + date sentences, and rows to
    answer without a tool."""
    from ..data.synth import make_weather_tool_files

    try:
        counts = make_weather_tool_files(out, n, seed, n_test=split, test_out=test_out, answer_share=answer_share,
                                         decision_only=decision_only, compact=compact)
    except ChattuneError as e:
        raise fail(e) from None
    console.print(f"wrote {counts['train']} train rows to {out}")
    if test_out is not None:
        console.print(f"wrote {counts['test']} test rows to {test_out}")


@app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="Input file in any supported shape and type."),
    to: Path = typer.Option(..., "--to", help="Output: .jsonl (messages), .json (alpaca) or .xlsx "
                            "(Prompt/Completion)."),
    fmt: str = typer.Option("auto", "--format", help="Input shape: auto, alpaca, qa, prompt_completion, "
                            "messages, sharegpt, text."),
    shape: str | None = typer.Option(None, "--shape", help="Output shape: messages, alpaca or "
                                        "prompt_completion (default by suffix)."),
) -> None:
    """Normalise a data file into messages JSONL, Alpaca JSON or an xlsx sheet."""
    from ..data.convert import convert_file

    try:
        count = convert_file(src, to, fmt=fmt, to=shape)
    except ChattuneError as e:
        raise fail(e) from None
    console.print(f"wrote {count} conversations to {to}")

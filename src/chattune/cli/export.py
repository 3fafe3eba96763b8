"""CLI command: export (registered on the app in cli/__init__.py)."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..errors import ChattuneError
from ._common import console, fail

app = typer.Typer()  # attached to the root app by cli/__init__.py


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="Run directory of a training run (adapter or full weights)."),
    to: str = typer.Option(..., "--to", help="gguf (llama.cpp) | ollama (GGUF + Modelfile) | "
                           "vllm (folder + serve.sh)."),
    quant: str = typer.Option("q8_0", "--quant", help="GGUF precision: f16 | q8_0 | q4_k_m (gguf/ollama)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Export folder (default: RUN-<to>[-<quant>] "
                                    "beside the run)."),
    lora_only: bool = typer.Option(False, "--lora-only", help="Export the adapter itself (GGUF LoRA for llama-server "
                                   "--lora, or vLLM --lora-modules) instead of merged weights."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the tokenization/template/greedy parity checks."),
    eval_file: Path | None = typer.Option(None, "--eval", help="Held-out data: report the task metric of the "
                                          "exported model next to the HF run's (gguf/ollama)."),
    eval_limit: int | None = typer.Option(None, "--eval-limit", min=1, help="Use the first N rows of --eval."),
) -> None:
    """Export a run for llama.cpp, Ollama or vLLM and prove it answers like the run."""
    from ..export.report import markdown
    from ..export.run import export as run_export

    try:
        rep = run_export(run_dir, to=to, quant=quant, out=out, lora_only=lora_only, verify=not no_verify,
                         eval_file=eval_file, eval_limit=eval_limit)
    except ChattuneError as e:
        raise fail(e) from None
    table = Table(title=f"export {rep.target}" + (f" ({rep.quant})" if rep.quant and rep.target != "vllm" else ""))
    table.add_column("check")
    table.add_column("result")
    for p in rep.parity:
        table.add_row(p.name, f"{'[green]' if p.ok else '[yellow]'}{p.matched}/{p.total}[/]"
                      + (f" — {p.first_mismatch}" if p.first_mismatch else ""))
    if rep.metric:
        m = rep.metric
        table.add_row(f"{m['name']} ({m['n']} held-out)", f"export {m['engine']:.3f} vs HF {m['hf']:.3f}")
    if rep.parity or rep.metric:
        console.print(table)
    console.print(markdown(rep).split("Use it:")[-1].strip() if rep.usage else "")
    console.print(f"[bold green]exported[/] {rep.run_dir} → {rep.out_dir} ({rep.seconds} s)")

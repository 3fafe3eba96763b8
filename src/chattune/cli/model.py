"""CLI commands: merge and doctor (attached to the root app in cli/__init__.py)."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import console

app = typer.Typer()  # attached to the root app by cli/__init__.py


@app.command()
def merge(
    run_dir: Path = typer.Argument(..., help="Run directory of a LoRA/DoRA/QLoRA training run."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the merged model (plain Hugging Face layout)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: the run's)."),
    n_verify: int = typer.Option(20, "--n-verify", min=0, help="Training prompts on which adapter and merged "
                                 "model must give identical greedy output (0 = skip)."),
) -> None:
    """Merge the adapter into its base model, save it, and verify the merge changed no output."""
    from ..infer.merge import merge as merge_run

    report = merge_run(run_dir, out, dtype=dtype, n_verify=n_verify)
    ver = report.get("verify")
    if ver:
        table = Table(title=f"verification: adapter vs merged ({ver['source']}, greedy, "
                            f"{ver['max_new_tokens']} new tokens)", show_lines=False)
        for col in ("#", "prompt (end)", "adapter output", "merged", "max |Δlogit|"):
            table.add_column(col, overflow="fold")
        for i, r in enumerate(ver["rows"], 1):
            same = "[green]same[/]" if r["identical"] else ("[yellow]tie[/]" if r["tie"] else "[red]DIFFERENT[/]")
            table.add_row(str(i), r["prompt"][-40:].replace("\n", "⏎"), r["reference"][:60].replace("\n", "⏎"),
                          same, f"{r['max_abs_logit_diff']:.2e}")
        console.print(table)
        effect = ver.get("adapter_effect")
        console.print(f"identical {ver['identical']}/{ver['prompts']}, ties {ver['ties']}, "
                      f"max |logit diff| {ver['max_abs_logit_diff']:.3g} (bound {ver['tolerance']:.3g}, "
                      f"in {ver['compute_dtype']})" + (f", adapter effect {effect:.3g}" if effect is not None else ""))
    else:
        console.print("[yellow]verification skipped (--n-verify 0)[/]")
    if report.get("note"):
        console.print(f"[yellow]note:[/] {report['note']}")
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    checked = (f", verified on {ver['prompts']} of {ver['asked']} prompts asked" if ver and ver["prompts"] < ver["asked"]
               else "")
    console.print(f"[bold green]merged[/] {report['run_dir']} → {report['out_dir']} "
                  f"({report['dtype']}, {report['seconds']} s{checked})")


@app.command()
def doctor(
    args: list[str] | None = typer.Argument(None, metavar="[CONFIG] [KEY=VALUE]...",
                                               help="Optional config YAML, then dotted overrides."),
    gpu: str | None = typer.Option(None, "--gpu", help="Plan for this card instead of this machine: "
                                   "rtx4090, 24gb, l4, t4, a10g, l40s, a100-40, a100-80, h100-80, h200-141."),
    gpu_memory: str | None = typer.Option(None, "--gpu-memory", help="Plan for a CUDA card with this much "
                                          "memory, e.g. 24GB (offline: known model families need no Hub)."),
) -> None:
    """Show versions, devices and free memory; with a config, the run plan and whether training fits."""
    from ..config import load_config
    from ..model.doctor import doctor as run_doctor

    args = list(args or [])
    path = args.pop(0) if args and "=" not in args[0] else None
    cfg = load_config(path, args) if (path or args) else None
    rep = run_doctor(cfg, gpu=gpu, gpu_memory=gpu_memory)
    info = rep.machine

    t = Table(title="chattune doctor", show_header=False)
    t.add_column("item", style="bold")
    t.add_column("value")
    t.add_row("python", f"{info['python']} ({info['platform']})")
    for name, ver in info["versions"].items():
        t.add_row(name, ver or "[red]not installed[/]")
    for name, ok in info["optional"].items():
        t.add_row(name, "[green]available[/]" if ok else "[dim]not installed[/]")
    t.add_row("CPU cores / RAM free", f"{info['cpu_count']} / {info['ram_free_gb']} of {info['ram_total_gb']} GiB")
    if info["cuda"]:
        for g in info["gpus"]:
            t.add_row(f"GPU {g['index']}", f"{g['name']}: {g['free_gb']} of {g['total_gb']} GiB free, "
                      f"bf16 {'yes' if g['bf16'] else 'no'} (CUDA {info['cuda_version']})")
    else:
        t.add_row("GPU", "none (CPU training: fp32, no gradient checkpointing, qlora slow)")
    console.print(t)
    if rep.problem:
        console.print(f"[bold red]cannot train on {rep.target}[/]: {rep.problem}")
        raise typer.Exit(1)
    if rep.plan is None:
        return
    from ..plan import describe

    plan, est = rep.plan, rep.plan.memory
    console.print(describe(plan))
    if est is None:
        console.print("[yellow]memory estimate: unknown model shape[/]")
        return
    console.print(f"[bold]memory estimate[/]: {est.model} · {est.method} · {est.dtype} · {rep.target} · batch "
                  f"{est.batch_size} × {est.max_length} tokens · gradient checkpointing "
                  f"{'on' if est.gradient_checkpointing else 'off'} · shape from {est.shape_source}")
    e = Table()
    e.add_column("part")
    e.add_column("GiB", justify="right")
    for part in est.parts():
        e.add_row(part, f"{est.gib(part):.3f}")
    e.add_row("[bold]total[/]", f"[bold]{est.gib():.3f}[/]")
    e.add_row("budget", f"{(est.budget_bytes or 0) / 1024 ** 3:.3f}")
    console.print(e)
    console.print(f"params {est.params:,} · trainable {est.trainable_params:,} · vocab {est.vocab_size:,}")
    colour = {"fits": "green", "tight": "yellow"}.get(est.verdict, "red")
    console.print(f"verdict: [bold {colour}]{est.verdict}[/] on {est.budget_label}")
    for tip in est.advice:
        console.print(f"  · {tip}")

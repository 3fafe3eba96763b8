"""export_report.json + export_report.md: what was exported, how big, how long, and what the checks proved."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..fsutil import atomic_write_text
from .verify_llamacpp import Parity

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"


@dataclass(frozen=True)
class ExportReport:
    """The result of one `chattune export` (also written as export_report.json).

    Attributes:
        run_dir, out_dir: source run and export folder.
        target: gguf | ollama | vllm.
        quant: f16 | q8_0 | q4_k_m (GGUF targets), else None.
        lora_only: the adapter was exported as an adapter (not merged).
        files: {relative path: bytes} of what the export holds.
        seconds: wall time of the export (verification included).
        verified: False with --no-verify.
        parity: the checks, in order (tokenization, templates, behaviour).
        metric: task metric of the exported engine next to the HF run's ({"name", "engine", "hf", "n"}).
        usage: the command(s) that serve the export as verified.
        notes: anything a user must know (e.g. the thinking kwargs for llama.cpp).
    """

    run_dir: str
    out_dir: str
    target: str
    quant: str | None
    lora_only: bool
    files: dict
    seconds: float
    verified: bool
    parity: list[Parity] = field(default_factory=list)
    metric: dict | None = None
    usage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["parity"] = [{**asdict(p), "ok": p.ok, "percent": round(p.percent, 2)} for p in self.parity]
        return d


def markdown(rep: ExportReport) -> str:
    """A short table: files and sizes, each parity check, the task metric."""
    lines = [f"# chattune export: {rep.target}" + (f" ({rep.quant})" if rep.quant else ""), "",
             f"run `{rep.run_dir}` → `{rep.out_dir}` in {rep.seconds:.1f} s", "",
             "| file | size |", "| --- | ---: |"]
    lines += [f"| {name} | {size / 2**20:.1f} MiB |" for name, size in sorted(rep.files.items())]
    lines += ["", "| check | result |", "| --- | --- |"]
    if not rep.verified:
        lines.append("| verification | skipped (--no-verify) |")
    for p in rep.parity:
        extra = f" — first mismatch: {p.first_mismatch}" if p.first_mismatch else ""
        if p.name == "greedy answers":
            extra = f" (identical {p.detail.get('identical')}, ties {p.detail.get('ties')})" + extra
        lines.append(f"| {p.name} | {p.matched}/{p.total} ({p.percent:.1f}%){extra} |")
    if rep.metric:
        m = rep.metric
        lines.append(f"| {m['name']} on {m['n']} held-out prompts | export {m['engine']:.3f} vs HF {m['hf']:.3f} |")
    if rep.usage:
        lines += ["", "Use it:", "", "```bash", *rep.usage, "```"]
    if rep.notes:
        lines += ["", *[f"- {n}" for n in rep.notes]]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, rep: ExportReport) -> None:
    """Write both files (each atomically; the whole export folder is renamed into place after this)."""
    atomic_write_text(folder / REPORT_JSON, json.dumps(rep.to_dict(), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(folder / REPORT_MD, markdown(rep))


def file_sizes(folder: Path) -> dict:
    """{relative path: bytes} of every file under `folder` (reports excluded)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (REPORT_JSON, REPORT_MD)}


def read_report(folder: str | Path) -> dict | None:
    """The export_report.json of an export folder as written by `write_report`, or None when there is none."""
    try:
        rep = json.loads((Path(folder) / REPORT_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rep if isinstance(rep, dict) else None

"""`chattune export RUN --to gguf|ollama|vllm`: stage the run, build the target, verify it, report.

Everything is built in a temp folder beside `--out` and renamed into place only after verification passed,
so a failed export leaves nothing that looks complete.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ..errors import ChattuneError
from ..fsutil import atomic_path
from .gguf import QUANTS
from .report import REPORT_JSON, ExportReport, file_sizes, write_report

log = logging.getLogger(__name__)
TARGETS = ("gguf", "ollama", "vllm")
MAX_TOKENIZE = 2000      # conversations for tokenization parity (the "a few thousand" cap)
MAX_TEMPLATE = 500       # prompts for template parity
N_PROMPTS = 20           # held-out prompts for behaviour parity


def default_out(run_dir: Path, to: str, quant: str | None) -> Path:
    """`RUN-gguf-q8_0`, `RUN-ollama-q8_0`, `RUN-vllm` beside the run dir."""
    return run_dir.parent / (f"{run_dir.name}-{to}" + (f"-{quant}" if quant else ""))


def _check_args(to: str, quant: str, out: Path, run_dir: Path) -> None:
    if to not in TARGETS:
        raise ChattuneError(f"--to {to!r} is not a target; expected one of {', '.join(TARGETS)}")
    if quant not in QUANTS:
        raise ChattuneError(f"--quant {quant!r} is not supported; expected one of {', '.join(QUANTS)}")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise ChattuneError(f"--out {out} must be outside the run dir")
    if out.exists() and any(out.iterdir()) and not (out / REPORT_JSON).is_file():
        raise ChattuneError(f"{out} exists and is not a previous export (no {REPORT_JSON}); choose another --out")


def _data(cfg) -> tuple[list[list[dict]], list[list[dict]], str]:
    """(all conversations for tokenization/template parity, held-out prompts, where the prompts came from)."""
    from ..data.formats import load_conversations

    train = load_conversations(cfg.data.train, cfg.data)[0] if cfg.data.train else []
    held = load_conversations(cfg.data.eval, cfg.data)[0] if cfg.data.eval else []
    convs = [list(c.messages) for c in train + held]
    if not convs:
        raise ChattuneError("the run's data files are gone; verification renders the run's own conversations "
                            "(restore them, or export with --no-verify)")
    pool, source = (held, "held-out (data.eval)") if held else (train[-N_PROMPTS:], "last training rows")
    prompts = []
    for c in pool:
        last = max((i for i, m in enumerate(c.messages) if m["role"] == "assistant"), default=0)
        if last:
            prompts.append(list(c.messages[:last]))
    return convs, prompts[:N_PROMPTS], source


def _metric(facts, cfg, eval_file: Path, generator, gguf: Path, n: int | None) -> dict:
    """The task metric (the run's first eval metric) of llama.cpp vs HF on a held-out file, read with the
    run's data settings exactly as `chattune eval` reads it."""
    from ..infer import metrics as M
    from ..infer.evaluate import data_config_for, load_examples
    from .verify_llamacpp import behaviour_parity

    name = next((m for m in cfg.eval.metrics if m != "loss"), "exact")
    ex = load_examples(eval_file, data_config_for(facts.run_dir), limit=n)
    par, engine, hf = behaviour_parity(gguf, generator, [e.messages for e in ex],
                                       max_new_tokens=cfg.eval.max_new_tokens)

    def score(preds: list[str]) -> float:
        return sum(M.score_row(p, e.reference, [name])[name] for p, e in zip(preds, ex)) / len(ex)

    return {"name": name, "n": len(ex), "engine": score(engine), "hf": score(hf), "agreement": par.percent,
            "identical": par.detail["identical"], "ties": par.detail["ties"]}


def export(run_dir: str | Path, *, to: str, quant: str = "q8_0", out: str | Path | None = None,
           lora_only: bool = False, verify: bool = True, eval_file: str | Path | None = None,
           eval_limit: int | None = None) -> ExportReport:
    """Export a run for llama.cpp (gguf), Ollama or vLLM, verify it against the run, and write the report.

    Args:
        run_dir: a chattune run directory.
        to: "gguf", "ollama" or "vllm".
        quant: GGUF precision ("f16", "q8_0", "q4_k_m"); ignored for vllm.
        out: export folder (default: beside the run dir, see `default_out`).
        lora_only: export the adapter as an adapter (GGUF LoRA / vLLM --lora-modules) instead of merging.
        verify: run the parity checks (tokenization, template, greedy answers).
        eval_file: held-out data for the task metric next to HF's (GGUF targets).
        eval_limit: first N rows of eval_file.

    Returns:
        The `ExportReport` (also export_report.json / .md in the folder).

    Raises:
        ChattuneError: bad arguments, a missing llama.cpp build, a failed conversion or a failed check
            (nothing is left at `out` then).
    """
    from .stage import read_facts

    t0 = time.time()
    run_dir = Path(run_dir)
    out = Path(out) if out else default_out(run_dir, to, None if to == "vllm" else quant)
    _check_args(to, quant, out, run_dir)
    facts, tok, cfg = read_facts(run_dir)
    if lora_only and not facts.is_adapter:
        raise ChattuneError(f"--lora-only: {run_dir} holds full weights (method {facts.method}), not an adapter")
    if to != "vllm":
        from .llamacpp import require_binding, require_converter

        require_converter()  # fail before any merging when llama.cpp is missing
        require_binding()
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix=".export-work-", dir=out.parent) as work:
        tmp.mkdir()
        work = Path(work)
        if to == "vllm":
            rep = _vllm(facts, tok, cfg, tmp, work, lora_only=lora_only, verify=verify)
        else:
            rep = _gguf(facts, tok, cfg, tmp, work, to=to, quant=quant, lora_only=lora_only, verify=verify,
                        eval_file=eval_file, eval_limit=eval_limit)
        rep = replace(rep, out_dir=str(out), files=file_sizes(tmp), seconds=round(time.time() - t0, 1))
        write_report(tmp, rep)
    return rep


def _fail_on(parity) -> None:
    for p in parity:
        if not p.ok:
            raise ChattuneError(f"export verification failed: {p.name} parity {p.matched}/{p.total}; first mismatch: "
                                f"{p.first_mismatch}. Nothing was written.")


def _gguf(facts, tok, cfg, tmp: Path, work: Path, *, to: str, quant: str, lora_only: bool, verify: bool,
          eval_file, eval_limit) -> ExportReport:
    from . import gguf as G
    from .stage import stage_hf_folder

    notes, usage = [], []
    if lora_only:
        base_gguf = work / "base-f16.gguf"
        base_hf = Path(facts.base_source)
        G.convert(base_hf, base_gguf)
        lora = tmp / "adapter-f16.gguf"
        G.convert_lora(facts.run_dir, str(base_hf), lora)
        model = tmp / f"base-{quant}.gguf"
        _finish_gguf(G, base_gguf, model, quant)
        usage.append(f"llama-server -m {model.name} --lora {lora.name} --jinja "
                     "--chat-template-file chat_template.jinja")
        (tmp / "chat_template.jinja").write_text(facts.template, encoding="utf-8")  # the run's, not the base's
        meta = None
    else:
        hf = stage_hf_folder(facts, work / "hf")
        G.prepare_for_converter(hf, facts)
        f16 = work / "model-f16.gguf"
        G.convert(hf, f16)
        model = tmp / f"model-{quant}.gguf"
        _finish_gguf(G, f16, model, quant)
        meta = G.check_metadata(model, facts)
        usage.append(f"llama-server -m {model.name} --jinja"
                     + (f" --chat-template-kwargs '{__import__('json').dumps(facts.template_kwargs)}'"
                        if facts.template_kwargs else ""))
    if facts.template_kwargs:
        notes.append(f"the run was trained with thinking: {facts.thinking}; llama.cpp renders the embedded template "
                     f"with {facts.template_kwargs} only when passed as --chat-template-kwargs (as above)")
    template = None
    if to == "ollama":
        from .ollama import derive_parts, go_template, modelfile

        template = go_template(derive_parts(tok, facts))
        ctx = min(facts.max_length, meta.n_ctx_train) if meta and meta.n_ctx_train else facts.max_length
        (tmp / "Modelfile").write_text(modelfile(model.name, template, facts, num_ctx=ctx), encoding="utf-8")
        usage = [f"ollama create {facts.run_dir.name} -f Modelfile", f"ollama run {facts.run_dir.name}"]
    parity, metric = [], None
    if verify and not lora_only:
        parity, metric = _verify_gguf(facts, tok, cfg, model, meta, template, eval_file, eval_limit)
    elif verify:  # the base GGUF holds the base's template; prompts come from the run's (chat_template.jinja)
        parity = [_behaviour(facts, cfg, model, lora=tmp / "adapter-f16.gguf")]
    return ExportReport(run_dir=str(facts.run_dir), out_dir="", target=to, quant=quant, lora_only=lora_only,
                        files={}, seconds=0.0, verified=verify, parity=parity, metric=metric,
                        usage=usage, notes=notes)


def _finish_gguf(G, f16: Path, dest: Path, quant: str) -> None:
    if quant == "f16":
        shutil.move(str(f16), dest)
    else:
        G.quantize(f16, dest, quant, threads=os.cpu_count() or 1)


def _verify_gguf(facts, tok, cfg, model: Path, meta, template, eval_file, eval_limit):
    from ..infer.generate import Generator
    from .verify_llamacpp import prompt_prefixes, template_parity, tokenization_parity

    convs, _, _ = _data(cfg)
    parity = [tokenization_parity(model, tok, facts, convs[:MAX_TOKENIZE])]
    prefixes = prompt_prefixes(convs)[:MAX_TEMPLATE]
    parity.append(template_parity(meta.chat_template, tok, facts, prefixes, bos=meta.bos_text, eos=meta.eos_text))
    if template is not None:
        from .verify_ollama import ollama_template_parity

        parity.append(ollama_template_parity(template, tok, facts, prefixes))
    _fail_on(parity)  # no point comparing answers when the prompts already differ
    gen = Generator.from_path(facts.run_dir, dtype="float32")
    parity.append(_behaviour(facts, cfg, model, generator=gen))
    metric = _metric(facts, cfg, Path(eval_file), gen, model, eval_limit) if eval_file else None
    return parity, metric


def _behaviour(facts, cfg, model: Path, *, generator=None, lora: Path | None = None):
    """Greedy parity on the run's held-out prompts; required for f16, reported for quantized weights (they
    move logits by more than rounding)."""
    from ..infer.generate import Generator
    from .verify_llamacpp import behaviour_parity

    _, prompts, source = _data(cfg)
    gen = generator or Generator.from_path(facts.run_dir, dtype="float32")
    par, _, _ = behaviour_parity(model, gen, prompts, lora=lora)
    par = replace(par, name=f"{par.name} ({source})")
    if not par.ok and model.name.endswith("f16.gguf"):
        _fail_on([par])
    return par


def _vllm(facts, tok, cfg, tmp: Path, work: Path, *, lora_only: bool, verify: bool) -> ExportReport:
    from .stage import stage_hf_folder
    from .vllm import ADAPTER_DIR, MODEL_DIR, check_lora_servable, max_lora_rank, write_bundle

    if verify:  # before any work: the check needs vLLM's venv
        from .verify_vllm import vllm_python

        vllm_python()
    hf = None if lora_only else stage_hf_folder(facts, work / "hf")
    cmd = write_bundle(facts, tok, hf, tmp, name=facts.run_dir.name)
    parity = []
    if verify:
        from ..infer.generate import Generator
        from .verify_vllm import vllm_parity

        _, prompts, _ = _data(cfg)
        gen = Generator.from_path(facts.run_dir, dtype="float32")
        if lora_only:
            lora = {"name": facts.run_dir.name, "path": str(tmp / ADAPTER_DIR),
                    "rank": max_lora_rank(check_lora_servable(facts, tok))}
            parity = vllm_parity(facts.base_source, facts, gen, prompts, lora=lora,
                                 generation_config=str(tmp / ADAPTER_DIR))
        else:
            parity = vllm_parity(str(tmp / MODEL_DIR), facts, gen, prompts, generation_config=str(tmp / MODEL_DIR))
        _fail_on(parity)
    return ExportReport(run_dir=str(facts.run_dir), out_dir="", target="vllm", quant=None, lora_only=lora_only,
                        files={}, seconds=0.0, verified=verify, parity=parity,
                        usage=["./serve.sh", " ".join(cmd)])

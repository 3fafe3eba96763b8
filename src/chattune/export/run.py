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


def _conversations(cfg) -> list[list[dict]]:
    """Every conversation of the run's data (train + data.eval) for tokenization/template parity."""
    from ..data.formats import load_conversations

    train = load_conversations(cfg.data.train, cfg.data)[0] if cfg.data.train else []
    held = load_conversations(cfg.data.eval, cfg.data)[0] if cfg.data.eval else []
    convs = [list(c.messages) for c in train + held]
    if not convs:
        raise ChattuneError("the run's data files are gone; verification renders the run's own conversations "
                            "(restore them, or export with --no-verify)")
    return convs


def heldout_prompts(run_dir: Path, cfg, eval_file: str | Path | None = None,
                    limit: int = N_PROMPTS) -> tuple[list[list[dict]], str]:
    """The held-out prompts greedy parity compares on: never rows the run trained on.

    From `eval_file` when given, else the run's `data.eval` files, else the split `data.eval_ratio` held out
    (the run dir's heldout.jsonl); each conversation up to its last assistant turn, read with the run's data
    settings as `chattune eval` reads them.

    Returns:
        (up to `limit` prompts, where they came from).

    Raises:
        ChattuneError: the run has no held-out data and no `eval_file` was given (says what to pass).
    """
    from ..infer.evaluate import data_config_for, load_examples
    from ..rundir.layout import HELDOUT_FILE

    if eval_file is not None:
        sources, label = [Path(eval_file)], f"held-out ({Path(eval_file).name})"
    elif cfg.data.eval:
        sources, label = list(cfg.data.eval), "held-out (data.eval)"
    elif (Path(run_dir) / HELDOUT_FILE).is_file():
        sources, label = [Path(run_dir) / HELDOUT_FILE], f"held-out ({HELDOUT_FILE})"
    else:
        raise ChattuneError(f"{run_dir}: the run has no held-out data (neither data.eval nor a data.eval_ratio "
                            f"split in {HELDOUT_FILE}) and greedy parity must not be judged on training rows: "
                            "pass --eval FILE (conversations the run did not train on), or export with --no-verify")
    prompts: list[list[dict]] = []
    for src in sources:
        if len(prompts) >= limit:
            break
        ex = load_examples(src, data_config_for(run_dir, src), limit=limit - len(prompts), need_reference=False)
        prompts += [e.messages for e in ex]
    return prompts, label


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
        return sum(M.score_row(p, e.reference or "", [name])[name] for p, e in zip(preds, ex)) / len(ex)

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
        eval_file: held-out data: the greedy parity prompts (default: the run's held-out data, see
            `heldout_prompts`) and, for GGUF targets, the task metric next to HF's.
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
    # before any work: greedy parity needs prompts the run did not train on
    held = heldout_prompts(facts.run_dir, cfg, eval_file) if verify else ([], "")
    if to != "vllm":
        from .llamacpp import require_binding, require_converter

        require_converter()  # fail before any merging when llama.cpp is missing
        require_binding()
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix=".export-work-", dir=out.parent) as work_s:
        tmp.mkdir()
        work = Path(work_s)
        if to == "vllm":
            rep = _vllm(facts, tok, tmp, work, lora_only=lora_only, verify=verify, held=held)
        else:
            rep = _gguf(facts, tok, cfg, tmp, work, to=to, quant=quant, lora_only=lora_only, verify=verify,
                        eval_file=eval_file, eval_limit=eval_limit, held=held)
        rep = replace(rep, out_dir=str(out), files=file_sizes(tmp), seconds=round(time.time() - t0, 1))
        write_report(tmp, rep)
    return rep


def _fail_on(parity) -> None:
    for p in parity:
        if not p.ok:
            raise ChattuneError(f"export verification failed: {p.name} parity {p.matched}/{p.total}; first mismatch: "
                                f"{p.first_mismatch}. Nothing was written.")


def _gguf(facts, tok, cfg, tmp: Path, work: Path, *, to: str, quant: str, lora_only: bool, verify: bool,
          eval_file, eval_limit, held) -> ExportReport:
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
        parity, metric = _verify_gguf(facts, tok, cfg, model, meta, template, eval_file, eval_limit, held)
    elif verify:  # the base GGUF holds the base's template; prompts come from the run's (chat_template.jinja)
        parity = [_behaviour(facts, model, held, lora=tmp / "adapter-f16.gguf")]
    return ExportReport(run_dir=str(facts.run_dir), out_dir="", target=to, quant=quant, lora_only=lora_only,
                        files={}, seconds=0.0, verified=verify, parity=parity, metric=metric,
                        usage=usage, notes=notes)


def _finish_gguf(G, f16: Path, dest: Path, quant: str) -> None:
    if quant == "f16":
        shutil.move(str(f16), dest)
    else:
        G.quantize(f16, dest, quant, threads=os.cpu_count() or 1)


def _verify_gguf(facts, tok, cfg, model: Path, meta, template, eval_file, eval_limit, held):
    from ..infer.generate import Generator
    from .verify_llamacpp import prompt_prefixes, template_parity, tokenization_parity

    convs = _conversations(cfg)
    parity = [tokenization_parity(model, tok, facts, convs[:MAX_TOKENIZE])]
    prefixes = prompt_prefixes(convs)[:MAX_TEMPLATE]
    parity.append(template_parity(meta.chat_template, tok, facts, prefixes, bos=meta.bos_text, eos=meta.eos_text))
    if template is not None:
        from .verify_ollama import ollama_template_parity

        parity.append(ollama_template_parity(template, tok, facts, prefixes))
    _fail_on(parity)  # no point comparing answers when the prompts already differ
    gen = Generator.from_path(facts.run_dir, dtype="float32")
    parity.append(_behaviour(facts, model, held, generator=gen))
    metric = _metric(facts, cfg, Path(eval_file), gen, model, eval_limit) if eval_file else None
    return parity, metric


def _behaviour(facts, model: Path, held, *, generator=None, lora: Path | None = None):
    """Greedy parity on the run's held-out prompts; required for f16, reported for quantized weights (they
    move logits by more than rounding)."""
    from ..infer.generate import Generator
    from .verify_llamacpp import behaviour_parity

    prompts, source = held
    gen = generator or Generator.from_path(facts.run_dir, dtype="float32")
    par, _, _ = behaviour_parity(model, gen, prompts, lora=lora)
    par = replace(par, name=f"{par.name} ({source})")
    if not par.ok and model.name.endswith("f16.gguf"):
        _fail_on([par])
    return par


def _vllm(facts, tok, tmp: Path, work: Path, *, lora_only: bool, verify: bool, held) -> ExportReport:
    from .stage import stage_hf_folder
    from .vllm import write_bundle
    from .vllm_launch import SERVER_MODULE, VLLM_PYTHON_ENV, server_args

    if verify:  # before any work: the check needs vLLM's venv
        from .vllm_launch import vllm_python

        vllm_python()
    hf = None if lora_only else stage_hf_folder(facts, work / "hf")
    spec = write_bundle(facts, tok, hf, tmp, name=facts.run_dir.name)
    parity, notes = [], []
    if facts.system:
        notes.append(f"vLLM does not add the run's default system prompt ({facts.system!r}); clients send it as the "
                     "first message (the verification does)")
    if verify:
        from ..infer.generate import Generator
        from .verify_vllm import vllm_parity

        prompts, source = held
        gen = Generator.from_path(facts.run_dir, dtype="float32")
        parity = vllm_parity(tmp, spec, facts, gen, prompts)
        parity = [replace(p, name=f"{p.name} ({source})") for p in parity]
        _fail_on(parity)
    return ExportReport(run_dir=str(facts.run_dir), out_dir="", target="vllm", quant=None, lora_only=lora_only,
                        files={}, seconds=0.0, verified=verify, parity=parity, notes=notes,
                        usage=[f"{VLLM_PYTHON_ENV}=<python of a venv with vLLM> ./serve.sh",
                               f"python -m {SERVER_MODULE} " + " ".join(server_args(spec))])

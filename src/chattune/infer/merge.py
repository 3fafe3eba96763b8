"""Merge a LoRA/DoRA/QLoRA run into a plain model folder, and prove the merge kept the adapter.

The merged folder is an ordinary Hugging Face model (safetensors + tokenizer + chat template +
generation_config with the end-of-turn EOS list) plus ``chattune_merge.json``. Verification compares the
saved folder with the adapter model on prompts from the run's own training data, greedy through the same
`Generator` that answers users and scored through `batching.tail_logits`:

* Both run in float32 whatever the saved dtype, so the only difference a correct merge can show is the
  one rounding of the merged weights to that dtype (`merge_tolerance`), never half-precision compute noise.
* Greedy outputs must match token for token; a divergence counts as a tie only where the reference's two
  candidate tokens are within twice the local logit difference and that difference is rounding-sized, and
  ties may be at most `MAX_TIE_SHARE` of the prompts.
* The adapter model with its adapter switched off is the base model: the merged model must be much closer
  to the adapter model than the base model is (half the distance), so a merge that dropped the adapter
  cannot pass however small the adapter's effect; an adapter that changes nothing is reported.

The adapter model (float32) answers first, is then merged in place and saved, so only one model is in
memory at a time: peak memory is the model in float32.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ChattuneError, ModelError
from ..fsutil import atomic_path, disk_full_is_an_error
from ..rundir.layout import MERGE_REPORT

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FALLBACK_PROMPTS = ("Hello! Who are you?", "Give me three tips for learning a new language.",
                    "What is 12 + 30?", "用一句话介绍一下你自己。")
MAX_NEW_TOKENS = 32
MAX_TIE_SHARE = 0.25
VERIFY_DTYPE = "float32"


def merge_tolerance(dtype: str) -> float:
    """The largest |logit difference| a correct merge saved in `dtype` may show against the adapter model,
    both run in float32: 128 x the dtype's unit roundoff (each merged weight is rounded once to `dtype`),
    and at least 1e-3 (float32 summation order: W·x + B·(A·x) vs (W + B·A)·x).

    bfloat16 → 0.5, float16 → 0.0625, float32 → 1e-3.
    """
    import torch

    return max(128 * torch.finfo(getattr(torch, dtype)).eps / 2, 1e-3)


def verification_prompts(run, tokenizer, n: int) -> tuple[list[list[int]], str]:
    """Up to `n` prompts from the run's training data: each conversation minus its last assistant turn,
    rendered exactly as inference renders it. Falls back to a few fixed prompts when the data is gone.

    Returns:
        (list of prompt token-id lists, where they came from).
    """
    from ..data.formats import load_conversations
    from ..data.render import prompt_ids

    cfg = run.config
    thinking = cfg.data.thinking
    messages: list[list[dict]] = []
    source = "training data"
    try:
        convs, _ = load_conversations(cfg.data.train, cfg.data) if cfg.data.train else ([], {})
    except (ChattuneError, OSError) as e:
        log.warning("merge: cannot read the run's training data (%s); verifying on fixed prompts", e)
        convs = []
    for conv in convs:
        msgs = conv.messages
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last:  # None or 0: nothing to prompt with
            messages.append(msgs[:last])
        if len(messages) >= n:
            break
    if not messages:
        source = "fixed prompts (run data not found)"
        messages = [[{"role": "user", "content": p}] for p in FALLBACK_PROMPTS[:max(n, 1)]]
    # Long prompts would only make verification slow; their last 256 tokens show any merge error.
    return [prompt_ids(tokenizer, m, thinking=thinking, date=cfg.data.date)[-256:] for m in messages], source


@dataclass
class _Reference:
    """One batch of the reference (adapter) model: prompts, greedy continuations, and float32 CPU logits of
    the positions that chose them, with the adapter on (`tuned`) and off (`base`; None if it has none)."""

    prompts: list[list[int]]
    outputs: list[list[int]]
    tuned: torch.Tensor
    base: torch.Tensor | None


def _scored(gen, prompts: list[list[int]], outputs: list[list[int]], keep: int):
    from .batching import tail_logits

    seqs = [p + o for p, o in zip(prompts, outputs)]
    return tail_logits(gen.model, seqs, gen.pad_token_id, keep).float().cpu()


def _reference_pass(gen, prompts: list[list[int]], batch_size: int) -> list[_Reference]:
    """The reference model's answers and logits, kept on the CPU so the model can be merged in place (or
    freed) before the candidate is loaded."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        outs = gen.generate_ids(chunk, max_new_tokens=MAX_NEW_TOKENS)
        keep = max(len(o) for o in outs) + 1
        tuned = _scored(gen, chunk, outs, keep)
        base = None
        if hasattr(gen.model, "disable_adapter"):  # a peft model: the same weights without the adapter
            with gen.model.disable_adapter():
                base = _scored(gen, chunk, outs, keep)
        out.append(_Reference(chunk, outs, tuned, base))
    return out


def _compare(reference: list[_Reference], candidate, tokenizer, *, tolerance: float) -> dict:
    """`candidate` (a Generator) against a `_reference_pass`: its greedy outputs, and its logits on the
    reference's continuations (see `compare_models`)."""
    rows, worst, effect = [], 0.0, 0.0
    for ref in reference:
        outs_c = candidate.generate_ids(ref.prompts, max_new_tokens=MAX_NEW_TOKENS)
        keep = ref.tuned.shape[1]
        lc_all = _scored(candidate, ref.prompts, ref.outputs, keep)
        for i, (ids, out_r, out_c) in enumerate(zip(ref.prompts, ref.outputs, outs_c)):
            first = keep - len(out_r) - 1  # row i's prompt-end position inside the kept tail
            lr, lc = ref.tuned[i, first:], lc_all[i, first:]  # lr[k] chose generated token k
            diff = float((lr - lc).abs().max())
            worst = max(worst, diff)
            if ref.base is not None:
                effect = max(effect, float((lr - ref.base[i, first:]).abs().max()))
            tie = False
            if out_r != out_c:
                k = next((j for j, (a, b) in enumerate(zip(out_r, out_c)) if a != b), min(len(out_r), len(out_c)))
                if k < len(out_r) and k < len(out_c):
                    margin = float(lr[k, out_r[k]] - lr[k, out_c[k]])
                    local = float((lr[k] - lc[k]).abs().max())
                    tie = margin <= 2 * local and local <= tolerance
            rows.append({"prompt": tokenizer.decode(ids[-60:]), "reference": tokenizer.decode(out_r),
                         "candidate": tokenizer.decode(out_c), "identical": out_r == out_c, "tie": tie,
                         "max_abs_logit_diff": diff})
    same = sum(r["identical"] for r in rows)
    ties = sum(r["tie"] for r in rows)
    return {"rows": rows, "identical": same, "ties": ties, "mismatches": len(rows) - same - ties,
            "max_abs_logit_diff": worst, "adapter_effect": effect if any(r.base is not None for r in reference)
            else None, "tolerance": tolerance}


def verdict_problems(verdict: dict, dtype: str) -> list[str]:
    """Why a verification verdict (from `compare_models`) fails; empty when the merge is proven.

    Args:
        verdict: the comparison of the merged model (candidate) with the adapter model (reference).
        dtype: the dtype the merged weights were saved in (names the fix).
    """
    n = len(verdict["rows"])
    problems = []
    if verdict["mismatches"]:
        bad = next(r for r in verdict["rows"] if not r["identical"] and not r["tie"])
        problems.append(f"{verdict['mismatches']} of {n} prompts give different greedy output after merging "
                        f"(e.g. adapter {bad['reference']!r} vs merged {bad['candidate']!r})")
    if verdict["ties"] > MAX_TIE_SHARE * n:
        problems.append(f"{verdict['ties']} of {n} prompts match only as near-ties (at most "
                        f"{MAX_TIE_SHARE:.0%} may)")
    if verdict["max_abs_logit_diff"] > verdict["tolerance"]:
        problems.append(f"max |logit diff| {verdict['max_abs_logit_diff']:.3g} exceeds what rounding to {dtype} "
                        f"explains ({verdict['tolerance']:.3g})")
    effect = verdict.get("adapter_effect")
    if effect and verdict["max_abs_logit_diff"] >= effect / 2:
        problems.append(f"the merged model is {verdict['max_abs_logit_diff']:.3g} away from the adapter model "
                        f"while the base model is {effect:.3g} away: the merge lost the adapter"
                        + (f" (its effect is within {dtype} rounding)" if dtype != "float32" else ""))
    return problems


def compare_models(reference, candidate, tokenizer, prompts: list[list[int]], *, tolerance: float = 1e-3,
                   batch_size: int = 8) -> dict:
    """Greedy outputs and logits of `candidate` versus `reference` on `prompts` (models or `Generator`s).

    Both models get identical left-padded batches. The logit difference is measured over each prompt's
    last position and the reference's continuation (the positions that choose tokens). A divergence
    counts as a tie, not a mismatch, only where the two models' logits at that step differ by at most
    `tolerance` (rounding-sized) and the reference's margin between the two chosen tokens is within
    twice that difference. When `reference` is a peft model, ``adapter_effect`` is the largest logit
    difference its adapter makes over the same positions.

    Returns:
        {"rows": [{"prompt", "reference", "candidate", "identical", "tie", "max_abs_logit_diff"}],
         "identical": n, "ties": n, "mismatches": n, "max_abs_logit_diff": float,
         "adapter_effect": float or None, "tolerance": float}
    """
    from .generate import Generator

    ref = reference if isinstance(reference, Generator) else Generator(reference, tokenizer)
    cand = candidate if isinstance(candidate, Generator) else Generator(candidate, tokenizer)
    return _compare(_reference_pass(ref, prompts, batch_size), cand, tokenizer, tolerance=tolerance)


def _save_merged(run, out: Path, *, model, tokenizer, dtype: str):
    """Merge the loaded adapter `model` in place (merge_and_unload), round it to `dtype` and save model +
    tokenizer + template.

    Returns:
        the run's tokenizer (reused by verification).
    """
    import torch

    from ..rundir.layout import GENERATION_FILE, TEMPLATE_FILE

    merged = model.merge_and_unload()
    merged.to(getattr(torch, dtype))  # one rounding, of the merged weights (the merge itself ran in float32)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for name in (GENERATION_FILE, TEMPLATE_FILE):  # exactly as training wrote them (EOS list, template)
        if (run.path / name).is_file():
            shutil.copyfile(run.path / name, out / name)
    del merged
    return tokenizer


def merge(run_dir: str | Path, out_dir: str | Path, *, dtype: str | None = None, n_verify: int = 20,
          device: str | None = None) -> dict:
    """Merge an adapter run into a standalone model folder and verify it (see the module docstring).

    Args:
        run_dir: a chattune run dir holding an adapter (lora/dora/qlora).
        out_dir: where the merged model goes; replaced whole only after verification passes.
        dtype: "float32", "bfloat16" or "float16" for the saved weights (None = the run's model.dtype,
            i.e. bf16 on capable GPUs, fp32 on CPU). Merging and verification run in float32 either way.
        n_verify: prompts from the run's training data to compare (0 skips verification).
        device: None = CUDA if available, else CPU.

    Returns:
        The report written to ``out_dir/chattune_merge.json``: base, method, dtype, verification rows and
        counts, max_abs_logit_diff, adapter_effect, tolerance, seconds, ``warnings`` (e.g. fewer
        verification prompts than asked, an adapter that changes nothing) and for QLoRA a note on the
        dequantised base.

    Raises:
        ModelError: not an adapter run, or out_dir is an unrelated non-empty folder.
        ChattuneError: verification failed (`verdict_problems`); nothing is written.
    """
    from ..plan import inference_plan
    from ..rundir.load import load_run
    from ..rundir.read import read_run
    from ..rundir.write import write_json
    from .generate import Generator

    t0 = time.time()
    run = read_run(run_dir)
    out = Path(out_dir)
    if not run.is_adapter:
        raise ModelError(f"{run_dir} holds full weights (method {run.config.method.type}); there is nothing to "
                         f"merge: use the run dir itself as the model folder")
    if out.resolve() == run.path.resolve():
        raise ModelError("--out must differ from the run dir")
    if out.exists() and any(out.iterdir()) and not (out / MERGE_REPORT).is_file():
        raise ModelError(f"{out} exists and is not a previous merge (no {MERGE_REPORT}); choose another --out")
    # The saved dtype (the plan's for the run's model, unless --dtype); merging and verification run in
    # VERIFY_DTYPE whatever it is.
    plan = inference_plan(run.config.model, device=device, dtype=dtype)
    device, dtype = plan.device, plan.dtype
    method = run.config.method.type
    report: dict = {"run_dir": str(run.path), "out_dir": str(out), "base": run.base_model, "method": method,
                    "adapter": {"r": run.config.method.lora.r, "alpha": run.config.method.lora.alpha,
                                "use_dora": run.config.method.lora.use_dora}, "dtype": dtype,
                    # rundir.load and eval read these back for the folder: it renders as the run trained
                    "thinking": run.config.data.thinking, "system": run.system_prompts.default,
                    "date": run.config.data.date,
                    "warnings": []}
    if method == "qlora":
        # peft#2321: merging into 4-bit layers re-quantises the sum and changes generations; merging into the
        # original checkpoint drops the quantisation the adapter was trained to correct. The base is quantised
        # as in training and dequantised to `dtype`, and the merge is verified against the 4-bit QLoRA model.
        report["note"] = (f"QLoRA adapter merged into the NF4 base dequantised to {dtype} (the weights training "
                          "computed with); verified against the QLoRA model (4-bit base + adapter)")
    full = f"saving the merged model to {out}: nothing was kept (the temporary folder is removed); free space " \
           "for about the base model's size and run merge again"
    with disk_full_is_an_error(full, ModelError), atomic_path(out) as tmp:
        # One model in memory at a time: the adapter model answers the verification prompts first, is then
        # merged in place and saved; the saved folder is reloaded and compared with those answers.
        loaded = load_run(run.path, device=device, dtype=VERIFY_DTYPE)
        tok = loaded.tokenizer
        report["warnings"] += list(loaded.info.warnings)
        if n_verify > 0:
            prompts, source = verification_prompts(run, tok, n_verify)
            reference = _reference_pass(Generator(loaded.model, tok, info=loaded.info), prompts, batch_size=8)
        if loaded.info.quantised == "nf4":  # kept 4-bit for inference (CUDA): never merge into 4-bit layers
            del loaded
            loaded = load_run(run.path, device=device, dtype=VERIFY_DTYPE, tokenizer=tok, dequantise=True)
        tok = _save_merged(run, tmp, model=loaded.model, tokenizer=tok, dtype=dtype)
        del loaded
        if n_verify > 0:
            # the saved tokenizer files are a copy of the run's; reloading them would only cost time
            merged = load_run(tmp, device=device, dtype=VERIFY_DTYPE, tokenizer=tok)
            verdict = _compare(reference, Generator(merged.model, tok, info=merged.info), tok,
                               tolerance=merge_tolerance(dtype))
            report["verify"] = {"source": source, "prompts": len(prompts), "asked": n_verify,
                                "max_new_tokens": MAX_NEW_TOKENS, "compute_dtype": VERIFY_DTYPE, **verdict}
            del merged, reference
            if len(prompts) < n_verify:
                report["warnings"].append(f"verified on {len(prompts)} prompts ({source}), not the "
                                          f"{n_verify} asked for")
            if verdict["adapter_effect"] == 0.0:
                report["warnings"].append("the adapter changes nothing versus the base model on the "
                                          "verification prompts: the merged model is the base model")
            problems = verdict_problems(verdict, dtype)
            if problems:
                raise ChattuneError(f"merge verification failed: {'; '.join(problems)}. Nothing was written to "
                                    f"{out}." + (" Try --dtype float32." if dtype != "float32" else ""))
        else:
            report["verify"] = None
        report["warnings"] = list(dict.fromkeys(report["warnings"]))
        report["seconds"] = round(time.time() - t0, 1)
        write_json(tmp / MERGE_REPORT, report)
    report["out_dir"] = str(out)
    return report

"""Merge a LoRA/DoRA/QLoRA run into a plain model folder, and prove the merge changed nothing.

The merged folder is an ordinary Hugging Face model (safetensors + tokenizer + chat template +
generation_config with the end-of-turn EOS list) plus ``chattune_merge.json``. Verification reloads the
saved folder and compares it with the adapter model on prompts from the run's own training data: greedy
outputs must match token for token, and the report gives the largest logit difference. The adapter
model's answers are taken before it is merged in place, so only one model is in memory at a time.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from ..errors import ChattuneError, ModelError
from ..fsutil import atomic_path, disk_full_is_an_error
from ..rundir.layout import MERGE_REPORT

log = logging.getLogger(__name__)

FALLBACK_PROMPTS = ("Hello! Who are you?", "Give me three tips for learning a new language.",
                    "What is 12 + 30?", "用一句话介绍一下你自己。")
MAX_NEW_TOKENS = 32


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
    return [prompt_ids(tokenizer, m, thinking=thinking)[-256:] for m in messages], source


def _greedy(model, prompts: list[list[int]], eos: list[int], pad: int) -> list[list[int]]:
    """Greedy continuations of a left-padded batch, each cut after its first end-of-turn token."""
    import torch

    from .batching import left_pad

    ids, mask = left_pad(prompts, pad, model.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                             eos_token_id=eos, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        rows.append(row if stop is None else row[:stop + 1])
    return rows


def _tail_logits(model, seqs: list[list[int]], pad: int, keep: int):
    """fp32 logits of the last `keep` positions of each (left-padded) sequence. Only the tail is kept:
    full logits of a batch are batch x length x vocab x 4 bytes (GBs for a 151k vocabulary)."""
    import torch

    from .batching import left_pad

    ids, mask = left_pad(seqs, pad, model.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        try:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
        except TypeError:  # an architecture without logits_to_keep
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -keep:]
    return logits.float().cpu()


def _reference_pass(model, tokenizer, prompts: list[list[int]], batch_size: int) -> list[tuple]:
    """Per batch: (prompts, greedy continuations, tail logits) of the reference model. Kept on the CPU so
    the reference model can be freed (or merged in place) before the candidate is loaded."""
    from ..data.render import end_of_turn_ids

    eos = end_of_turn_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        outs_r = _greedy(model, chunk, eos, pad)
        keep = max(len(o) for o in outs_r) + 1
        out.append((chunk, outs_r, _tail_logits(model, [p + o for p, o in zip(chunk, outs_r)], pad, keep)))
    return out


def _compare(reference: list[tuple], candidate, tokenizer, *, tie_tolerance: float) -> dict:
    """`candidate` against a `_reference_pass`: its greedy outputs, and its logits on the reference's
    continuations (see `compare_models`)."""
    from ..data.render import end_of_turn_ids

    eos = end_of_turn_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    rows, worst = [], 0.0
    for chunk, outs_r, lr_all in reference:
        outs_c = _greedy(candidate, chunk, eos, pad)
        keep = lr_all.shape[1]
        lc_all = _tail_logits(candidate, [p + o for p, o in zip(chunk, outs_r)], pad, keep)
        for i, (ids, out_r, out_c) in enumerate(zip(chunk, outs_r, outs_c)):
            first = keep - len(out_r) - 1  # row i's prompt-end position inside the kept tail
            lr, lc = lr_all[i, first:], lc_all[i, first:]  # lr[k] chose generated token k
            diff = float((lr - lc).abs().max())
            worst = max(worst, diff)
            tie = False
            if out_r != out_c:
                k = next((j for j, (a, b) in enumerate(zip(out_r, out_c)) if a != b), min(len(out_r), len(out_c)))
                if k < len(out_r) and k < len(out_c):
                    margin = float(lr[k, out_r[k]] - lr[k, out_c[k]])
                    local = float((lr[k] - lc[k]).abs().max())
                    tie = margin <= 2 * local and local <= tie_tolerance
            rows.append({"prompt": tokenizer.decode(ids[-60:]), "reference": tokenizer.decode(out_r),
                         "candidate": tokenizer.decode(out_c), "identical": out_r == out_c, "tie": tie,
                         "max_abs_logit_diff": diff})
    same = sum(r["identical"] for r in rows)
    ties = sum(r["tie"] for r in rows)
    return {"rows": rows, "identical": same, "ties": ties, "mismatches": len(rows) - same - ties,
            "max_abs_logit_diff": worst}


def compare_models(reference, candidate, tokenizer, prompts: list[list[int]], *, tie_tolerance: float = 1e-2,
                   batch_size: int = 8) -> dict:
    """Greedy outputs and logits of `candidate` versus `reference` on `prompts`.

    Both models get identical left-padded batches. The logit difference is measured over each prompt's
    last position and the reference's continuation (the positions that choose tokens). A divergence
    counts as a tie, not a mismatch, only where the two models' logits at that step differ by at most
    `tie_tolerance` (rounding-sized) and the reference's margin between the two chosen tokens is within
    twice that difference: half-precision rounding can flip a genuine tie, a bad merge cannot hide
    behind that rule.

    Returns:
        {"rows": [{"prompt", "reference", "candidate", "identical", "tie", "max_abs_logit_diff"}],
         "identical": n, "ties": n, "mismatches": n, "max_abs_logit_diff": float}
    """
    return _compare(_reference_pass(reference, tokenizer, prompts, batch_size), candidate, tokenizer,
                    tie_tolerance=tie_tolerance)


def _save_merged(run, out: Path, *, model, tokenizer):
    """Merge the loaded adapter `model` in place (merge_and_unload) and save model + tokenizer + template.

    Returns:
        the run's tokenizer (reused by verification).
    """
    from ..rundir.layout import GENERATION_FILE, TEMPLATE_FILE

    merged = model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for name in (GENERATION_FILE, TEMPLATE_FILE):  # exactly as training wrote them (EOS list, template)
        if (run.path / name).is_file():
            shutil.copyfile(run.path / name, out / name)
    del merged
    return tokenizer


def merge(run_dir: str | Path, out_dir: str | Path, *, dtype: str | None = None, n_verify: int = 20,
          device: str | None = None) -> dict:
    """Merge an adapter run into a standalone model folder and verify it.

    Args:
        run_dir: a chattune run dir holding an adapter (lora/dora/qlora).
        out_dir: where the merged model goes; replaced whole only after verification passes.
        dtype: "float32", "bfloat16" or "float16" for the saved weights (None = the run's model.dtype,
            i.e. bf16 on capable GPUs, fp32 on CPU).
        n_verify: prompts from the run's training data to compare (0 skips verification).
        device: None = CUDA if available, else CPU.

    Returns:
        The report written to ``out_dir/chattune_merge.json``: base, method, dtype, verification rows and
        counts, max_abs_logit_diff, seconds, and for QLoRA a note on the dequantised base.

    Raises:
        ModelError: not an adapter run, or out_dir is an unrelated non-empty folder.
        ChattuneError: verification found a greedy mismatch (nothing is written).
    """
    from ..plan import inference_plan
    from ..rundir.load import load_run_model
    from ..rundir.read import read_run
    from ..rundir.write import write_json

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
    # One concrete dtype for the merge and both verification loads (auto would reload a bf16 folder as fp32).
    plan = inference_plan(run.config.model, device=device, dtype=dtype)
    device, dtype = plan.device, plan.dtype
    method = run.config.method.type
    report: dict = {"run_dir": str(run.path), "out_dir": str(out), "base": run.base_model, "method": method,
                    "adapter": {"r": run.config.method.lora.r, "alpha": run.config.method.lora.alpha,
                                "use_dora": run.config.method.lora.use_dora}, "dtype": dtype,
                    "thinking": run.config.data.thinking}  # load_run_model reads it back for the folder
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
        adapter, tok, loaded = load_run_model(run.path, device=device, dtype=dtype)
        if n_verify > 0:
            prompts, source = verification_prompts(run, tok, n_verify)
            reference = _reference_pass(adapter, tok, prompts, batch_size=8)
        if loaded["quantised"] == "nf4":  # kept 4-bit for inference (CUDA): never merge into 4-bit layers
            del adapter
            adapter, _, _ = load_run_model(run.path, device=device, dtype=dtype, tokenizer=tok, dequantise=True)
        tok = _save_merged(run, tmp, model=adapter, tokenizer=tok)
        del adapter
        if n_verify > 0:
            # the saved tokenizer files are a copy of the run's; reloading them would only cost time
            merged, _, _ = load_run_model(tmp, device=device, dtype=dtype, tokenizer=tok)
            # bf16/fp16 merges round each weight once; logits then move by up to a few tenths
            verdict = _compare(reference, merged, tok, tie_tolerance=1e-2 if dtype == "float32" else 0.5)
            report["verify"] = {"source": source, "prompts": len(prompts), "max_new_tokens": MAX_NEW_TOKENS,
                                **verdict}
            del merged, reference
            if verdict["mismatches"]:
                bad = next(r for r in verdict["rows"] if not r["identical"] and not r["tie"])
                raise ChattuneError(
                    f"merge verification failed: {verdict['mismatches']} of {len(prompts)} prompts give different "
                    f"greedy output after merging (max |logit diff| {verdict['max_abs_logit_diff']:.3g}); e.g. "
                    f"adapter {bad['reference']!r} vs merged {bad['candidate']!r}. Nothing was written to {out}. "
                    "Try --dtype float32.")
        else:
            report["verify"] = None
        report["seconds"] = round(time.time() - t0, 1)
        write_json(tmp / MERGE_REPORT, report)
    report["out_dir"] = str(out)
    return report

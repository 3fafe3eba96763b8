"""Make a loaded model trainable the way the config asks (LoRA/DoRA/QLoRA/full/freeze).

Loading a trained run back is `chattune.rundir.load`.
"""
from __future__ import annotations

import contextlib
import warnings

from ..config import Config
from ..errors import ModelError
from ..plan import RunPlan
from ..plan.shapes import decoder_layers, final_norm


@contextlib.contextmanager
def quiet_peft():
    """peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` property when it wraps a
    model: a FutureWarning the user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unpacked size (peft's convention)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = total = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:  # tied embeddings count once
            continue
        seen.add(id(p))
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def apply_method(model, cfg: Config, plan: RunPlan, *, added_rows: int = 0):
    """Set up `model` for training with ``cfg.method``, with recompute as the plan decided.

    Args:
        model: from `load_model` (4-bit for qlora).
        cfg: the whole config (method).
        plan: the run plan (its ``gradient_checkpointing`` is switched on here, once, for every method).
        added_rows: embedding rows `load_base` added for a new pad token (its ``resized_embeddings``);
            lora/qlora train exactly those rows.

    Returns:
        (model, report): the model to train (a PeftModel for lora/qlora) and
        {"trainable_params", "total_params", "trainable_pct", "method", "target_modules",
        "gradient_checkpointing", "trainable_tokens"}.
    """
    method = cfg.method.type
    target_modules: list[str] = []
    trainable_tokens: list[int] = []
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        lc = cfg.method.lora
        if added_rows:
            # A pad token was really added: its rows are new. Train just those rows (peft's trainable
            # tokens) instead of `modules_to_save` on the whole embedding + lm_head, which would save
            # ~300M parameters with every adapter for a 151k vocabulary; the rows travel with the adapter
            # (save it with save_embedding_layers=False, else peft's "auto" saves the whole resized matrix).
            n = model.get_input_embeddings().weight.shape[0]
            trainable_tokens = list(range(n - added_rows, n))
        peft_cfg = LoraConfig(
            r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
            use_dora=lc.use_dora, use_rslora=lc.use_rslora, task_type="CAUSAL_LM",
            # peft ties the lm_head rows to these automatically when the model ties its embeddings
            trainable_token_indices=trainable_tokens or None)
        with quiet_peft():
            model = get_peft_model(model, peft_cfg)
        target_modules = sorted({str(t).rsplit(".", 1)[-1] for t in model.peft_config["default"].target_modules})
    elif method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "freeze":
        for p in model.parameters():
            p.requires_grad_(False)
        layers = decoder_layers(model)
        k = min(cfg.method.freeze_trainable_layers, len(layers))
        trainable_mods = list(layers[len(layers) - k:])
        norm = final_norm(model)
        if norm is not None:
            trainable_mods.append(norm)
        for mod in trainable_mods:
            for p in mod.parameters():
                p.requires_grad_(True)
        target_modules = [f"layers[{len(layers) - k}:{len(layers)}]"] + (["norm"] if norm is not None else [])
    else:
        raise ModelError(f"method.type {method!r} is not supported; expected lora, qlora, full or freeze")

    gc = plan.gradient_checkpointing
    if gc:
        # non-reentrant checkpointing works with frozen inputs; enable_input_require_grads keeps the
        # reentrant variant (still used by some remote-code models) from silently producing no grads.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        model.config.use_cache = False
    trainable, total = count_params(model)
    report = {"trainable_params": int(trainable), "total_params": int(total),
              "trainable_pct": round(100.0 * trainable / max(total, 1), 4), "method": method,
              "target_modules": target_modules, "gradient_checkpointing": gc,
              "trainable_tokens": trainable_tokens}
    return model, report

"""Make a loaded model trainable the way the config asks (LoRA/DoRA/QLoRA/full/freeze), and load a
trained run back for inference.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

from ..config import Config, ModelConfig
from ..errors import ModelError
from .load import (  # noqa: F401
    SMOLLM2_ALIAS,
    default_device,
    load_model,
    load_tokenizer,
    resolve_source,
)


@contextlib.contextmanager
def _quiet_peft():
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


def decoder_layers(model):
    """The model's list of transformer blocks (``model.model.layers`` for Llama/Qwen/Gemma-like models)."""
    import torch

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for owner in (decoder, getattr(model, "model", None), getattr(model, "transformer", None)):
        for name in ("layers", "h", "blocks"):
            layers = getattr(owner, name, None) if owner is not None else None
            if isinstance(layers, torch.nn.ModuleList) and len(layers):
                return layers
    # Unknown layout: the longest ModuleList is the block stack in every causal LM we know of.
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ModelError(f"{type(model).__name__}: cannot find the decoder layers for method 'freeze'")
    return max(lists, key=len)


def _final_norm(model):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        mod = getattr(decoder, name, None) if decoder is not None else None
        if mod is not None:
            return mod
    return None


def _use_gradient_checkpointing(model, cfg: Config, override: bool | None = None) -> bool:
    flag = cfg.train.gradient_checkpointing if override is None else override
    if flag is None:  # ~30% slower on CPU and saves nothing that matters at the sizes that fit there
        return next(model.parameters()).device.type == "cuda"
    return bool(flag)


def apply_method(model, cfg: Config, *, gradient_checkpointing: bool | None = None):
    """Set up `model` for training with ``cfg.method``.

    Args:
        model: from `load_model` (4-bit for qlora).
        cfg: the whole config (method, and train.gradient_checkpointing).
        gradient_checkpointing: the trainer's own decision, when it makes one; None = the config's
            (train.gradient_checkpointing; None there = on for CUDA, off on CPU).

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
        added = (getattr(model, "chattune_load", None) or {}).get("resized_embeddings", 0)
        if added:
            # A pad token was really added: its rows are new. Train just those rows (peft's trainable
            # tokens) instead of `modules_to_save` on the whole embedding + lm_head, which would save
            # ~300M parameters with every adapter for a 151k vocabulary; the rows travel with the adapter
            # (save it with save_embedding_layers=False, else peft's "auto" saves the whole resized matrix).
            n = model.get_input_embeddings().weight.shape[0]
            trainable_tokens = list(range(n - added, n))
        peft_cfg = LoraConfig(
            r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
            use_dora=lc.use_dora, use_rslora=lc.use_rslora, task_type="CAUSAL_LM",
            # peft ties the lm_head rows to these automatically when the model ties its embeddings
            trainable_token_indices=trainable_tokens or None)
        with _quiet_peft():
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
        norm = _final_norm(model)
        if norm is not None:
            trainable_mods.append(norm)
        for mod in trainable_mods:
            for p in mod.parameters():
                p.requires_grad_(True)
        target_modules = [f"layers[{len(layers) - k}:{len(layers)}]"] + (["norm"] if norm is not None else [])
    else:
        raise ModelError(f"method.type {method!r} is not supported; expected lora, qlora, full or freeze")

    gc = _use_gradient_checkpointing(model, cfg, gradient_checkpointing)
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


# ----------------------------------------------------------------------------------------- run dirs

def _run_tokenizer(run_dir: Path, model_cfg: ModelConfig):
    """The tokenizer saved in the run dir, with the run dir's chat template: what training rendered with."""
    from transformers import AutoTokenizer

    from ..data.render import apply_template_override
    from ..rundir import TEMPLATE_FILE
    from .load import ensure_pad_token

    if not (run_dir / "tokenizer_config.json").is_file():
        return load_tokenizer(model_cfg)  # a run dir written before the tokenizer: fall back to the base's
    tok = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=model_cfg.trust_remote_code)
    tpl = run_dir / TEMPLATE_FILE
    apply_template_override(tok, str(tpl) if tpl.is_file() else None)
    tok.chattune_pad = ensure_pad_token(tok)  # no-op: training already made it safe and saved it
    return tok


def _apply_generation_config(model, folder: Path) -> None:
    from transformers import GenerationConfig

    if (folder / "generation_config.json").is_file():
        pad = model.config.pad_token_id  # chosen by load_model; the file may predate it
        model.generation_config = GenerationConfig.from_pretrained(folder)
        if pad is not None:
            model.generation_config.pad_token_id = pad


def load_run_model(path: str | Path, *, device: str | None = None, dtype: str | None = None, tokenizer=None):
    """Load anything chattune can generate with: a run dir, a model folder, the SmolLM2 alias, a GGUF, a Hub id.

    Args:
        path: a chattune run dir (adapter or full weights), a merged/plain HF folder, "smollm2-135m-instruct",
            a .gguf file or a Hub id.
        device: None = `default_device()`.
        dtype: overrides the run's model.dtype ("auto", "float32", "bfloat16", "float16" or a torch.dtype).
        tokenizer: reuse this tokenizer instead of loading it again (it must be the one `path` holds;
            merge loads the same run several times and a 151k-token tokenizer costs seconds).

    Returns:
        (model, tokenizer, info) with the model in eval mode; for a run dir the tokenizer and chat template
        are the run's own, so inference renders exactly as training did. info = {"kind": "adapter"|"full"|
        "model", "base", "path", "thinking", "method", "device", "dtype"}.
    """
    from ..rundir import is_run_dir, read_run

    device = device or default_device()
    if dtype is not None and not isinstance(dtype, str):  # a torch.dtype
        dtype = str(dtype).replace("torch.", "")
    path_s = str(path)
    if is_run_dir(path_s):
        run = read_run(path_s)
        cfg = run.config
        mcfg = cfg.model.model_copy(update={"dtype": dtype} if dtype else {})
        run_dir = Path(path_s)
        tok = tokenizer or _run_tokenizer(run_dir, mcfg)
        if run.is_adapter:
            from peft import PeftModel

            # QLoRA adapters apply to the un-quantised base too: inference loads full precision
            # (no bitsandbytes needed to use a QLoRA run, and no quantisation error at inference).
            base = load_model(mcfg, tokenizer=tok, method="lora", device=device)
            _apply_generation_config(base, run_dir)
            with _quiet_peft():
                model = PeftModel.from_pretrained(base, run_dir, is_trainable=False)
            kind, base_name = "adapter", cfg.model.name_or_path
        else:
            full_cfg = mcfg.model_copy(update={"name_or_path": str(run_dir), "gguf_file": None, "revision": None})
            model = load_model(full_cfg, tokenizer=tok, method="full", device=device, source=str(run_dir))
            _apply_generation_config(model, run_dir)
            kind, base_name = "full", cfg.model.name_or_path
        thinking, method = cfg.data.thinking, cfg.method.type
    else:
        mcfg = ModelConfig(name_or_path=path_s, **({"dtype": dtype} if dtype else {}))
        src = resolve_source(mcfg)
        tok = tokenizer or load_tokenizer(mcfg, source=src)
        model = load_model(mcfg, tokenizer=tok, method="full", device=device, source=src)
        kind, base_name, thinking, method = "model", path_s, "off", None
        from .merge import MERGE_REPORT

        merged_report = Path(src) / MERGE_REPORT
        if merged_report.is_file():  # a `chattune merge` output: render as the run was trained
            rep = json.loads(merged_report.read_text(encoding="utf-8"))
            base_name, thinking, method = rep.get("base", path_s), rep.get("thinking", "off"), rep.get("method")
    model.eval()
    info = {"kind": kind, "base": base_name, "path": path_s, "thinking": thinking or "off", "method": method,
            "device": str(device), "dtype": model.chattune_load["dtype"]}
    return model, tok, info

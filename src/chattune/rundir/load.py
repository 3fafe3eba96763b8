"""Load a trained model back for inference: a run dir, a merged folder, or any model chattune can generate with.

For a run dir the tokenizer and chat template are the run's own, so inference renders exactly as training did.
"""
from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from .layout import GENERATION_FILE, TEMPLATE_FILE, TOKENIZER_CONFIG_FILE, is_run_dir
from .read import read_merge_report, read_run


def _run_tokenizer(run_dir: Path, model_cfg: ModelConfig):
    """The tokenizer saved in the run dir, with the run dir's chat template: what training rendered with."""
    from transformers import AutoTokenizer

    from ..data.render import apply_template_override
    from ..model.load import ensure_pad_token, load_tokenizer

    if not (run_dir / TOKENIZER_CONFIG_FILE).is_file():
        return load_tokenizer(model_cfg)  # a run dir written before the tokenizer: fall back to the base's
    tok = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=model_cfg.trust_remote_code)
    tpl = run_dir / TEMPLATE_FILE
    apply_template_override(tok, str(tpl) if tpl.is_file() else None)
    tok.chattune_pad = ensure_pad_token(tok)  # no-op: training already made it safe and saved it
    return tok


def _apply_generation_config(model, folder: Path) -> None:
    from transformers import GenerationConfig

    if (folder / GENERATION_FILE).is_file():
        pad = model.config.pad_token_id  # chosen by load_model; the file may predate it
        model.generation_config = GenerationConfig.from_pretrained(folder)
        if pad is not None:
            model.generation_config.pad_token_id = pad


def load_run_model(path: str | Path, *, device: str | None = None, dtype: str | None = None, tokenizer=None,
                   dequantise: bool | None = None):
    """Load anything chattune can generate with: a run dir, a model folder, the SmolLM2 alias, a GGUF, a Hub id.

    Args:
        path: a chattune run dir (adapter or full weights), a merged/plain HF folder, "smollm2-135m-instruct",
            a .gguf file or a Hub id.
        device: None = CUDA when available (the inference plan decides dtype and attention).
        dtype: overrides the run's model.dtype ("auto", "float32", "bfloat16", "float16" or a torch.dtype).
        tokenizer: reuse this tokenizer instead of loading it again (it must be the one `path` holds;
            merge loads the same run several times and a 151k-token tokenizer costs seconds).
        dequantise: a QLoRA run's 4-bit base: True = dequantised to plain weights (what merging needs),
            False = kept 4-bit; None = dequantised on CPU (same logits, no dequantising per matmul),
            kept 4-bit on CUDA (the memory QLoRA was chosen for).

    Returns:
        (model, tokenizer, info) with the model in eval mode; for a run dir the tokenizer and chat template
        are the run's own, so inference renders exactly as training did. info = {"kind": "adapter"|"full"|
        "model", "base", "path", "thinking", "method", "device", "dtype", "quantised": "nf4" |
        "nf4-dequantised" | None}.
    """
    from ..model.adapters import quiet_peft
    from ..model.load import load_model, load_tokenizer, resolve_source
    from ..plan import inference_plan

    if dtype is not None and not isinstance(dtype, str):  # a torch.dtype
        dtype = str(dtype).replace("torch.", "")
    path_s = str(path)
    if is_run_dir(path_s):
        run = read_run(path_s)
        cfg = run.config
        mcfg = cfg.model.model_copy(update={"dtype": dtype} if dtype else {})
        # an adapter's base: for QLoRA the 4-bit base it was trained on, never the original weights
        plan = inference_plan(mcfg, device=device, method=cfg.method.type if run.is_adapter else None,
                              dequantise=dequantise)
        run_dir = Path(path_s)
        tok = tokenizer or _run_tokenizer(run_dir, mcfg)
        if run.is_adapter:
            from peft import PeftModel

            base = load_model(mcfg, plan=plan, tokenizer=tok, prepare_for_training=False)
            _apply_generation_config(base, run_dir)
            with quiet_peft():
                model = PeftModel.from_pretrained(base, run_dir, is_trainable=False)
            kind, base_name = "adapter", cfg.model.name_or_path
        else:
            full_cfg = mcfg.model_copy(update={"name_or_path": str(run_dir), "gguf_file": None, "revision": None})
            model = load_model(full_cfg, plan=plan, tokenizer=tok, source=str(run_dir))
            _apply_generation_config(model, run_dir)
            kind, base_name = "full", cfg.model.name_or_path
        thinking, method = cfg.data.thinking, cfg.method.type
    else:
        mcfg = ModelConfig(name_or_path=path_s, **({"dtype": dtype} if dtype else {}))
        plan = inference_plan(mcfg, device=device)
        src = resolve_source(mcfg)
        tok = tokenizer or load_tokenizer(mcfg, source=src)
        model = load_model(mcfg, plan=plan, tokenizer=tok, source=src)
        kind, base_name, thinking, method = "model", path_s, "off", None
        rep = read_merge_report(src)
        if rep is not None:  # a `chattune merge` output: render as the run was trained
            base_name, thinking, method = rep.get("base", path_s), rep.get("thinking", "off"), rep.get("method")
    model.eval()
    info = {"kind": kind, "base": base_name, "path": path_s, "thinking": thinking or "off", "method": method,
            "device": plan.device, "dtype": plan.dtype, "quantised": model.chattune_load.get("quantised")}
    return model, tok, info

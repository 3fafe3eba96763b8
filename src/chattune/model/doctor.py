"""`chattune doctor`: what this machine has, and whether a config's training run will fit in memory.

The estimate needs only the model's config.json: the model is built on the ``meta`` device (shapes, no
weights), so parameter and LoRA counts are exact for any architecture transformers knows.
"""
from __future__ import annotations

import importlib.util
import os
import platform
from importlib import metadata

from ..config import Config
from ..errors import ModelError

GiB = 1024 ** 3
_PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "trl", "tokenizers", "safetensors")
_OPTIONAL = {"flash_attn": "flash-attn", "bitsandbytes": "bitsandbytes", "liger_kernel": "liger-kernel",
             "deepspeed": "deepspeed"}
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# NF4 with double quantisation: 4 bits + one 8-bit absmax per 64 weights + a second-level fp32 absmax
# per 256 blocks (QLoRA paper, section 3): 4 + 8/64 + 32/(64*256) = 4.127 bits per weight.
NF4_BITS = 4.127


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Python/package versions, optional accelerators, CPU/RAM and CUDA devices (free VRAM, bf16)."""
    import psutil
    import torch

    vm = psutil.virtual_memory()
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: _version(p) for p in _PACKAGES},
        "optional": {mod: importlib.util.find_spec(mod) is not None for mod in _OPTIONAL},
        "cpu_count": os.cpu_count(),
        "ram_total_gb": round(vm.total / GiB, 2),
        "ram_free_gb": round(vm.available / GiB, 2),
        "cuda": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpus": [],
    }
    if info["cuda"]:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            info["gpus"].append({"index": i, "name": torch.cuda.get_device_name(i),
                                 "total_gb": round(total / GiB, 2), "free_gb": round(free / GiB, 2),
                                 "bf16": bool(torch.cuda.is_bf16_supported())})
    return info


def _model_config(cfg: Config):
    """The transformers config for cfg.model without loading (or converting) any weights."""
    from pathlib import Path

    from transformers import AutoConfig

    from .load import _gguf_file, gguf_cache_dir

    m = cfg.model
    try:
        gguf = _gguf_file(m)
        if gguf is not None:
            cached = gguf_cache_dir(gguf)
            if (cached / "config.json").is_file():
                return AutoConfig.from_pretrained(cached)
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)  # header only
        src = str(Path(m.name_or_path).expanduser()) if Path(m.name_or_path).expanduser().exists() else m.name_or_path
        return AutoConfig.from_pretrained(src, revision=m.revision, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the config of model {m.name_or_path!r}: {e}") from None


def _meta_model(mconfig, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(mconfig, trust_remote_code=trust_remote_code)


def _lora_targets(model, target_modules) -> list[tuple[str, int, int]]:
    """(name, in, out) of the Linear layers LoRA would wrap: all-linear = every Linear but the output head."""
    import torch

    head = model.get_output_embeddings()
    found = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod is head:
            continue
        short = name.rsplit(".", 1)[-1]
        if target_modules == "all-linear" or (isinstance(target_modules, (list, tuple)) and short in target_modules) \
                or (isinstance(target_modules, str) and target_modules != "all-linear" and short == target_modules):
            found.append((name, mod.in_features, mod.out_features))
    return found


def estimate_memory(cfg: Config, *, free_bytes: int | None = None, device: str | None = None) -> dict:
    """Estimate peak training memory for `cfg` from the model's config alone.

    Formulas (bytes; b = bytes per element of the model dtype, T = train.batch_size × data.max_length):
      * weights: params × b; qlora: decoder Linear weights at 4.127 bits (NF4 + double quant), the rest
        (embeddings, norms, lm_head) fp32 because prepare_model_for_kbit_training upcasts them.
      * lora_params: Σ r·(in+out) over target Linear layers (+ out per layer for DoRA), kept in fp32.
      * gradients: trainable × (4 for LoRA, b for full/freeze).
      * optimizer: AdamW m and v in fp32 = 8 × trainable; master: 4 × trainable when full/freeze trains
        half-precision weights (mixed precision keeps an fp32 copy) — an upper bound.
      * activations per token per layer ≈ b × (7·H + 8·q + 5·kv + 4·I) without gradient checkpointing,
        q = heads·head_dim, kv = kv_heads·head_dim (two RMSNorms keep input, normalised and scaled copies:
        6·H; the mid residual: H; q/k/v outputs, their rotary copies and rotate-half products, the GQA
        repeat of k/v, attention output and o_proj input: 8·q + 5·kv; MLP gate, up, act, product: 4·I;
        sdpa/flash attention store no S×S matrix), + (b + 1) × Σ in_features of the LoRA targets when
        lora.dropout > 0 (dropped input copy + mask); with checkpointing b × H per layer (layer inputs)
        plus one layer recomputed.
      * logits: 4 × T × vocab × 4 (fp32 logits, the log-softmax kept for backward, and both gradients
        at the start of backward).
    T assumes every sequence is max_length long (dynamic padding usually needs less).

    Args:
        cfg: the config (model, method, data.max_length, train.batch_size, train.gradient_checkpointing).
        free_bytes: memory to compare with (default: free VRAM on CUDA, available RAM on CPU).
        device: "cpu"/"cuda" (default: CUDA if available).

    Returns:
        dict of byte counts and GiB, "params", "trainable_params", "total_bytes", "free_bytes", "verdict".
    """
    from .load import default_device, resolve_dtype

    device = device or default_device()
    mconfig = _model_config(cfg)
    model = _meta_model(mconfig, cfg.model.trust_remote_code)
    method = cfg.method.type
    dtype_name = str(resolve_dtype(cfg.model.dtype, device)).replace("torch.", "")
    b = _BYTES[dtype_name]
    seen, params = set(), 0
    for p in model.parameters():
        if id(p) not in seen:  # tied embeddings once
            seen.add(id(p))
            params += p.numel()
    text = mconfig.get_text_config() if hasattr(mconfig, "get_text_config") else mconfig
    H, L, V = text.hidden_size, text.num_hidden_layers, text.vocab_size
    I = getattr(text, "intermediate_size", 4 * H)
    nh = text.num_attention_heads
    hd = getattr(text, "head_dim", None) or H // nh
    nkv = getattr(text, "num_key_value_heads", None) or nh

    lora_params, targets = 0, []
    if method in ("lora", "qlora"):
        lc = cfg.method.lora
        targets = _lora_targets(model, lc.target_modules)
        lora_params = sum(lc.r * (i + o) + (o if lc.use_dora else 0) for _, i, o in targets)
        trainable = lora_params
    elif method == "full":
        trainable = params
    else:  # freeze: the last N decoder layers + final norm
        from .adapters import _final_norm, decoder_layers

        layers = decoder_layers(model)
        k = min(cfg.method.freeze_trainable_layers, len(layers))
        trainable = sum(p.numel() for lay in list(layers)[len(layers) - k:] for p in lay.parameters())
        norm = _final_norm(model)
        trainable += sum(p.numel() for p in norm.parameters()) if norm is not None else 0

    if method == "qlora":
        quantised = sum(i * o for n, i, o in _lora_targets(model, "all-linear"))
        weights = int(quantised * NF4_BITS / 8) + (params - quantised) * 4
    else:
        weights = params * b
    lora_bytes = lora_params * 4
    grad_b = 4 if method in ("lora", "qlora") else b
    gradients = trainable * grad_b
    optimizer = trainable * 8
    master = trainable * 4 if method in ("full", "freeze") and b < 4 else 0

    T = cfg.train.batch_size * cfg.data.max_length
    gc = cfg.train.gradient_checkpointing
    gc = (device.startswith("cuda")) if gc is None else gc
    act_b = 2 if method == "qlora" else b  # qlora computes in bf16/fp16 (load.py's bnb compute dtype)
    q, kv = nh * hd, nkv * hd
    per_layer_full = act_b * (7 * H + 8 * q + 5 * kv + 4 * I)
    if method in ("lora", "qlora") and cfg.method.lora.dropout > 0:
        # LoRA dropout keeps a dropped copy of every wrapped layer's input (+ a 1-byte mask) for backward
        per_layer_full += (act_b + 1) * sum(i for _, i, _ in targets) // max(L, 1)
    activations = T * (L * act_b * H + per_layer_full) if gc else T * L * per_layer_full
    logits = 4 * T * V * 4
    overhead = int(0.5 * GiB) if device.startswith("cuda") else 0  # CUDA context + allocator slack
    total = weights + lora_bytes + gradients + optimizer + master + activations + logits + overhead

    if free_bytes is None:
        free_bytes = _free_bytes(device)
    verdict = "fits" if total <= 0.85 * free_bytes else ("tight" if total <= free_bytes else "does not fit")
    parts = {"weights": weights, "lora_params_bytes": lora_bytes, "gradients": gradients, "optimizer": optimizer,
             "master_weights": master, "activations": activations, "logits": logits, "overhead": overhead}
    return {"model": cfg.model.name_or_path, "method": method, "dtype": dtype_name, "device": device,
            "params": params, "trainable_params": trainable, "lora_params": lora_params,
            "lora_targets": len(targets), "batch_size": cfg.train.batch_size, "max_length": cfg.data.max_length,
            "tokens_per_step": T, "gradient_checkpointing": bool(gc), "vocab_size": V, **parts,
            "total_bytes": total, "free_bytes": int(free_bytes), "verdict": verdict,
            "gib": {k: round(v / GiB, 3) for k, v in {**parts, "total": total, "free": free_bytes}.items()},
            "advice": _advice(verdict, parts, method, bool(gc), device)}


def _free_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        idx = torch.device(device).index or 0
        return int(torch.cuda.mem_get_info(idx)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _advice(verdict: str, parts: dict, method: str, gc: bool, device: str) -> list[str]:
    tips = []
    if method == "qlora" and not device.startswith("cuda"):
        tips.append("qlora runs on CPU but slower than lora (every matmul dequantises the 4-bit weights); "
                    "it saves memory, not time")
    if verdict == "fits":
        return tips
    biggest = max(parts, key=parts.get)
    if biggest in ("activations", "logits"):
        tips.append("lower train.batch_size (raise train.grad_accum to keep the effective batch) or data.max_length")
        if not gc and biggest == "activations":
            tips.append("set train.gradient_checkpointing=true")
    if method in ("full", "freeze"):
        tips.append("use method.type=lora (trains <1% of the weights)")
    if method == "lora":
        tips.append("use method.type=qlora (4-bit base weights)")
    return tips


def doctor(cfg: Config | None = None) -> dict:
    """Machine report, plus a memory estimate when a config is given.

    Args:
        cfg: the training config to check, or None for the machine only.

    Returns:
        `machine_info()` with "estimate": `estimate_memory(cfg)` when cfg is given.
    """
    info = machine_info()
    if cfg is not None:
        info["estimate"] = estimate_memory(cfg)
    return info

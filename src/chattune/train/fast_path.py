"""GPU fast path: which attention kernel, Liger kernels, torch.compile and gradient checkpointing a run uses.

`resolve_fast_path` decides once, at the start of a run, from the config and what the machine has, and gives a
reason for every choice (printed by the trainer). Every switch stays in the user's hands: a value set in the
config wins; ``None``/"auto" means "the fastest choice that is correct here".

Correctness rules the choices keep (the tests check them):
- Packed (padding-free) batches never attend across examples. Flash-attention kernels read the example
  boundaries from ``position_ids`` (varlen); SDPA/eager get a block-diagonal mask that transformers builds from
  ``position_ids`` — but only when the batch has no ``attention_mask`` and the model runs without a KV cache,
  which is why `prepare_model` turns ``config.use_cache`` off for training.
- Flash-attention's varlen path needs the packed examples in ONE row (batch shape [1, total_tokens]);
  with several rows and no attention_mask it would treat each row as one sequence.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

GIB = 1024 ** 3
# Share of GPU memory a run may plan to use without recompute; the rest absorbs allocator fragmentation and
# estimate error (the estimate below is a model, not a measurement).
_MEMORY_HEADROOM = 0.8


@dataclass
class Capabilities:
    """What the machine offers. `probe_capabilities` fills it; tests build one by hand."""

    device: str = "cpu"                               # "cuda", "cpu", "mps", "xpu"
    cuda_capability: tuple[int, int] | None = None    # (9, 0) = Hopper, (8, 0) = Ampere
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = None
    flash_attn_2: bool = False                        # flash-attn >= 2.3.3 importable (with CUDA)
    flash_attn_3: bool = False                        # flash-attn-3 (flash_attn_interface) importable (with CUDA)
    hub_kernels: bool = False                         # `kernels` package + Hub reachable (downloads FA kernels)
    liger: bool = False                               # liger-kernel importable
    triton: bool = False
    notes: list[str] = field(default_factory=list)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def probe_capabilities(device: str | None = None) -> Capabilities:
    """Look at the device and the installed kernel packages (imports nothing heavy beyond torch).

    Args:
        device: "cpu", "cuda", "cuda:1", ...; None = CUDA when available, else CPU.
    """
    import torch

    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kind = dev.split(":")[0]
    caps = Capabilities(device=kind, liger=_has("liger_kernel"), triton=_has("triton"))
    if kind == "cuda" and torch.cuda.is_available():
        idx = torch.device(dev).index or 0
        props = torch.cuda.get_device_properties(idx)
        caps.cuda_capability = (props.major, props.minor)
        caps.gpu_name = props.name
        caps.gpu_memory_bytes = props.total_memory
        from transformers.utils import import_utils as iu

        caps.flash_attn_2 = bool(iu.is_flash_attn_2_available())
        caps.flash_attn_3 = bool(iu.is_flash_attn_3_available())
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        caps.hub_kernels = bool(iu.is_kernels_available()) and not offline
    return caps


# ------------------------------------------------------------------------------------------- model arithmetic


@dataclass
class ModelShape:
    """The numbers that set a decoder's cost (from a transformers config)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        get = (lambda k, d=None: c.get(k, d)) if isinstance(c, dict) else (lambda k, d=None: getattr(c, k, d))
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        return cls(hidden=hidden, layers=get("num_hidden_layers"), heads=heads,
                   kv_heads=get("num_key_value_heads") or heads, head_dim=get("head_dim") or hidden // heads,
                   intermediate=get("intermediate_size"), vocab=get("vocab_size"),
                   tied=bool(get("tie_word_embeddings", False)))

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of the linear layers in one decoder block: q, k, v, o, gate, up, down."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def matmul_params(self) -> int:
        """N of PERF.md: weights that take part in matmuls, including the output projection."""
        return self.layers * sum(a * b for a, b in self.linears()) + self.vocab * self.hidden

    def total_params(self) -> int:
        """Parameters held in memory (norms ignored): N plus the input embedding when it is not tied."""
        return self.matmul_params() + (0 if self.tied else self.vocab * self.hidden)

    def lora_params(self, r: int) -> int:
        """LoRA parameters for rank `r` on every linear of every block (all-linear, lm_head excluded)."""
        return self.layers * sum(r * (a + b) for a, b in self.linears())


def flops_per_token(shape: ModelShape, seq_len: float, method: str = "lora", lora_r: int = 16) -> float:
    """Training FLOPs per token (PERF.md): LoRA 4N + 6·N_lora, full 6N; plus causal attention 6·L·H·d·T.

    `seq_len` is the length of the sequence the token is in (for a batch of mixed lengths, pass the
    token-weighted mean length Σs²/Σs, which makes the attention term exact).
    """
    n = shape.matmul_params()
    dense = 6 * n if method in ("full", "freeze") else 4 * n + 6 * shape.lora_params(lora_r)
    return dense + 6 * shape.layers * shape.heads * shape.head_dim * seq_len


def estimate_train_memory(shape: ModelShape, tokens: int, *, method: str = "lora", lora_r: int = 16,
                          weight_bytes: float = 2, gradient_checkpointing: bool = False,
                          fused_loss: bool = False) -> dict:
    """A rough peak-memory model for one micro-batch of `tokens` tokens (bytes, by part).

    Activations: per token and layer, the bf16 tensors autograd keeps for a SwiGLU decoder with LoRA on every
    linear (inputs of the norms and linears, q/k/v, attention output, gate/up/act, plus LoRA dropout copies):
    about 2·(13h + 7·H·d + 4·kv·d + 6i) bytes. With recompute only each layer's input stays (plus one layer
    live). Logits: bf16 logits + fp32 upcast + fp32 grad ≈ 10 bytes per vocab entry per token, unless a fused
    linear-cross-entropy (Liger) never builds them.
    """
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    per_layer = 2 * (13 * h + 7 * q + 4 * kv + 6 * i)
    act = tokens * (shape.layers * 2 * h + per_layer) if gradient_checkpointing else tokens * shape.layers * per_layer
    if method in ("full", "freeze"):
        trainable, weights = 16 * shape.total_params(), 0      # fp32 master weight, grad, Adam m and v
    else:
        trainable, weights = 16 * shape.lora_params(lora_r), int(weight_bytes * shape.total_params())
    logits = 0 if fused_loss else 10 * tokens * shape.vocab
    parts = {"weights": weights, "trainable": trainable, "activations": act, "logits": logits}
    parts["total"] = int(sum(parts.values()) * 1.1) + GIB      # allocator slack + CUDA context
    return parts


# ------------------------------------------------------------------------------------------- the decision


def _model_shape(cfg, model_config) -> ModelShape | None:
    if model_config is not None and not isinstance(model_config, (str, os.PathLike)):
        return ModelShape.from_config(model_config)
    try:
        from transformers import AutoConfig

        return ModelShape.from_config(AutoConfig.from_pretrained(str(model_config or cfg.model.name_or_path)))
    except Exception:  # GGUF, hub id offline, remote code: size unknown
        return None


def _attention(cfg, caps: Capabilities) -> tuple[str, str]:
    asked = cfg.model.attn_implementation
    packing = cfg.train.packing
    if asked != "auto":
        if asked.startswith("flash_attention") and caps.device != "cuda":
            raise ConfigError(f"model.attn_implementation: {asked!r} needs a CUDA GPU; use 'auto' or 'sdpa'")
        if asked == "flash_attention_2" and not (caps.flash_attn_2 or caps.hub_kernels):
            raise ConfigError("model.attn_implementation: 'flash_attention_2' but flash-attn is not installed: "
                              "pip install flash-attn --no-build-isolation (or use 'auto')")
        return asked, "set in config"
    if caps.device == "cuda":
        cap = caps.cuda_capability or (0, 0)
        why = "varlen kernel: packed examples stay apart at no mask cost" if packing else "fastest exact attention"
        if cap[0] == 9 and (caps.flash_attn_3 or caps.hub_kernels):
            src = "flash-attn-3" if caps.flash_attn_3 else "kernels-community FA3 from the Hub"
            return "flash_attention_3", f"Hopper + {src}: {why}"
        if cap >= (8, 0) and (caps.flash_attn_2 or caps.hub_kernels):
            src = "flash-attn" if caps.flash_attn_2 else "kernels-community FA2 from the Hub"
            return "flash_attention_2", f"sm{cap[0]}{cap[1]} + {src}: {why}"
        missing = "no flash-attn installed" if cap >= (8, 0) else f"sm{cap[0]}{cap[1]} is older than Ampere"
    else:
        missing = f"{caps.device}: no flash-attention kernels"
    if packing:
        return "sdpa", (f"{missing}; packed batches get a block-diagonal mask built from position_ids "
                        "(correct, but attention is not varlen)")
    return "sdpa", missing


def resolve_fast_path(cfg, device: str | None = None, *, caps: Capabilities | None = None,
                      model_config: Any = None) -> dict:
    """Decide the fast-path switches for this run.

    Args:
        cfg: chattune `Config`. Reads model.attn_implementation, train.packing, train.use_liger_kernel,
            train.torch_compile, train.gradient_checkpointing, train.batch_size, data.max_length, method.
            For the three train switches: True/False = as set, None = auto (on where it runs and pays).
        device: "cpu", "cuda", ... (None: CUDA if available).
        caps: the machine's capabilities (default: `probe_capabilities(device)`); tests pass their own.
        model_config: transformers config (or dict) of the model, or the folder to read it from, for the memory
            estimate; default: ``cfg.model.name_or_path`` when it is a local folder or cached id.

    Returns:
        {"attn_implementation": str, "use_liger_kernel": bool, "torch_compile": bool,
         "gradient_checkpointing": bool, "packing": bool, "device": str,
         "reasons": {switch: why}, "memory_estimate_gib": float | None}.

    Raises:
        ConfigError: an explicit attention implementation or ``use_liger_kernel: true`` this machine cannot run.
    """
    caps = caps or probe_capabilities(device)
    t = cfg.train
    gpu = caps.device == "cuda"
    reasons: dict[str, str] = {}
    attn, reasons["attn_implementation"] = _attention(cfg, caps)

    want_liger = t.use_liger_kernel
    if want_liger is False:
        liger, reasons["use_liger_kernel"] = False, "off in config"
    elif gpu and caps.liger:
        liger = True
        reasons["use_liger_kernel"] = ("fused RMSNorm/RoPE/SwiGLU and linear-cross-entropy "
                                       "(never builds the full logits)")
    else:
        why = "no CUDA GPU" if not gpu else "liger-kernel is not installed (pip install 'chattune[gpu]')"
        if want_liger:  # asked for explicitly: say so rather than train slower than the user expects
            raise ConfigError(f"train.use_liger_kernel: true but {why}; set train.use_liger_kernel=false")
        liger, reasons["use_liger_kernel"] = False, why

    if t.torch_compile:
        compile_ = True
        reasons["torch_compile"] = "on in config" + ("" if gpu else " (CPU: slow to compile, rarely pays back)")
        if t.packing:
            reasons["torch_compile"] += "; packed batches change shape every step, expect recompiles"
    else:
        compile_ = False
        reasons["torch_compile"] = ("off in config" if t.torch_compile is False else
                                    "off by default: compile time and shape recompiles outweigh the gain on short runs")

    mem = None
    shape = _model_shape(cfg, model_config) if gpu else None
    if t.gradient_checkpointing is not None:
        gc = bool(t.gradient_checkpointing)
        reasons["gradient_checkpointing"] = f"{'on' if gc else 'off'} in config"
    elif not gpu:
        gc, reasons["gradient_checkpointing"] = False, "CPU: memory is not the limit; recompute costs ~1/3 more work"
    elif shape is None or not caps.gpu_memory_bytes:
        gc, reasons["gradient_checkpointing"] = True, "model size unknown: on to be safe"
    else:
        tokens = t.batch_size * cfg.data.max_length
        est = estimate_train_memory(shape, tokens, method=cfg.method.type, lora_r=cfg.method.lora.r,
                                    weight_bytes=0.55 if cfg.method.type == "qlora" else 2, fused_loss=liger)
        mem = est["total"] / GIB
        budget = _MEMORY_HEADROOM * caps.gpu_memory_bytes / GIB
        gc = est["total"] > _MEMORY_HEADROOM * caps.gpu_memory_bytes
        reasons["gradient_checkpointing"] = (
            f"{'on' if gc else 'off'}: estimated {mem:.1f} GiB without recompute for {tokens} tokens/micro-batch "
            f"{'>' if gc else '<='} {budget:.1f} GiB budget ({_MEMORY_HEADROOM:.0%} of {caps.gpu_name or 'GPU'})")
    return {"attn_implementation": attn, "use_liger_kernel": liger, "torch_compile": compile_,
            "gradient_checkpointing": gc, "packing": bool(t.packing), "device": caps.device,
            "reasons": reasons, "memory_estimate_gib": mem}


def apply_plan(cfg, plan: dict):
    """A copy of `cfg` with the plan's choices, for loading the model and building TrainingArguments.

    Keep writing the ORIGINAL config to the run dir: a resolved ``flash_attention_2`` there would stop
    `chattune chat RUN_DIR` on a machine without flash-attn. The attention choice is only set when it is a
    flash kernel or was explicit; otherwise "auto" stays and transformers picks (sdpa where supported).
    """
    attn = plan["attn_implementation"]
    model = cfg.model if attn == "sdpa" and cfg.model.attn_implementation == "auto" else \
        cfg.model.model_copy(update={"attn_implementation": attn})  # no validation: flash_attention_3 is allowed
    train = cfg.train.model_copy(update={k: plan[k] for k in ("use_liger_kernel", "torch_compile",
                                                              "gradient_checkpointing")})
    return cfg.model_copy(update={"model": model, "train": train})


def training_args(plan: dict) -> dict:
    """The `transformers.TrainingArguments` kwargs for a plan (merge after the base kwargs)."""
    return {"use_liger_kernel": plan["use_liger_kernel"], "torch_compile": plan["torch_compile"],
            "activation_checkpointing": plan["gradient_checkpointing"],
            # non-reentrant recompute works with frozen inputs (LoRA) without enable_input_require_grads
            "activation_checkpointing_kwargs": {"use_reentrant": False} if plan["gradient_checkpointing"] else None}


def model_kwargs(plan: dict) -> dict:
    """The ``from_pretrained`` kwargs for a plan."""
    return {"attn_implementation": plan["attn_implementation"]}


def prepare_model(model) -> None:
    """Set what training needs on a loaded model: no KV cache.

    Why: with ``use_cache`` on (Qwen3's default), the model builds a cache in training forward passes, and
    transformers then skips the packed-sequence mask: SDPA/eager would attend across packed examples.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.use_cache = False


def describe(plan: dict) -> str:
    """Lines for the start-of-run banner, one per switch, with its reason."""
    on = {True: "on", False: "off"}
    rows = [f"fast path ({plan['device']}):"]
    for key in ("attn_implementation", "use_liger_kernel", "torch_compile", "gradient_checkpointing"):
        value = plan[key]
        rows.append(f"  {key:<22} {on.get(value, value) if isinstance(value, bool) else value:<20} "
                    f"{plan['reasons'][key]}")
    return "\n".join(rows)

"""The run plan: every automatic decision of a run, made once, each with its reason.

`make_plan(cfg, caps)` looks at the config and a typed probe of the machine (`Capabilities`) and decides the
device, the dtype, 4-bit loading, the attention kernel, recompute (gradient checkpointing), Liger and
torch.compile, with the one memory estimate. Model loading, method setup, TrainingArguments, `doctor`, the
start banner, the run dir and the benches read the plan; none of them decides again. A value set in the config
wins; ``auto``/None means "the fastest choice that is correct here".

Correctness rules the choices keep (tests check them):
- Packed (padding-free) batches never attend across examples. Flash-attention kernels read the example
  boundaries from ``position_ids`` (varlen); SDPA/eager get a block-diagonal mask that transformers builds from
  ``position_ids`` when the batch has no ``attention_mask`` and the model runs without a KV cache
  (TrainingArguments ``use_cache=False``).
- Flash attention runs in half precision only; an fp32 run gets SDPA.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from .memory import FIT_SHARE, GPUS, GiB, MemoryEstimate, estimate_memory, parse_bytes
from .shapes import ModelShape, known_config, shape_of

# The packages whose versions change results: recorded in every run dir and shown by `chattune doctor`.
PACKAGES = ("chattune", "torch", "transformers", "peft", "datasets", "accelerate", "trl", "tokenizers",
            "safetensors", "bitsandbytes", "flash-attn", "liger-kernel", "deepspeed")


def package_versions() -> dict[str, str | None]:
    """{package: installed version or None} for `PACKAGES`."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass(frozen=True)
class Capabilities:
    """What a machine offers. `probe_capabilities` fills it for this one; `for_card` describes another."""

    device: str = "cpu"                               # "cuda", "cpu", "mps", "xpu"
    cuda_capability: tuple[int, int] | None = None    # (9, 0) = Hopper, (8, 0) = Ampere, (7, 5) = Turing
    gpu_name: str | None = None
    memory_bytes: int | None = None                   # GPU memory, or available RAM on CPU/MPS
    flash_attn_2: bool = False                        # flash-attn >= 2.3.3 importable (with CUDA)
    flash_attn_3: bool = False                        # flash-attn-3 (flash_attn_interface) importable
    hub_kernels: bool = False                         # `kernels` package + Hub reachable (downloads FA kernels)
    liger: bool = False                               # liger-kernel importable
    bitsandbytes: bool = False                        # bitsandbytes importable (4-bit NF4)
    described: bool = False                           # True: a card named by the user, not this machine

    @property
    def bf16(self) -> bool:
        """bf16 matmuls in hardware: CUDA from Ampere (sm80) on."""
        return self.device == "cuda" and (self.cuda_capability or (0, 0)) >= (8, 0)

    @property
    def label(self) -> str:
        mem = f" ({self.memory_bytes / GiB:.1f} GiB)" if self.memory_bytes else ""
        return f"{self.gpu_name or self.device}{mem}"

    @classmethod
    def for_card(cls, gpu: str | None = None, memory: str | int | None = None) -> Capabilities:
        """A CUDA machine other than this one, with chattune[gpu] installed (bitsandbytes, liger-kernel; no
        flash-attn): a name from `GPUS` (rtx4090, a100-80, h100-80, h200-141, l4, t4, ...) and/or a size
        ('24GB'). A size alone means an Ampere-or-newer card."""
        name, cap, mem = None, (8, 0), None
        if gpu:
            key = gpu.lower().replace(" ", "").replace("_", "-")
            if key not in GPUS:
                raise ConfigError(f"--gpu {gpu!r} is not a card chattune knows; expected one of {', '.join(GPUS)} "
                                  "(or give --gpu-memory 24GB)")
            name, gib, cap = GPUS[key]
            mem = int(gib * GiB)
        if memory is not None:
            mem = memory if isinstance(memory, int) else parse_bytes(memory)
            name = name or f"GPU with {mem / GiB:g} GiB"
        if mem is None:
            raise ConfigError("a card needs --gpu NAME or --gpu-memory SIZE")
        return cls(device="cuda", cuda_capability=cap, gpu_name=name, memory_bytes=mem, liger=True,
                   bitsandbytes=True, described=True)


def _device(asked: str | None, caps: Capabilities) -> str:
    """The device string to place the model on: the asked one when it names the probed kind ("cuda:1")."""
    return str(asked) if asked and str(asked).split(":")[0] == caps.device else caps.device


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def probe_capabilities(device: str | None = None) -> Capabilities:
    """Look at this machine's device and the installed kernel packages (imports nothing heavy beyond torch).

    Args:
        device: "cpu", "cuda", "cuda:1", "mps"; None = CUDA when available, else CPU.
    """
    import torch

    dev = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kind = dev.split(":")[0]
    common: dict[str, Any] = dict(liger=_has("liger_kernel"), bitsandbytes=_has("bitsandbytes"))
    if kind == "cuda" and torch.cuda.is_available():
        idx = torch.device(dev).index or 0
        props = torch.cuda.get_device_properties(idx)
        from transformers.utils import import_utils as iu

        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        return Capabilities(device="cuda", cuda_capability=(props.major, props.minor), gpu_name=props.name,
                            memory_bytes=props.total_memory, flash_attn_2=bool(iu.is_flash_attn_2_available()),
                            flash_attn_3=bool(iu.is_flash_attn_3_available()),
                            hub_kernels=bool(iu.is_kernels_available()) and not offline, **common)
    import psutil

    return Capabilities(device=kind, memory_bytes=int(psutil.virtual_memory().available), **common)


@dataclass(frozen=True)
class RunPlan:
    """Every automatic decision of a run. ``reasons`` says why, per field name."""

    device: str                       # "cpu", "cuda", "mps"
    dtype: str                        # float32 | bfloat16 | float16: weights, and the compute dtype of 4-bit layers
    load_in_4bit: bool                # QLoRA: NF4 + double quant base weights
    attention: str                    # what from_pretrained gets as attn_implementation
    gradient_checkpointing: bool
    liger: bool
    torch_compile: bool
    packing: bool
    memory: MemoryEstimate | None     # the one memory estimate (None: model shape unknown, or inference)
    reasons: dict[str, str] = field(default_factory=dict)
    machine: str = ""                 # what it was planned for, e.g. "NVIDIA H200 (139.8 GiB)"
    dequantise: bool = False          # 4-bit base, inference/merge: turned back into plain `dtype` weights once

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def to_dict(self) -> dict:
        """JSON-ready (written to the run dir as plan.json)."""
        out = asdict(self)
        out["memory"] = self.memory.to_dict() if self.memory else None
        return out


_DTYPES = {"float32", "bfloat16", "float16"}


def _dtype(cfg_dtype: str, caps: Capabilities) -> tuple[str, str]:
    if cfg_dtype not in (None, "auto"):
        if cfg_dtype not in _DTYPES:
            raise ConfigError(f"model.dtype {cfg_dtype!r} is not supported; "
                              "expected auto, float32, bfloat16 or float16")
        if cfg_dtype == "bfloat16" and caps.device == "cuda" and not caps.bf16:
            raise ConfigError(f"model.dtype: bfloat16 but {caps.label} has no bf16 (needs sm80+); use float16 or auto")
        return cfg_dtype, "set in config"
    if caps.bf16:
        return "bfloat16", f"{caps.label}: bf16 in hardware, no loss scaling needed"
    if caps.device == "cuda":
        return "float32", f"sm{''.join(map(str, caps.cuda_capability or ()))} has no bf16; fp16 would need loss scaling"
    return "float32", f"{caps.device}: fp32 (no fast bf16 matmuls to rely on; half precision would only add rounding)"


def _attention(asked: str, packing: bool, dtype: str, caps: Capabilities) -> tuple[str, str]:
    if asked != "auto":
        if asked.startswith("flash_attention") and caps.device != "cuda":
            raise ConfigError(f"model.attn_implementation: {asked!r} needs a CUDA GPU; use 'auto' or 'sdpa'")
        if asked == "flash_attention_2" and not (caps.flash_attn_2 or caps.hub_kernels or caps.described):
            raise ConfigError("model.attn_implementation: 'flash_attention_2' but flash-attn is not installed: "
                              "pip install flash-attn --no-build-isolation (or use 'auto')")
        return asked, "set in config"
    if caps.device == "cuda":
        cap = caps.cuda_capability or (0, 0)
        why = "varlen kernel: packed examples stay apart at no mask cost" if packing else "fastest exact attention"
        half = dtype in ("bfloat16", "float16")
        if half and cap[0] == 9 and (caps.flash_attn_3 or caps.hub_kernels):
            src = "flash-attn-3" if caps.flash_attn_3 else "kernels-community FA3 from the Hub"
            return "flash_attention_3", f"Hopper + {src}: {why}"
        if half and cap >= (8, 0) and (caps.flash_attn_2 or caps.hub_kernels):
            src = "flash-attn" if caps.flash_attn_2 else "kernels-community FA2 from the Hub"
            return "flash_attention_2", f"sm{cap[0]}{cap[1]} + {src}: {why}"
        if cap < (8, 0):
            missing = f"sm{cap[0]}{cap[1]} is older than Ampere (flash-attention needs sm80+)"
        elif not half:
            missing = "fp32: flash-attention runs in half precision only"
        else:
            missing = "no flash-attn installed"
    else:
        missing = f"{caps.device}: no flash-attention kernels"
    if packing:
        return "sdpa", (f"{missing}; packed batches get a block-diagonal mask built from position_ids "
                        "(correct, but attention is not varlen)")
    return "sdpa", missing


def _liger(asked: bool | None, caps: Capabilities) -> tuple[bool, str]:
    if asked is False:
        return False, "off in config"
    if caps.device == "cuda" and caps.liger:
        return True, "fused RMSNorm/RoPE/SwiGLU and linear-cross-entropy (never builds the full logits)"
    why = "no CUDA GPU" if caps.device != "cuda" else "liger-kernel is not installed (pip install 'chattune[gpu]')"
    if asked:  # asked for explicitly: say so rather than train slower than the user expects
        raise ConfigError(f"train.use_liger_kernel: true but {why}; set train.use_liger_kernel=false")
    return False, why


def _compile(asked: bool, packing: bool, caps: Capabilities) -> tuple[bool, str]:
    if not asked:
        return False, "off (the default): compile time and shape recompiles outweigh the gain on short runs"
    why = "on in config" + ("" if caps.device == "cuda" else " (CPU: slow to compile, rarely pays back)")
    return True, why + ("; packed batches change shape every step, expect recompiles" if packing else "")


def _shape(cfg, model_config: Any) -> tuple[ModelShape | None, str]:
    if model_config is not None:
        if isinstance(model_config, dict):
            from transformers import AutoConfig

            fields = dict(model_config)
            model_config = AutoConfig.for_model(fields.pop("model_type", "qwen3"), **fields)
        return shape_of(model_config, cfg.model.trust_remote_code), "config.json"
    table = known_config(cfg.model.name_or_path)
    return (shape_of(table), "chattune's shape table") if table is not None else (None, "")


def make_plan(cfg, caps: Capabilities | None = None, *, model_config: Any = None, device: str | None = None) -> RunPlan:
    """Decide how this run trains, once, with a reason for every choice.

    Args:
        cfg: chattune `Config`. Reads model.dtype, model.attn_implementation, method, data.max_length and
            train.{packing, batch_size, use_liger_kernel, torch_compile, gradient_checkpointing}.
        caps: the machine (default: `probe_capabilities(device)`); tests and `doctor --gpu` pass their own.
        model_config: the model's transformers config (or a dict of config.json fields) for the memory estimate;
            None = chattune's shape table when the model is a known family, else no estimate.
        device: for the probe when `caps` is None.

    Returns:
        The frozen `RunPlan`.

    Raises:
        ConfigError: a setting this machine cannot run (an explicit flash kernel without CUDA or flash-attn,
            Liger without a GPU, bf16 on a GPU without it).
    """
    caps = caps or probe_capabilities(device)
    t, method = cfg.train, cfg.method.type
    qlora = method == "qlora"
    reasons: dict[str, str] = {"device": caps.label + (" (described, not this machine)" if caps.described else "")}
    if qlora:
        reasons["load_in_4bit"] = "method qlora: NF4 + double quantisation, LoRA on top" + (
            "" if caps.device == "cuda" else f"; {caps.device}: slower than lora (every matmul dequantises the "
            "4-bit weights): it saves memory, not time")
    dtype, reasons["dtype"] = _dtype(cfg.model.dtype, caps)
    attention, reasons["attention"] = _attention(cfg.model.attn_implementation, t.packing, dtype, caps)
    liger, reasons["liger"] = _liger(t.use_liger_kernel, caps)
    compile_, reasons["torch_compile"] = _compile(t.torch_compile, t.packing, caps)

    shape, source = _shape(cfg, model_config)
    lc = cfg.method.lora

    def estimate(gc: bool) -> MemoryEstimate | None:
        if shape is None:
            return None
        return estimate_memory(
            shape, model=cfg.model.name_or_path, method=method, dtype=dtype, device=caps.device,
            batch_size=t.batch_size, max_length=cfg.data.max_length, lora_r=lc.r, lora_targets=lc.target_modules,
            lora_dropout=lc.dropout, use_dora=lc.use_dora, freeze_layers=cfg.method.freeze_trainable_layers,
            gradient_checkpointing=gc, fused_loss=liger, budget_bytes=caps.memory_bytes, budget_label=caps.label,
            shape_source=source)

    gpu = caps.device == "cuda"
    if t.gradient_checkpointing is not None:
        gc = bool(t.gradient_checkpointing)
        reasons["gradient_checkpointing"] = f"{'on' if gc else 'off'} in config"
    elif not gpu:
        gc = False
        reasons["gradient_checkpointing"] = f"{caps.device}: memory is not the limit; recompute costs ~1/3 more work"
    elif shape is None or not caps.memory_bytes:
        gc, reasons["gradient_checkpointing"] = True, "model size unknown: on to be safe"
    else:
        without = estimate(False)
        assert without is not None
        budget = FIT_SHARE * caps.memory_bytes
        gc = without.total > budget
        reasons["gradient_checkpointing"] = (
            f"{'on' if gc else 'off'}: estimated {without.gib():.1f} GiB without recompute for {without.tokens} "
            f"tokens/micro-batch {'>' if gc else '<='} {budget / GiB:.1f} GiB budget ({FIT_SHARE:.0%} of {caps.label})")
    memory = estimate(gc)
    reasons["packing"] = "padding-free packing (set in config)" if t.packing else "dynamic padding (packing off)"
    return RunPlan(device=_device(device, caps), dtype=dtype, load_in_4bit=qlora, attention=attention,
                   gradient_checkpointing=gc, liger=liger, torch_compile=compile_, packing=bool(t.packing),
                   memory=memory, reasons=reasons, machine=caps.label)


def inference_plan(model_cfg, *, device: str | None = None, dtype: str | None = None,
                   caps: Capabilities | None = None, method: str | None = None,
                   dequantise: bool | None = None) -> RunPlan:
    """The plan for loading a model to generate with: device, dtype and attention (no training switches).

    Args:
        model_cfg: the model section (dtype and attn_implementation are read from it).
        device: "cpu", "cuda", ...; None = CUDA when available.
        dtype: overrides ``model_cfg.dtype`` ("auto", "float32", "bfloat16", "float16").
        caps: the machine (default: probed).
        method: the run's method.type when loading the base of an adapter run: "qlora" loads the NF4 base
            the adapter was trained on (on the original checkpoint it would be another model, peft#2321).
        dequantise: qlora only: turn the 4-bit base into plain `dtype` weights once (True), keep it 4-bit
            (False); None = dequantise except on CUDA.
    """
    caps = caps or probe_capabilities(device)
    d, why_d = _dtype(dtype or model_cfg.dtype, caps)
    attn, why_a = _attention(model_cfg.attn_implementation, False, d, caps)
    reasons = {"device": caps.label, "dtype": why_d, "attention": why_a}
    qlora = method == "qlora"
    if qlora:
        reasons["load_in_4bit"] = "a QLoRA adapter: the NF4 base it was trained on, quantised as in training"
        if dequantise is None:
            dequantise = caps.device != "cuda"
            reasons["dequantise"] = (f"{caps.device}: dequantised once; the same logits as the 4-bit layers, which "
                                     "dequantise on every matmul" if dequantise else
                                     "kept 4-bit: the memory QLoRA was chosen for")
        else:
            reasons["dequantise"] = ("asked: merging needs plain weights (never merge into 4-bit layers)"
                                     if dequantise else "asked: kept 4-bit")
    return RunPlan(device=_device(device, caps), dtype=d, load_in_4bit=qlora, attention=attn,
                   gradient_checkpointing=False, liger=False, torch_compile=False, packing=False, memory=None,
                   machine=caps.label, reasons=reasons, dequantise=bool(qlora and dequantise))


def describe(plan: RunPlan) -> str:
    """Lines for the start-of-run banner: one per decision, with its reason, then the memory estimate."""
    on = {True: "on", False: "off"}
    rows = [f"plan ({plan.machine}):"]
    for key in ("dtype", "load_in_4bit", "dequantise", "attention", "gradient_checkpointing", "liger",
                "torch_compile", "packing"):
        if key in plan.reasons:
            value = getattr(plan, key)
            rows.append(f"  {key:<22} {on.get(value, value) if isinstance(value, bool) else value:<20} "
                        f"{plan.reasons[key]}")
    m = plan.memory
    if m is not None:
        rows.append(f"  {'memory estimate':<22} {m.gib():.1f} GiB{'':<11} {m.verdict} "
                    f"(budget {(m.budget_bytes or 0) / GiB:.1f} GiB; weights {m.gib('weights'):.1f}, activations "
                    f"{m.gib('activations'):.1f}, logits {m.gib('logits'):.1f})")
    return "\n".join(rows)

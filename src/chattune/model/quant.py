"""4-bit NF4 base weights for QLoRA: the one quantisation chattune uses, how the quantised layers are
kept computing exactly what training computes, and how a quantised base is turned back into plain
weights (for merging, and for fast CPU inference).

The QLoRA model is the 4-bit base plus the adapter: the adapter learned to correct the *quantised*
weights, so everything after training (inference, merge, verification) starts from the same 4-bit
base, never from the original full-precision checkpoint (that is a different model; peft#2321).
Quantisation is deterministic (blockwise absmax + nearest NF4 code), so loading the base the same way
again gives the same 4-bit weights.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging

from ..errors import ChattuneError

log = logging.getLogger(__name__)

# CPU 4-bit kernels (quantise, dequantise, matmul, backward) exist from bitsandbytes 0.49; 0.50 is the
# release chattune is tested with.
MIN_BITSANDBYTES = (0, 50)
BNB_FETCH = "pip install 'chattune[qlora]' (bitsandbytes>=0.50: 4-bit on CUDA and, slowly, on CPU)"
# bitsandbytes' quantisation block: one absmax per 64 weights (the QLoRA paper's setting, and the default).
NF4_BLOCKSIZE = 64


def bitsandbytes_version() -> tuple[int, ...] | None:
    """The installed bitsandbytes version as a tuple, or None when it is not installed."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    raw = importlib.metadata.version("bitsandbytes")
    return tuple(int(p) for p in raw.split("+")[0].split(".")[:3] if p.isdigit())


def require_bitsandbytes() -> None:
    """Raise a ChattuneError saying how to install bitsandbytes when it is missing or too old."""
    have = bitsandbytes_version()
    if have is None:
        raise ChattuneError(f"method.type: qlora needs bitsandbytes, which is not installed: {BNB_FETCH}")
    if have < MIN_BITSANDBYTES:
        raise ChattuneError(f"method.type: qlora needs bitsandbytes >= "
                            f"{'.'.join(map(str, MIN_BITSANDBYTES))} (installed: {'.'.join(map(str, have))}): "
                            f"{BNB_FETCH}")


def nf4_config(compute_dtype):
    """The quantisation config of every chattune QLoRA model: NF4 with double quantisation (QLoRA
    paper, section 3), computing in `compute_dtype` (the run's training dtype).

    Args:
        compute_dtype: torch dtype the 4-bit layers dequantise to for each matmul.

    Returns:
        transformers.BitsAndBytesConfig.
    """
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def is_4bit(model) -> bool:
    """True when `model` (or the base under a PeftModel) holds bitsandbytes 4-bit layers."""
    return any(p.__class__.__name__ == "Params4bit" for p in model.parameters())


def pin_compute_path(model) -> int:
    """Make every 4-bit layer of `model` compute the same way in eval mode as in training.

    bitsandbytes >= 0.50, on CPUs with AVX512-BF16, repacks a 4-bit layer's weights the first time it
    runs in eval mode without gradients: the absmax statistics are rounded to bf16 *in place* and the
    matmul runs in bf16. The model then answers differently from the one being trained, and keeps
    doing so after `model.train()` (logits moved by 0.16 on the tiny test model, 0.6 on SmolLM2), so an
    evaluation during training would silently change the weights being trained. With the repacking
    off, eval and training both dequantise to the compute dtype and use a plain matmul.

    Returns:
        How many 4-bit layers were pinned.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes.nn.Linear4bit's switch
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def release_checkpoint(model) -> int:
    """Copy the full-precision parameters of a freshly loaded 4-bit `model` out of the checkpoint file.

    transformers leaves parameters it did not convert (embeddings, norms; fp32 on CPU) as views of the
    memory-mapped safetensors file, which keeps the whole mapping alive, and quantisation has read every
    page of it: on CPU the original Linear weights then stay resident next to their 4-bit copies, and a
    QLoRA process holds more memory than a LoRA one. Copying the few unconverted tensors lets the mapping
    go (the memory model counts 4-bit Linears plus full-precision rest, which is what remains).

    Returns:
        How many parameter tensors were copied.
    """
    n = 0
    for p in model.parameters():  # shared (tied) parameters are listed once and stay shared
        if p.__class__.__name__ != "Params4bit":
            p.data = p.data.clone()
            n += 1
    return n


def dequantize(model, dtype):
    """Replace every 4-bit layer of a freshly loaded 4-bit `model` by a plain Linear holding its
    dequantised weights in `dtype` (transformers' `PreTrainedModel.dequantize`).

    These are exactly the weights the 4-bit layers compute with (they dequantise to the compute dtype
    before every matmul), so a LoRA adapter trained on the 4-bit base merges into them without the
    quantisation error that merging into the original checkpoint would add, and on CPU the dequantised
    model gives bit-identical logits with plain matmuls.

    Args:
        model: a transformers model loaded with `nf4_config` (not yet wrapped by peft).
        dtype: torch dtype for the dequantised weights (the run's training dtype).

    Returns:
        The same model object, no longer quantised (no bitsandbytes layers, no quantization_config).
    """
    if not is_4bit(model):
        raise ChattuneError("dequantize: the model holds no 4-bit layers")
    quiet = logging.getLogger("transformers.integrations.bitsandbytes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it logs "dequantized in X and casted to Y" once per call
    try:
        return model.dequantize(dtype=dtype)
    finally:
        quiet.setLevel(level)

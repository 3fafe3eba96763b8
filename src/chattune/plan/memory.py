"""The one memory model: peak training memory of a config on a device, by part, and whether it fits.

The run plan uses it to decide recompute (gradient checkpointing); `chattune doctor` prints it, for this
machine or for a named card; the GPU bench compares it with the measured peak.

Formulas (bytes; b = bytes per element of the training dtype, T = batch_size × max_length tokens):
  * weights: params × b; qlora: decoder Linear weights at 4.127 bits (NF4 + double quant), the rest
    (embeddings, norms, lm_head) fp32 because peft's prepare_model_for_kbit_training upcasts them.
  * lora: Σ r·(in+out) over target Linears (+ out per layer for DoRA), kept in fp32.
  * gradients: trainable × (4 for LoRA, b for full/freeze).
  * optimizer: AdamW m and v in fp32 = 8 × trainable; master: 4 × trainable when full/freeze trains
    half-precision weights (mixed precision keeps an fp32 copy) — an upper bound.
  * activations per token per layer ≈ b × (7·H + 8·q + 5·kv + 4·I) without recompute, q = heads·head_dim,
    kv = kv_heads·head_dim (two RMSNorms keep input, normalised and scaled copies: 6·H; the mid residual: H;
    q/k/v outputs, their rotary copies and rotate-half products, the GQA repeat of k/v, attention output and
    o_proj input: 8·q + 5·kv; MLP gate, up, act, product: 4·I; sdpa/flash attention store no S×S matrix),
    + (b + 1) × Σ in_features of the LoRA targets when lora.dropout > 0 (dropped input copy + mask);
    with recompute b × H per layer (layer inputs) plus one layer recomputed.
  * logits: 4 × T × vocab × 4 (fp32 logits, the log-softmax kept for backward, and both gradients at the
    start of backward); 0 with a fused linear-cross-entropy (Liger), which never builds them.
  * overhead: CUDA context and allocator slack on a GPU.
T assumes every sequence is max_length long: dynamic padding and packing usually need less.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .shapes import ModelShape

GiB = 1024 ** 3
# NF4 with double quantisation: 4 bits + one 8-bit absmax per 64 weights + a second-level fp32 absmax
# per 256 blocks (QLoRA paper, section 3): 4 + 8/64 + 32/(64*256) = 4.127 bits per weight.
NF4_BITS = 4.127
# Share of a device's memory a run may plan to use; the rest absorbs allocator fragmentation and the error of
# this model (it is arithmetic, not a measurement). The plan turns recompute on above it; doctor says "tight".
FIT_SHARE = 0.85
CUDA_OVERHEAD = GiB // 2
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PARTS = ("weights", "lora", "gradients", "optimizer", "master_weights", "activations", "logits", "overhead")


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak training memory by part (bytes), the budget it is compared with, and the verdict."""

    model: str
    method: str
    dtype: str
    device: str
    params: int
    trainable_params: int
    lora_params: int
    lora_targets: int
    vocab_size: int
    batch_size: int
    max_length: int
    gradient_checkpointing: bool
    fused_loss: bool
    weights: int
    lora: int
    gradients: int
    optimizer: int
    master_weights: int
    activations: int
    logits: int
    overhead: int
    budget_bytes: int | None           # memory it must fit in (None: unknown)
    budget_label: str                  # e.g. "NVIDIA H200 (139.8 GiB)", "24 GiB (--gpu-memory)"
    shape_source: str                  # "config.json" or "chattune's shape table"
    advice: tuple[str, ...] = field(default=())

    @property
    def tokens(self) -> int:
        return self.batch_size * self.max_length

    @property
    def total(self) -> int:
        return sum(getattr(self, p) for p in PARTS)

    @property
    def verdict(self) -> str:
        """fits (≤ FIT_SHARE of the budget), tight (≤ budget), does not fit, or unknown (no budget)."""
        if not self.budget_bytes:
            return "unknown"
        if self.total <= FIT_SHARE * self.budget_bytes:
            return "fits"
        return "tight" if self.total <= self.budget_bytes else "does not fit"

    def parts(self) -> dict[str, int]:
        """{part: bytes} in print order."""
        return {p: getattr(self, p) for p in PARTS}

    def gib(self, part: str = "total") -> float:
        return getattr(self, part) / GiB

    def to_dict(self) -> dict:
        """JSON-ready: every field, plus total, verdict and GiB per part."""
        return {**asdict(self), "advice": list(self.advice), "total": self.total, "verdict": self.verdict,
                "gib": {k: round(v / GiB, 3) for k, v in
                        {**self.parts(), "total": self.total, "budget": self.budget_bytes or 0}.items()}}


def estimate_memory(shape: ModelShape, *, model: str, method: str, dtype: str, device: str, batch_size: int,
                    max_length: int, lora_r: int = 16, lora_targets: str | list[str] = "all-linear",
                    lora_dropout: float = 0.0, use_dora: bool = False, freeze_layers: int = 2,
                    gradient_checkpointing: bool, fused_loss: bool = False, budget_bytes: int | None = None,
                    budget_label: str = "", shape_source: str = "config.json") -> MemoryEstimate:
    """Peak training memory of one micro-batch (see the module docstring for every formula).

    Args:
        shape: the model's `ModelShape`.
        model: its name (for the report).
        method: lora | qlora | full | freeze.
        dtype: the training dtype name (float32 | bfloat16 | float16); qlora computes in it (bf16/fp16).
        device: cpu | cuda | mps (a GPU adds the CUDA context).
        batch_size, max_length: the micro-batch.
        lora_r, lora_targets, lora_dropout, use_dora: the LoRA settings; freeze_layers: method freeze.
        gradient_checkpointing: recompute on (activations: layer inputs only).
        fused_loss: Liger's linear-cross-entropy (no logits).
        budget_bytes, budget_label: the memory it must fit in and what that is.
        shape_source: where the shape came from.
    """
    b = _BYTES[dtype]
    lora_params, targets = 0, []
    if method in ("lora", "qlora"):
        targets = shape.targets(lora_targets)
        lora_params = shape.lora_params(lora_r, lora_targets, use_dora)
        trainable = lora_params
    elif method == "full":
        trainable = shape.params
    else:  # freeze: the last N decoder layers + final norm
        trainable = min(freeze_layers, shape.layers) * shape.layer_params + shape.final_norm_params
    if method == "qlora":
        quantised = sum(i * o for _, i, o in shape.linear_targets)
        weights = int(quantised * NF4_BITS / 8) + (shape.params - quantised) * 4
    else:
        weights = shape.params * b
    lora = lora_params * 4
    gradients = trainable * (4 if method in ("lora", "qlora") else b)
    optimizer = trainable * 8
    master = trainable * 4 if method in ("full", "freeze") and b < 4 else 0

    T = batch_size * max_length
    H, L = shape.hidden, shape.layers
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_layer = b * (7 * H + 8 * q + 5 * kv + 4 * shape.intermediate)
    if targets and lora_dropout > 0:
        per_layer += (b + 1) * sum(i for _, i, _ in targets) // max(L, 1)
    activations = T * (L * b * H + per_layer) if gradient_checkpointing else T * L * per_layer
    logits = 0 if fused_loss else 4 * T * shape.vocab * 4
    overhead = CUDA_OVERHEAD if device.startswith("cuda") else 0
    est = MemoryEstimate(
        model=model, method=method, dtype=dtype, device=device, params=shape.params, trainable_params=trainable,
        lora_params=lora_params, lora_targets=len(targets), vocab_size=shape.vocab, batch_size=batch_size,
        max_length=max_length, gradient_checkpointing=gradient_checkpointing, fused_loss=fused_loss,
        weights=weights, lora=lora, gradients=gradients, optimizer=optimizer, master_weights=master,
        activations=activations, logits=logits, overhead=overhead, budget_bytes=budget_bytes,
        budget_label=budget_label, shape_source=shape_source)
    return _with_advice(est)


def _with_advice(est: MemoryEstimate) -> MemoryEstimate:
    from dataclasses import replace

    tips = []
    if est.verdict in ("fits", "unknown"):
        return est
    parts = {k: v for k, v in est.parts().items() if k != "overhead"}
    biggest = max(parts, key=lambda k: parts[k])
    if biggest in ("activations", "logits"):
        tips.append("lower train.batch_size (raise train.grad_accum to keep the effective batch) or data.max_length")
        if not est.gradient_checkpointing and biggest == "activations":
            tips.append("set train.gradient_checkpointing=true")
        if biggest == "logits" and not est.fused_loss:
            tips.append("install liger-kernel (pip install 'chattune[gpu]'): its fused loss never builds the logits")
    if est.method in ("full", "freeze"):
        tips.append("use method.type=lora (trains <1% of the weights)")
    if est.method == "lora":
        tips.append("use method.type=qlora (4-bit base weights)")
    return replace(est, advice=tuple(tips))


# Named cards for `chattune doctor --gpu NAME`: usable memory as torch reports it (GiB), compute capability.
GPUS: dict[str, tuple[str, float, tuple[int, int]]] = {
    "rtx3090": ("RTX 3090 24 GB", 23.6, (8, 6)),
    "rtx4090": ("RTX 4090 24 GB", 23.6, (8, 9)),
    "24gb": ("24 GB consumer GPU (RTX 3090/4090)", 23.6, (8, 6)),
    "t4": ("T4 16 GB", 14.6, (7, 5)),
    "l4": ("L4 24 GB", 22.0, (8, 9)),
    "a10g": ("A10G 24 GB", 22.0, (8, 6)),
    "l40s": ("L40S 48 GB", 44.4, (8, 9)),
    "a100-40": ("A100 40 GB", 39.4, (8, 0)),
    "a100-80": ("A100 80 GB", 79.1, (8, 0)),
    "h100-80": ("H100 80 GB", 79.1, (9, 0)),
    "h200-141": ("H200 141 GB", 139.8, (9, 0)),
}


def parse_bytes(text: str) -> int:
    """'24GB', '24 GiB', '80g', '23.5' (GiB) → bytes. GB is read as GiB: cards are sold in binary units."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(g|gb|gib|m|mb|mib|t|tb|tib)?\s*", str(text).lower())
    if not m:
        from ..errors import ConfigError

        raise ConfigError(f"--gpu-memory: {text!r} is not a size; expected e.g. 24GB, 80GiB or 40")
    unit = (m.group(2) or "g")[0]
    return int(float(m.group(1)) * {"m": 1024 ** 2, "g": GiB, "t": 1024 ** 4}[unit])

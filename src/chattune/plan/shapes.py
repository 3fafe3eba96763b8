"""Model shapes: the numbers that set a decoder's memory and FLOPs, read from a transformers config.

When the model's own config.json cannot be read (offline, no cache, a machine other than the one that will
train), the shape of a known family comes from `KNOWN_MODELS`, a table of config.json fields shipped with
chattune, so `chattune doctor` answers "does it fit?" for any card without the Hub.

Parameter and LoRA-target counts come from the real architecture built on the ``meta`` device (shapes, no
weights): exact for anything transformers knows, with no per-family arithmetic to keep in sync.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_QWEN3 = {"model_type": "qwen3", "vocab_size": 151936, "head_dim": 128, "num_key_value_heads": 8,
          "rope_theta": 1_000_000.0, "max_position_embeddings": 40960}
_SMOLLM2 = {"model_type": "llama", "vocab_size": 49152, "tie_word_embeddings": True, "rope_theta": 100000.0,
            "max_position_embeddings": 8192}

# config.json fields of the families the tutorials use (copied from each repo's config.json on the Hub).
# Keys are lower-case Hub ids; `known_config` also accepts the -Base/-Instruct variants and the SmolLM2 alias.
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "qwen/qwen3-0.6b": {**_QWEN3, "hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
                        "intermediate_size": 3072, "tie_word_embeddings": True},
    "qwen/qwen3-1.7b": {**_QWEN3, "hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16,
                        "intermediate_size": 6144, "tie_word_embeddings": True},
    "qwen/qwen3-4b": {**_QWEN3, "hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32,
                      "intermediate_size": 9728, "tie_word_embeddings": True},
    "qwen/qwen3-8b": {**_QWEN3, "hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
                      "intermediate_size": 12288, "tie_word_embeddings": False},
    "qwen/qwen3-14b": {**_QWEN3, "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
                       "intermediate_size": 17408, "tie_word_embeddings": False},
    "qwen/qwen3-32b": {**_QWEN3, "hidden_size": 5120, "num_hidden_layers": 64, "num_attention_heads": 64,
                       "intermediate_size": 25600, "tie_word_embeddings": False},
    "huggingfacetb/smollm2-135m": {**_SMOLLM2, "hidden_size": 576, "num_hidden_layers": 30,
                                   "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536},
    "huggingfacetb/smollm2-360m": {**_SMOLLM2, "hidden_size": 960, "num_hidden_layers": 32,
                                   "num_attention_heads": 15, "num_key_value_heads": 5, "intermediate_size": 2560},
    "huggingfacetb/smollm2-1.7b": {**_SMOLLM2, "hidden_size": 2048, "num_hidden_layers": 24,
                                   "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 8192},
}
_ALIASES = {"smollm2-135m-instruct": "huggingfacetb/smollm2-135m"}


def known_name(name_or_path: str) -> str | None:
    """The `KNOWN_MODELS` key for a Hub id (any case, -Base/-Instruct suffix), or None."""
    key = str(name_or_path).strip().lower().rstrip("/")
    key = _ALIASES.get(key, key)
    for suffix in ("-instruct", "-base", "-fp8"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    return key if key in KNOWN_MODELS else None


def known_config(name_or_path: str):
    """A transformers config built from the shipped table, or None when the family is not in it."""
    key = known_name(name_or_path)
    if key is None:
        return None
    from transformers import AutoConfig

    fields = dict(KNOWN_MODELS[key])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


@dataclass(frozen=True)
class ModelShape:
    """The numbers that set a decoder's cost, plus exact parameter counts of its architecture.

    ``linear_targets``: (in, out) of every Linear in the decoder blocks (what LoRA all-linear wraps and what
    QLoRA stores in 4 bits); the output head is not among them.
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    params: int                                    # held in memory, tied embeddings once
    linear_targets: tuple[tuple[str, int, int], ...]  # (module short name, in, out)
    layer_params: int                              # parameters of one decoder block (freeze arithmetic)
    final_norm_params: int

    def matmul_params(self) -> int:
        """N for FLOPs: weights that take part in matmuls (decoder linears and the output projection)."""
        return sum(i * o for _, i, o in self.linear_targets) + self.vocab * self.hidden

    def lora_params(self, r: int, targets: str | list[str] = "all-linear", dora: bool = False) -> int:
        """LoRA parameters of rank `r` on `targets` ('all-linear' or module short names); DoRA adds a
        magnitude vector of size `out` per wrapped layer."""
        return sum(r * (i + o) + (o if dora else 0) for _, i, o in self.targets(targets))

    def targets(self, targets: str | list[str] = "all-linear") -> list[tuple[str, int, int]]:
        """The decoder Linear layers a LoRA `target_modules` setting wraps."""
        if targets == "all-linear":
            return list(self.linear_targets)
        names = {targets} if isinstance(targets, str) else set(targets)
        return [t for t in self.linear_targets if t[0] in names]


def flops_per_token(shape: ModelShape, seq_len: float, method: str = "lora", lora_r: int = 16) -> float:
    """Training FLOPs per token: LoRA 4N + 6·N_lora (frozen weights need no weight gradient), full 6N;
    plus causal attention 6·L·H·d·s for a token in a sequence of length s.

    For a batch of mixed lengths pass the token-weighted mean length Σs²/Σs: the attention term is then exact.
    """
    n = shape.matmul_params()
    dense = 6 * n if method in ("full", "freeze") else 4 * n + 6 * shape.lora_params(lora_r)
    return dense + 6 * shape.layers * shape.heads * shape.head_dim * seq_len


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
        from ..errors import ModelError

        raise ModelError(f"{type(model).__name__}: cannot find the decoder layers")
    return max(lists, key=len)


def final_norm(model):
    """The norm after the last decoder block, or None."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        mod = getattr(decoder, name, None) if decoder is not None else None
        if mod is not None:
            return mod
    return None


def shape_of(config, trust_remote_code: bool = False) -> ModelShape:
    """The `ModelShape` of a transformers config (the model is built on the meta device: no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    head = model.get_output_embeddings()
    seen, params = set(), 0
    for p in model.parameters():
        if id(p) not in seen:  # tied embeddings once
            seen.add(id(p))
            params += p.numel()
    targets = tuple((name.rsplit(".", 1)[-1], m.in_features, m.out_features) for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and m is not head)
    layers = decoder_layers(model)
    norm = final_norm(model)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    return ModelShape(
        hidden=text.hidden_size, layers=text.num_hidden_layers, heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        intermediate=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        vocab=text.vocab_size, tied=bool(getattr(config, "tie_word_embeddings", False)), params=params,
        linear_targets=targets, layer_params=sum(p.numel() for p in layers[-1].parameters()),
        final_norm_params=sum(p.numel() for p in norm.parameters()) if norm is not None else 0)

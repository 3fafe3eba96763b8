"""Prove, on the model about to be trained, that a packed row attends only within each example.

Padding-free packing relies on the model building a block-diagonal mask from ``position_ids`` that
restart at 0 (transformers' ``masking_utils`` does this for models built on it). Models with their own
masking code (OPT, Bloom, Falcon's old decoder...) ignore ``position_ids`` for masking: a packed
example then attends to the ones before it, silently. An allow-list of architectures would go stale
with every transformers release and cannot see the attention kernel chosen for this run, so instead
we run the check itself: two short examples, each alone and packed together, one forward each (well
under a second even for a large model).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

# The verdict compares the second example's log-probabilities after two different first examples of
# the same length: same shapes, same kernels, so an isolated model gives (near) identical numbers in
# any dtype, while attention across the boundary moves them by the first example's influence.
SWAP_TOLERANCE = 1e-3
# packed vs alone (different row lengths, so kernel rounding differs): reported, and held to a bound
# loose enough for half-precision rounding
_ALONE_TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 5e-2}


@dataclass(frozen=True)
class PackingProof:
    """Result of `prove_packing`: the largest log-prob difference seen and whether it is within noise."""

    architecture: str
    exact: bool
    swap_diff: float  # second example's max |Δ log-prob| after two different first examples
    alone_diff: float  # max |Δ log-prob| of each example packed vs run alone

    def describe(self) -> str:
        """One line for the run banner or an error."""
        verdict = "no attention across examples" if self.exact else "ATTENDS ACROSS EXAMPLES"
        return (f"packing check on {self.architecture}: {verdict} (max |Δ log-prob| of an example after "
                f"another first example {self.swap_diff:.1e}, packed vs alone {self.alone_diff:.1e})")


def _logprobs(model, ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    kw = {"position_ids": position_ids} if position_ids is not None else {}
    out = model(input_ids=ids, use_cache=False, **kw)
    return torch.log_softmax(out.logits[0].float(), dim=-1)


def prove_packing(model, *, vocab_size: int | None = None, seed: int = 0) -> PackingProof:
    """Run two short random examples alone and packed (``position_ids`` restarting at 0, no attention
    mask, no KV cache — exactly the packed training batch) and compare the log-probabilities.

    Args:
        model: the loaded model (a peft wrapper is fine); left in the train/eval mode it came in.
        vocab_size: draw token ids below this (default: the model's input embedding size).
        seed: for the token ids.

    Returns:
        `PackingProof`.
    """
    from ..data.collate import Collator

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    arch = type(base).__name__
    vocab = vocab_size or base.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    # ids from the lower half of the vocabulary: ordinary tokens in every tokenizer we have seen;
    # a long first example and a short second one, so any attention across the boundary weighs a lot
    first, other_first, second = (torch.randint(3, max(4, vocab // 2), (n,), generator=g).tolist() for n in (12, 12, 4))
    device = next(p.device for p in model.parameters())
    collate = Collator(0, packing=True)
    was_training = model.training
    model.eval()  # dropout off: every forward must see the same weights
    try:
        with torch.no_grad():
            packs = [collate([{"input_ids": x}, {"input_ids": second}]) for x in (first, other_first)]
            packed = [_logprobs(model, p["input_ids"].to(device), p["position_ids"].to(device)) for p in packs]
            alone = [_logprobs(model, torch.tensor([x], device=device)) for x in (first, second)]
    finally:
        model.train(was_training)
    n = len(first)
    swap = float((packed[0][n:] - packed[1][n:]).abs().max())
    alone_diff = max(float((packed[0][:n] - alone[0]).abs().max()), float((packed[0][n:] - alone[1]).abs().max()))
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    exact = swap <= SWAP_TOLERANCE and alone_diff <= _ALONE_TOLERANCE.get(dtype, 5e-2)
    return PackingProof(arch, exact, swap, alone_diff)


def require_exact_packing(model) -> PackingProof:
    """`prove_packing`, raising `ConfigError` (with what to do) when the model attends across examples."""
    proof = prove_packing(model)
    if not proof.exact:
        raise ConfigError(f"train.packing: {proof.describe()}. This model does not isolate packed examples "
                          "by position_ids, so packing would train on text the examples never saw: set "
                          "train.packing=false (padded batches are exact on every model).")
    return proof

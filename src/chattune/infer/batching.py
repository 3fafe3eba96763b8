"""Inference batches: left padding, so every row's last token sits in the last column, and the one way
scoring reads logits from such a batch (`tail_logits`).

Training batches (right padding or packing, with labels) are `chattune.data.collate`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def left_pad(seqs: Sequence[Sequence[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of a left-padded batch, as generation and tail scoring need it:
    every row's last token sits in the last column, so new tokens (and kept logits) line up."""
    width = max(len(x) for x in seqs)
    ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in seqs], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in seqs], dtype=torch.long, device=device)
    return ids, mask


def keep_last(n: int = 1) -> torch.Tensor:
    """The ``logits_to_keep`` that keeps the last `n` positions: an index tensor, not transformers' int.

    Why not the int: it slices the hidden states as a strided view, which ``torch.matmul`` cannot fold into
    one matrix product, so a batch's lm_head runs as a batched product over a broadcast copy of the whole
    vocabulary matrix, one pass over it per row (memory bound: most of a 64-row prefill's time on CPU).
    Indexing gathers those positions into a contiguous tensor first; lm_head is then one matrix product.
    """
    return torch.arange(-n, 0)


def tail_logits(model, seqs: Sequence[Sequence[int]], pad: int, keep: int):
    """Logits (model dtype, on the model's device) of the last `keep` positions of each sequence, scored
    as one left-padded batch with explicit position ids (so padding shifts nothing).

    Only the tail is computed (``logits_to_keep``): full logits are batch x length x vocab (GBs for a
    151k vocabulary). Row r's position -1 predicts the token after seqs[r]; position -1-k predicts
    seqs[r][-k].

    Returns:
        A (batch, keep, vocab) tensor.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(seqs, pad, device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        try:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                           logits_to_keep=keep_last(keep)).logits
        except TypeError:  # an architecture without logits_to_keep
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    return logits[:, -keep:]

"""Inference batches: left padding, so every row's last token sits in the last column.

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

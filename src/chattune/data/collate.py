"""The one place training batches are built: ``input_ids``, ``labels`` (-100 = not trained) and either
``attention_mask`` (padding) or ``position_ids`` (padding-free packing).

Why our own ~60 lines instead of transformers' collators: ``DataCollatorForSeq2Seq`` needs a tokenizer
and pads through ``tokenizer.pad`` (slow, warns on fast tokenizers), and ``DataCollatorWithFlattening``
cannot round the packed row up to a multiple (useful for GPU kernels) and builds no attention mask. The
packing rule is the same as ``DataCollatorWithFlattening``'s (flatten, restart ``position_ids`` at 0 per
example, first label of each example -100).

Packing and attention: transformers 5 (``masking_utils._preprocess_mask_arguments``) detects packed
sequences from ``position_ids`` that restart at 0 when no ``attention_mask`` and no KV cache are passed,
and builds a block-diagonal causal mask for sdpa, eager and flex attention (flash-attention uses varlen
kernels). With a KV cache that detection is skipped and the row is one causal sequence, so a packed batch
carries ``use_cache=False`` itself: ``model(**batch)`` is exact whatever the model's config says, and
passing ``use_cache=True`` on top is a TypeError. Models with their own masking code (OPT, Bloom, old
Falcon) ignore ``position_ids`` altogether; ``chattune.model.packing_proof`` finds them before a packed
run. The packing tests check per-example losses of a packed row against each example alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .render import IGNORE as IGNORE_INDEX  # one -100 for the whole package


def _as_list(x: Any) -> list[int]:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _round_up(n: int, multiple: int | None) -> int:
    if not multiple:
        return n
    return ((n + multiple - 1) // multiple) * multiple


class Collator:
    """Build a batch from tokenized examples (``input_ids``, ``labels``; other keys are ignored).

    Args:
        pad_token_id: id written into padded positions of ``input_ids``. Padding is never recognised
            by this id afterwards (it may equal a real token such as EOS): ``attention_mask`` is set by
            position and pad labels are -100.
        packing: False = right-pad to the longest example (dynamic padding) and return
            ``attention_mask``; True = flatten the batch into one row with ``position_ids`` restarting
            at 0 per example and no ``attention_mask`` (padding-free; the model isolates examples).
        pad_to_multiple_of: round the padded length (or the packed row) up to this multiple. In
            packed mode the filler tokens form their own segment (positions 0..k, labels -100), so
            they attend to nothing real and nothing attends to them.
        trained_logits_only: also return ``logits_to_keep`` (bool, batch x length: the positions whose
            next token is trained) and ``shift_labels`` (those next tokens, flattened row by row).
            transformers 5 causal LMs then run the output projection and the cross-entropy only at
            those positions (``slice_logits_to_keep``; the loss uses ``shift_labels`` as given) instead
            of over every position x the whole vocabulary. Same loss and gradients; on chat data where
            the prompt is most of the tokens it removes most of the lm_head + softmax work.

    Returns (from ``__call__``):
        dict of int64 tensors: ``input_ids``, ``labels``, and ``attention_mask`` or ``position_ids``,
        each of shape (batch, length), batch = 1 when packing; plus ``logits_to_keep`` and
        ``shift_labels`` with `trained_logits_only`. Packed batches also hold ``use_cache=False`` (a
        KV cache would turn the per-example masking off). When the features carry ``where`` (the source
        "file:line" each dataset row keeps), the batch holds their list under ``where``: not a model
        input, `chattune.train.hf_trainer.ExactTrainer` takes it off before the forward.
    """

    def __init__(self, pad_token_id: int, *, packing: bool = False, pad_to_multiple_of: int | None = None,
                 trained_logits_only: bool = False):
        if pad_token_id is None:
            raise ValueError("Collator needs a pad_token_id (the tokenizer has none: set tokenizer.pad_token)")
        self.pad_token_id = int(pad_token_id)
        self.packing = packing
        self.pad_to_multiple_of = pad_to_multiple_of
        self.trained_logits_only = trained_logits_only

    def __call__(self, features: Sequence[dict]) -> dict[str, Any]:
        if not features:
            raise ValueError("Collator got an empty batch")
        ids = [_as_list(f["input_ids"]) for f in features]
        labels = [_as_list(f["labels"]) if "labels" in f else list(x) for f, x in zip(features, ids)]
        for i, (a, b) in enumerate(zip(ids, labels)):
            if len(a) != len(b):
                raise ValueError(f"example {i}: input_ids has {len(a)} tokens but labels has {len(b)}")
        batch: dict[str, Any] = self._pack(ids, labels) if self.packing else self._pad(ids, labels)
        if self.trained_logits_only:
            nxt = batch["labels"][:, 1:]
            keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
            keep[:, :-1] = nxt != IGNORE_INDEX
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = nxt[keep[:, :-1]]
        if all("where" in f for f in features):  # source rows, for error messages; the Trainer pops it
            batch["where"] = [f["where"] for f in features]
        return batch

    def _pad(self, ids: list[list[int]], labels: list[list[int]]) -> dict[str, torch.Tensor]:
        width = _round_up(max(len(x) for x in ids), self.pad_to_multiple_of)
        n = len(ids)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        out_labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for row, (x, y) in enumerate(zip(ids, labels)):
            k = len(x)
            input_ids[row, :k] = torch.tensor(x, dtype=torch.long)
            out_labels[row, :k] = torch.tensor(y, dtype=torch.long)
            attention_mask[row, :k] = 1
        return {"input_ids": input_ids, "labels": out_labels, "attention_mask": attention_mask}

    def _pack(self, ids: list[list[int]], labels: list[list[int]]) -> dict[str, Any]:
        flat_ids: list[int] = []
        flat_labels: list[int] = []
        positions: list[int] = []
        for x, y in zip(ids, labels):
            flat_ids += x
            # The model shifts labels by one: label[start] would be predicted from the previous example's
            # last token. -100 there keeps every prediction inside its own example.
            flat_labels += [IGNORE_INDEX] + y[1:]
            positions += range(len(x))
        filler = _round_up(len(flat_ids), self.pad_to_multiple_of) - len(flat_ids)
        if filler:
            flat_ids += [self.pad_token_id] * filler
            flat_labels += [IGNORE_INDEX] * filler
            positions += range(filler)
        as_row = lambda v: torch.tensor(v, dtype=torch.long).unsqueeze(0)  # noqa: E731 — a one-line local helper, used thrice just below
        return {"input_ids": as_row(flat_ids), "labels": as_row(flat_labels), "position_ids": as_row(positions),
                "use_cache": False}

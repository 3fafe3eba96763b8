"""The tensors of continuous batching: rows that decode together over one KV cache, joining and leaving
between steps.

Own code rather than transformers' `ContinuousBatchingManager` (``generate_batch``, paged cache): it
does run on CPU with a peft-wrapped model, but it fixes greedy vs sampling and the sampler's seed per
manager (one RNG for every row), so a batch could not mix greedy and sampled requests nor honour a
request's ``seed``; it packs every row into one flat sequence, so peft cannot pick a LoRA adapter per
row (``adapter_names``) for several runs on one base; and its default paged cache sizes itself from
free memory and allocates it all before the first token (slow on a CPU machine).

Layout: each row's newest token is in the last column; ``mask`` marks real tokens; each row has its own
position counter, so padding shifts no position. Newcomers are prefilled as their own small group
(`Prefill`: their shared prefix once, the rest left-padded after it, in chunks of a token budget so
running rows keep getting steps) and then joined: the shorter side is padded on the left and the
caches are concatenated along the batch dimension. A row that leaves is dropped with
`DynamicCache.batch_select_indices`; columns that have become padding for every row are cut off.
Only plain full-attention caches (`DynamicLayer`) are rebuilt this way; the engine refuses others.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .batching import keep_last, left_pad

TRIM_AT = 32  # left columns that are padding for every row before they are cut (each cut copies the cache)


def forward(model, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache, adapters: list[str] | None):
    """Last-position logits (float32) of one forward over `ids` appended to `cache` (which grows)."""
    kw = {"adapter_names": adapters} if adapters is not None else {}
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                    logits_to_keep=keep_last(), **kw)
    except TypeError:  # an architecture without logits_to_keep
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                    **kw)
    return out.logits[:, -1].float()


def plain_layers(cache) -> bool:
    """Whether every layer of `cache` is a plain full-attention `DynamicLayer` (what `Rows` can rebuild)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _rebuild(kv: list[tuple[torch.Tensor, torch.Tensor]]):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=kv)


class Prefill:
    """New rows being prefilled together, a chunk of columns per `advance`.

    The prefix every row shares (typically the system prompt and the template's header) is computed once,
    for one row, and its cache repeated for all; the rest is left-padded after it, so a row reads
    ``[shared prefix | padding | own tokens]`` (the mask hides the padding, positions skip it).

    Args:
        model: the causal LM.
        prompts: the rows' prompt ids.
        pad: the pad token id.
        adapters: per-row adapter names for a multi-adapter peft model, else None.
    """

    def __init__(self, model, prompts: Sequence[list[int]], pad: int, adapters: list[str] | None):
        from transformers import DynamicCache

        device = next(model.parameters()).device
        self.model, self.adapters = model, adapters
        self.shared = shareable_prefix(prompts, adapters)
        own, own_mask = left_pad([p[self.shared:] for p in prompts], pad, device)
        head = torch.tensor([list(prompts[0][:self.shared])] * len(prompts), dtype=torch.long, device=device)
        self.ids = torch.cat([head.view(len(prompts), -1), own], dim=1)
        self.mask = torch.cat([torch.ones_like(head).view(len(prompts), -1), own_mask], dim=1)
        self.pos = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        self.col = 0

    def __len__(self) -> int:
        return self.ids.shape[0]

    def advance(self, budget: int) -> torch.Tensor | None:
        """Run the next columns (about `budget` tokens in all, at least one column); the rows' last logits
        once the prompts are done."""
        rows, width = self.ids.shape
        budget = max(1, budget)
        if self.col < self.shared:  # the shared prefix: one row's worth of work
            end = min(self.shared, self.col + budget)
            forward(self.model, self.ids[:1, self.col:end], self.mask[:1, :end], self.pos[:1, self.col:end],
                    self.cache, self.adapters[:1] if self.adapters else None)
            budget -= end - self.col
            self.col = end
            if end < self.shared:
                return None
            self.cache.batch_repeat_interleave(rows)
            if budget < rows:  # not one column of the rows' own tokens left in this chunk
                return None
        end = min(width, self.col + max(1, budget // rows))
        logits = forward(self.model, self.ids[:, self.col:end], self.mask[:, :end], self.pos[:, self.col:end],
                         self.cache, self.adapters)
        self.col = end
        return logits if end == width else None


def shareable_prefix(prompts: Sequence[list[int]], adapters: Sequence[str] | None) -> int:
    """The prefix `Prefill` computes once for all `prompts`: their `shared_prefix`, unless the rows run
    different adapters (then each row's prefix differs in value)."""
    return shared_prefix(prompts) if adapters is None or len(set(adapters)) == 1 else 0


def prefill_cost(prompts: Sequence[list[int]], adapters: Sequence[str] | None) -> int:
    """Token positions `Prefill` computes for `prompts`: the shared prefix once, then every row padded to
    the longest own part (the measure of a prefill chunk's budget)."""
    shared = shareable_prefix(prompts, adapters)
    return shared + len(prompts) * (max(len(p) for p in prompts) - shared)


def shared_prefix(prompts: Sequence[list[int]], least: int = 4) -> int:
    """Tokens every prompt starts with (0 for one prompt or fewer than `least`); each row keeps at least
    one token of its own, whose logits start its answer."""
    if len(prompts) < 2:
        return 0
    # The prefix common to a set of sequences is the one common to its lexicographic least and greatest
    # (compared in C, up to the first difference), so this walks one prompt in Python, not all of them.
    lo, hi = min(prompts), max(prompts)  # lists of ints compare element by element
    limit = min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and lo[n] == hi[n]:
        n += 1
    return n if n >= least else 0


class Rows:
    """The running rows: one KV cache, the attention mask, each row's next position and next input token."""

    def __init__(self, model):
        self.model = model
        self.clear()

    def clear(self) -> None:
        """Drop every row (and the cache)."""
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        self.pos = torch.zeros(0, dtype=torch.long)
        self.last = torch.zeros(0, dtype=torch.long)
        self.adapters: list[str] = []

    def __len__(self) -> int:
        return self.mask.shape[0]

    def join(self, done: Prefill, first: torch.Tensor) -> None:
        """Append the rows of a finished `Prefill`; `first` holds each new row's first generated token."""
        if not plain_layers(done.cache):
            raise TypeError("continuous batching needs a plain full-attention KV cache; this model's cache has "
                            f"{sorted({type(la).__name__ for la in done.cache.layers})}")
        new_pos = done.mask.sum(-1)
        new_adapters = done.adapters or [""] * len(done)
        if not len(self):
            self.cache, self.mask, self.pos, self.last = done.cache, done.mask, new_pos, first
            self.adapters = list(new_adapters)
            return
        width = max(self.mask.shape[1], done.mask.shape[1])

        def pad(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = width - t.shape[-dim_from_end]
            return t if missing == 0 else F.pad(t, (0, 0) * (dim_from_end - 1) + (missing, 0))

        kv = [(torch.cat([pad(k1, 2), pad(k2, 2)]), torch.cat([pad(v1, 2), pad(v2, 2)]))
              for (k1, v1, *_), (k2, v2, *_) in zip(self.cache, done.cache)]
        self.cache = _rebuild(kv)
        self.mask = torch.cat([pad(self.mask, 1), pad(done.mask, 1)])
        self.pos = torch.cat([self.pos, new_pos])
        self.last = torch.cat([self.last, first])
        self.adapters += new_adapters

    def step(self, multi_adapter: bool) -> torch.Tensor:
        """One decode step for every row; returns the next-token logits (float32, one row each)."""
        mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)
        logits = forward(self.model, self.last[:, None], mask, self.pos[:, None], self.cache,
                         self.adapters if multi_adapter else None)
        self.mask, self.pos = mask, self.pos + 1
        return logits

    def keep(self, index: list[int]) -> None:
        """Keep only the rows at `index` (in that order); cut columns that became padding for all of them."""
        if len(index) == len(self):
            return
        if not index:
            self.clear()
            return
        sel = torch.tensor(index, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(sel)
        self.mask, self.pos, self.last = self.mask[sel], self.pos[sel], self.last[sel]
        self.adapters = [self.adapters[i] for i in index]
        dead = int(self.mask.cumsum(-1).eq(0).sum(-1).min())  # leading all-padding columns
        if dead >= TRIM_AT:
            self.cache = _rebuild([(k[..., dead:, :], v[..., dead:, :]) for k, v, *_ in self.cache])
            self.mask = self.mask[:, dead:]


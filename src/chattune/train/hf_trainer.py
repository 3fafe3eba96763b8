"""``transformers.Trainer`` with the overrides exactness needs, and nothing else.

1. The length-grouped sampler is seeded from ``(seed, epoch)``. transformers 5 builds its
   ``LengthGroupedSampler`` without a generator, so each epoch's order comes from the global torch RNG,
   which a mid-epoch resume restores only *after* skipping the trained batches: a resume in epoch >= 2
   replayed epoch 1's order (one example trained twice, another never). `EpochSeededLengthSampler`
   draws epoch e's order from its own generator seeded with ``seed + e`` (as accelerate's
   ``SeedableRandomSampler`` does for random order), so the resumed epoch is the same permutation.
2. ``eval_loss`` is the mean over the eval set's trained tokens (what the training loss is per step and
   what ``chattune eval --metrics loss`` reports). transformers averages per-batch means weighted by a
   fixed batch size, so batches with more tokens counted less.
3. A NaN/inf loss stops the run at once, naming the step, the batch's source rows (the batch's
   ``where``, taken off before the forward), the last checkpoint saved before it and what clipping and
   loss scaling did (the Trainer would carry on and train every later step on NaN weights).

These are documented extension points of the Trainer ("subclass and override").
"""
from __future__ import annotations

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from ..data.collate import IGNORE_INDEX
from ..errors import ChattuneError


class EpochSeededLengthSampler(LengthGroupedSampler):
    """transformers' length grouping (random mega-batches, each sorted by length), with epoch e's order
    drawn from ``torch.Generator().manual_seed(seed + e)``: a pure function of (seed, epoch), whatever
    the global RNG holds. The Trainer calls `set_epoch` before each epoch (also on resume)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order `__iter__` yields."""
        self.epoch = int(epoch)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=gen))


def trained_token_count(inputs: dict) -> int:
    """Tokens whose loss a causal LM computes for a `chattune.data.collate.Collator` batch: the given
    ``shift_labels``, else labels shifted by one that are not -100."""
    if "shift_labels" in inputs:
        return int((inputs["shift_labels"] != IGNORE_INDEX).sum())
    return int((inputs["labels"][..., 1:] != IGNORE_INDEX).sum())


class ExactTrainer(Trainer):
    """A plain Trainer whose length-grouped order resumes exactly and whose eval loss is per token."""

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or self.args.world_size > 1:
            return super()._get_train_sampler(train_dataset)
        lengths = train_dataset[self.args.length_column_name]
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSeededLengthSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=list(lengths), seed=seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        where = inputs.pop("where", None)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise ChattuneError(self._non_finite_message(float(loss), where))
        return loss

    def _non_finite_message(self, value: float, where: list[str] | None) -> str:
        from ..rundir.checkpoints import resume_checkpoint

        step = self.state.global_step + 1  # the step being computed
        ckpt = resume_checkpoint(self.args.output_dir) if self.args.output_dir else None
        clip = self.args.max_grad_norm
        scaler = getattr(self.accelerator, "scaler", None)
        rows = ", ".join(where[:16]) + (f" and {len(where) - 16} more" if len(where) > 16 else "") if where else "unknown"
        return (f"loss is {value} at step {step} (epoch {self.state.epoch or 0:.2f}); training stopped. "
                f"This micro-batch's examples: {rows}. "
                f"Last checkpoint before it: {ckpt.name if ckpt else 'none'}"
                + (" (resume with --resume once the cause is fixed). " if ckpt else ". ")
                + (f"train.max_grad_norm={clip} clips gradients after a finite loss; it cannot repair this one. "
                   if clip else f"train.max_grad_norm={clip} (clipping off): gradients were applied unclipped. ")
                + (f"loss scaling: fp16 scale {scaler.get_scale():g} (it skips steps whose gradients overflow, "
                   "not a non-finite loss). " if scaler is not None else
                   "loss scaling: off (bf16/fp32 need none). ")
                + "Usual causes: train.lr too high, an fp16 overflow (try bf16), or a broken example above.")

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._token_loss = [0.0, 0]  # (sum of per-token losses, tokens) over this evaluation
        out = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        total = torch.tensor(self._token_loss, dtype=torch.float64, device=self.args.device)
        if self.args.world_size > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        if total[1] > 0:
            out.metrics[f"{metric_key_prefix}_loss"] = float(total[0] / total[1])
        return out

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop("where", None)
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        n = trained_token_count(inputs) if "labels" in inputs else 0
        # the model divided its summed loss by exactly these n tokens (num_items_in_batch)
        if loss is not None and n and hasattr(self, "_token_loss"):
            self._token_loss[0] += float(loss) * n
            self._token_loss[1] += n
        return loss, logits, labels

"""How the next token of an answer is picked: the run's generation_config merged with the request's
settings, exactly as transformers' `generate` applies them. One policy for `Generator` (chat, predict,
eval, merge checks) and for the rows of the hf engine's continuous batch.

* `generate_kwargs`: what `Generator` passes to `generate` (the request's temperature/top_p over the
  run's generation_config; everything else the config carries applies as it is).
* `run_generation_config`: the run's generation_config in force while transformers builds or generates.
  Runs added to one model (adapters of one base in the hf engine) share it, and transformers reads the
  config from the model, which holds the first run's.
* `default_sampling`: (temperature, top_p) for a request that omits them, every engine's.
* `RowSampler`: one row of a continuous batch. Its logits processors are the ones `generate` builds for
  that conversation alone, fed the row's own ids (prompt + answer so far; never the batch's left
  padding), then argmax (greedy) or a draw from the row's own `torch.Generator`, as `generate` does.
  A greedy row that needs no processor gets no sampler: the batch's argmax is its token (fast path).
* `unservable`: what a generation_config asks that one row of a batch cannot do (beam search, guidance,
  several sequences, a time limit, ...), refused by name when the engine starts.
* `token_fields`: every field of a generation_config that changes which token comes next, for the
  engines that run outside transformers (vLLM, llama.cpp): each maps the ones its sampler applies the
  same way and refuses the rest by name.

The processor list comes from transformers' own builder (``GenerationMixin._get_logits_processor``, with
the two preparation steps `generate` runs before it) rather than from a list kept here: it is the only
place that knows every field's processor, its order and its arguments (prompt length for
min_new_tokens, the padding-free prompt for repetition_penalty, max_length for forced_eos), and it has
no public equivalent. `tests/infer/test_serve_sampling.py` pins the result to `generate`'s answers.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import ChattuneError

# Fields that make `generate` decode other than one greedy or sampled sequence (generation modes).
_MODE_FIELDS = ("num_beams", "num_beam_groups", "penalty_alpha", "constraints", "force_words_ids",
                "prompt_lookup_num_tokens", "assistant_early_exit", "use_mtp", "dola_layers")
# Fields whose effect is outside a row's logits: (field, the value that means "off", what it would do).
_OUTSIDE_ROW: tuple[tuple[str, tuple, str], ...] = (
    ("guidance_scale", (None, 1, 1.0), "classifier-free guidance runs a second forward per token"),
    ("num_return_sequences", (None, 1), "several answers per prompt"),
    ("max_time", (None,), "a wall-clock limit on each answer"),
    ("stop_strings", (None, [], ()), "stop strings (send `stop` with the request instead)"),
    ("token_healing", (None, False), "rewrites the prompt's last tokens"))


# generation_config fields that change which token comes next, with the values that leave it unchanged
# (None: unset). The engines outside transformers read this table; the hf engine needs none (module doc).
_TOKEN_FIELDS: dict[str, tuple] = {
    "repetition_penalty": (None, 1, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None, []),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,), "suppress_tokens": (None, []), "begin_suppress_tokens": (None, []),
    "sequence_bias": (None, {}), "watermarking_config": (None,),
    # warpers: sampling only
    "top_k": (None, 0), "min_p": (None, 0, 0.0), "typical_p": (None, 1, 1.0),
    "epsilon_cutoff": (None, 0, 0.0), "eta_cutoff": (None, 0, 0.0), "top_h": (None,),
    # decoding modes and what acts outside a row's logits
    "num_beams": (None, 1), "num_beam_groups": (None, 1), "penalty_alpha": (None, 0, 0.0), "constraints": (None,),
    "force_words_ids": (None,), "prompt_lookup_num_tokens": (None,), "assistant_early_exit": (None,),
    "use_mtp": (None, False), "dola_layers": (None,),
    **{name: off for name, off, _ in _OUTSIDE_ROW},
}


def token_fields(gc) -> dict[str, Any]:
    """The fields of generation config `gc` that change which token comes next (set to a value other than
    one that leaves it unchanged), by name: what an engine outside transformers must apply or refuse.
    temperature, top_p and the EOS ids are not listed: every engine takes them from the request and the run."""
    if gc is None:
        return {}
    return {name: getattr(gc, name) for name, off in _TOKEN_FIELDS.items()
            if getattr(gc, name, None) not in off}


@contextmanager
def run_generation_config(model, gc) -> Iterator[None]:
    """`gc` (a run's `GenerationConfig`; None: the model's own) is `model`'s generation config inside the block.

    transformers' `generate` and its processor builders read the config from the model, and a model shared by
    several runs holds the first run's (`rundir.load.load_adapter_into`); without this a second run would
    sample with the first run's repetition_penalty, top_k, .... The block must not overlap another use of
    the model from another thread (the hf engine's model loop is the only thread that builds or generates).
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft reads the base's
    held = getattr(inner, "generation_config", None)
    if gc is None or gc is held:
        yield
        return
    inner.generation_config = gc
    try:
        yield
    finally:
        inner.generation_config = held


def default_sampling(gc) -> tuple[float, float]:
    """(temperature, top_p) for a request that omits them: run's generation config `gc` when it samples,
    else OpenAI's defaults (1, 1)."""
    if gc is not None and getattr(gc, "do_sample", False):
        return float(gc.temperature if gc.temperature is not None else 1.0), float(gc.top_p or 1.0)
    return 1.0, 1.0


def generate_kwargs(gc, eos_token_ids: Sequence[int], pad_token_id: int, max_new_tokens: int,
                    temperature: float, top_p: float) -> dict[str, Any]:
    """The keyword arguments `generate` gets on top of the run's generation config `gc` (the one sampling
    policy; `run_generation_config` puts `gc` in force).

    Greedy at temperature 0: the sampling fields a Hub config may carry (Qwen3: temperature 0.6, top_k 20)
    are switched off, so greedy really is greedy. Sampling: the request's temperature and top_p; top_k is
    the run's own (None when its config sets none, never transformers' fallback of 50, which OpenAI
    clients do not expect). Every other field of the config (repetition_penalty, min_p, ...) applies as is.

    Raises:
        ChattuneError: max_new_tokens < 1, temperature < 0 or top_p outside (0, 1].
    """
    if max_new_tokens < 1:
        raise ChattuneError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ChattuneError(f"temperature must be >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    kw: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "eos_token_id": list(eos_token_ids),
                          "pad_token_id": pad_token_id}
    if temperature == 0:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        own = getattr(gc, "top_k", None)
        kw.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=own)
    return kw


def unservable(model, run_gc, kwargs: dict[str, Any]) -> list[str]:
    """What `generate` would do with `kwargs` over the run's generation config `run_gc` that a row of a
    continuous batch cannot (empty: everything is honoured), each as ``field=value (what it does)``."""
    with run_generation_config(model, run_gc):
        gc, _ = model._prepare_generation_config(None, **kwargs)
    found = []
    mode = gc.get_generation_mode()
    if mode.value not in ("greedy_search", "sample"):
        set_ = [f"{f}={getattr(gc, f)!r}" for f in _MODE_FIELDS if getattr(gc, f, None) not in (None, 1, False, 0)]
        found.append(f"{', '.join(set_) or 'its settings'} ({mode.value}; one greedy or sampled answer per row)")
    for name, off, what in _OUTSIDE_ROW:
        value = getattr(gc, name, None)
        if value not in off:
            found.append(f"{name}={value!r} ({what})")
    return found


def processors(model, run_gc, kwargs: dict[str, Any], prompt_len: int, device: torch.device):
    """The `LogitsProcessorList` `generate` builds for one prompt of `prompt_len` tokens with `kwargs` over
    the run's generation config `run_gc`."""
    # generate's own steps, in its order: merge the config, tensors for the special tokens, lengths from
    # max_new_tokens / min_new_tokens, then the list (see the module doc for why the private builder).
    with run_generation_config(model, run_gc):
        gc, _ = model._prepare_generation_config(None, **kwargs)
        model._prepare_special_tokens(gc, kwargs_has_attention_mask=True, device=device)
        own = model.generation_config
        gc = model._prepare_generated_length(gc, has_default_max_length=own.max_length is None,
                                             has_default_min_length=own.min_length is None,
                                             model_input_name="input_ids", input_ids_length=prompt_len,
                                             inputs_tensor=None)
        mask = torch.ones(1, prompt_len, dtype=torch.long, device=device)  # one row alone: no padding
        return model._get_logits_processor(gc, input_ids_seq_length=prompt_len, device=device,
                                           model_kwargs={"attention_mask": mask})


class RowSampler:
    """One row's next-token choice, as `generate` makes it for that conversation alone (module doc).

    Args:
        procs: the row's logits processors (`processors`).
        prompt: its prompt ids.
        max_new_tokens: its answer's limit (the ids buffer holds prompt + answer).
        rng: its generator when it samples; None: greedy.
    """

    def __init__(self, procs, prompt: Sequence[int], max_new_tokens: int, rng: torch.Generator | None,
                 device: torch.device):
        self.procs, self.rng = procs, rng
        self.ids = torch.empty(1, len(prompt) + max_new_tokens, dtype=torch.long, device=device)
        self.ids[0, :len(prompt)] = torch.tensor(list(prompt), dtype=torch.long)
        self.n = len(prompt)

    def next(self, logits: torch.Tensor) -> int:
        """The token after the row's ids, given its next-token `logits` (1, vocab) float32; it is added to
        the row's ids."""
        scores = self.procs(self.ids[:, :self.n], logits)
        if self.rng is None:
            tok = int(scores.argmax(-1)[0])
        else:
            tok = int(torch.multinomial(scores.softmax(-1), 1, generator=self.rng)[0, 0])
        self.ids[0, self.n] = tok
        self.n += 1
        return tok


def row_sampler(model, run_gc, kwargs: dict[str, Any], prompt: Sequence[int], rng: torch.Generator | None,
                device: torch.device) -> RowSampler | None:
    """The `RowSampler` of a row of the run with generation config `run_gc` generating with `kwargs`
    (`generate_kwargs`), or None for a greedy row that needs no processor (the batch's argmax is its token)."""
    procs = processors(model, run_gc, kwargs, len(prompt), device)
    if rng is None and not len(procs):
        return None
    return RowSampler(procs, prompt, kwargs["max_new_tokens"], rng, device)


def pick(logits: torch.Tensor, samplers: Sequence[RowSampler | None]) -> torch.Tensor:
    """The next token of each row of a batch: its sampler's choice, or the argmax (rows without one)."""
    out = logits.argmax(-1)
    for i, s in enumerate(samplers):
        if s is not None:
            out[i] = s.next(logits[i:i + 1])
    return out

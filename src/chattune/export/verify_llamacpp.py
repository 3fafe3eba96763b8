"""Prove a GGUF behaves like the run: tokenization, template and greedy-answer parity against chattune.

* Tokenization: llama.cpp's tokenizer (from the GGUF) vs the run's HF tokenizer on every rendered
  conversation of the run's data (capped): identical ids, or the first differing text.
* Template: the prompt llama-cpp-python's Jinja chat formatter renders from the GGUF's embedded template
  vs `apply_chat_template(add_generation_prompt=True)` on the run's conversations: identical text.
* Behaviour: greedy answers of llama.cpp vs chattune's `Generator` on held-out prompts. A difference is
  explained as a tie only where the HF margin between the two tokens at the first differing step is within
  twice the two engines' largest logit difference at that step (rounding can flip a near-tie; a broken
  export cannot hide behind that rule).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .llamacpp import require_binding
from .stage import RunFacts


@dataclass(frozen=True)
class Parity:
    """One parity check: `matched` of `total` items agree; `first_mismatch` shows the first that does not."""

    name: str
    total: int
    matched: int
    first_mismatch: str | None = None
    detail: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.matched == self.total

    @property
    def percent(self) -> float:
        return 100.0 * self.matched / self.total if self.total else 0.0


def text_parity(name: str, engine: str, got: list[str], want: list[str]) -> Parity:
    """Compare rendered prompts text for text; the first mismatch shows 40 characters of each side."""
    matched, first = 0, None
    for g, w in zip(got, want):
        if g == w:
            matched += 1
        elif first is None:
            k = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            first = f"char {k}: {engine} {g[k:k + 40]!r} vs HF {w[k:k + 40]!r}"
    return Parity(name, len(want), matched, first)


def _messages(convs) -> list[list[dict]]:
    return [list(c.messages) for c in convs]


def prompt_prefixes(conversations: list[list[dict]]) -> list[list[dict]]:
    """Every prefix of each conversation that ends with a user turn (what a user sends at each turn)."""
    out = []
    for msgs in conversations:
        for i, m in enumerate(msgs):
            if m["role"] == "user":
                out.append(msgs[:i + 1])
    return out


def tokenization_parity(gguf: Path, tokenizer, facts: RunFacts, conversations: list[list[dict]]) -> Parity:
    """llama.cpp vs HF token ids of each conversation rendered by the run's template (as trained)."""
    from ..data.render import prepare_messages
    from .gguf import load_vocab_only

    texts = [tokenizer.apply_chat_template(prepare_messages(m, facts.thinking), tokenize=False,
                                           **facts.template_kwargs) for m in conversations]
    hf = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    llm = load_vocab_only(gguf)
    matched, first = 0, None
    try:
        for text, want in zip(texts, hf):
            got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if list(got) == list(want):
                matched += 1
            elif first is None:
                k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                first = (f"token {k}: llama.cpp {got[k:k + 4]} vs HF {want[k:k + 4]} at "
                         f"{tokenizer.decode(want[max(0, k - 8):k + 4])!r}")
    finally:
        llm.close()
    return Parity("tokenization", len(texts), matched, first)


def template_parity(gguf_template: str, tokenizer, facts: RunFacts, prompts: list[list[dict]], *,
                    bos: str, eos: str) -> Parity:
    """llama-cpp-python's Jinja formatter on the GGUF's template vs the run's apply_chat_template text.

    The thinking policy is passed as the same kwargs chattune uses (llama.cpp users pass them with
    `--chat-template-kwargs`; the README's command for the export says so).
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from ..data.render import prepare_messages

    fmt = Jinja2ChatFormatter(template=gguf_template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
    prepared = [prepare_messages(p, facts.thinking) for p in prompts]
    want = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False, **facts.template_kwargs)
            for m in prepared]
    got = [fmt(messages=cast(Any, m), **facts.template_kwargs).prompt for m in prepared]  # plain dicts: its TypedDicts
    return text_parity("template (llama.cpp)", "llama.cpp", got, want)


def _llama_greedy(llm, llama_cpp, prompt: list[int], eos: set[int], max_new_tokens: int):
    """Greedy decoding in llama.cpp, keeping each step's logits (argmax, first index on equal values)."""
    import numpy as np

    llm.reset()
    llm.eval(prompt)
    n_vocab = llm.n_vocab()
    out, steps = [], []
    for _ in range(max_new_tokens):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).copy()
        tok = int(logits.argmax())
        out.append(tok)
        steps.append(logits)
        if tok in eos:
            break
        llm.eval([tok])
    return out, steps


def _hf_logits(generator, ids: list[int]):
    import torch

    with torch.no_grad():
        t = torch.tensor([ids], device=generator.device)
        return generator.model(input_ids=t).logits[0, -1].float().cpu().numpy()


def behaviour_parity(gguf: Path, generator, prompts: list[list[dict]], *, max_new_tokens: int = 32,
                     tie_tolerance: float = 0.05, threads: int | None = None,
                     lora: Path | None = None) -> tuple[Parity, list[str], list[str]]:
    """Greedy answers of llama.cpp on the GGUF vs chattune's `Generator` (the run as trained).

    Both sides are compared as generated token ids. At the first differing step k (same prefix on both
    sides) llama.cpp can only have picked another token than HF if HF's margin there is within what the two
    engines' logits differ by at that step: margin(HF) <= |d(hf token)| + |d(llama.cpp token)| <= 2 * max|d|.
    Such a difference is a tie (rounding flipped a near-equal pair) when max|d| is also rounding-sized: at
    most `tie_tolerance` of the spread of HF's logits there (f16 weights move a 30-layer model's logits by
    under 1% of their spread; a model llama.cpp computes differently moves them by 15% and more).

    Args:
        lora: a GGUF LoRA applied on top of `gguf` (llama.cpp's `--lora`).

    Returns:
        (Parity whose matched counts identical answers plus differences explained by a logit tie,
         llama.cpp answers, HF answers) — the answers (decoded the same way) feed the task metric.
    """
    llama_cpp = require_binding()
    ids = [generator.prompt_ids(p) for p in prompts]
    n_ctx = max(len(i) for i in ids) + max_new_tokens + 8
    eos = set(generator.eos_token_ids)
    # HF's own generated ids: its text re-tokenized is not always them (a random adapter's text splits
    # differently), which put the step, margin and logits of a difference at the wrong position
    # (both keep the end-of-turn token that ended them: stopping early is a choice like any other token)
    hf_ids = generator.generate_ids(ids, max_new_tokens=max_new_tokens)

    def decode(row: list[int]) -> str:
        return generator.tokenizer.decode([t for t in row if t not in eos], skip_special_tokens=True)

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=max(n_ctx, 64), n_batch=max(n_ctx, 64), verbose=False,
                          seed=0, lora_path=str(lora) if lora else None,
                          **({"n_threads": threads} if threads else {}))
    same = ties = 0
    rows, answers = [], []
    try:
        for i, (p_ids, want) in enumerate(zip(ids, hf_ids)):
            got, steps = _llama_greedy(llm, llama_cpp, p_ids, eos, max_new_tokens)
            answers.append(decode(got))
            if got == want:
                same += 1
                continue
            k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            row: dict[str, Any] = {"prompt": i, "hf": decode(want), "llama_cpp": answers[-1], "step": k, "tie": False}
            if k < len(got) and k < len(want):  # else one side hit max_new_tokens sooner (cannot happen)
                lh = _hf_logits(generator, p_ids + want[:k])
                ll = steps[k]
                n = min(len(lh), len(ll))
                margin = float(lh[want[k]] - lh[got[k]])
                local = float(abs(lh[:n] - ll[:n]).max())
                spread = float(lh.max() - lh.min())
                row.update(hf_token=want[k], llama_cpp_token=got[k], margin=margin, max_abs_logit_diff=local,
                           logit_spread=spread, tie=margin <= 2 * local and local <= tie_tolerance * spread)
            ties += row["tie"]
            rows.append(row)
    finally:
        llm.close()
    first = None
    bad = [r for r in rows if not r["tie"]]
    if bad:
        first = f"HF {bad[0]['hf']!r} vs llama.cpp {bad[0]['llama_cpp']!r} (step {bad[0]['step']})"
    par = Parity("greedy answers", len(prompts), same + ties, first,
                 {"identical": same, "ties": ties, "differences": rows, "max_new_tokens": max_new_tokens})
    return par, answers, [decode(w) for w in hf_ids]

"""Prove a vLLM bundle by serving it exactly as a user would: run its serve.sh, then ask the server.

vLLM pins its own torch/transformers, so it lives in its own venv (`vllm_launch`). The check starts the
bundle's own serve.sh (one server; `--dtype float32 --port P` appended, so it compares like with like
against chattune's float32 `Generator`), then for each held-out prompt:

* tokenization: `/tokenize` with the messages (and the adapter's name for a LoRA bundle) — vLLM renders
  them with the bundle's template and default template kwargs — must equal `Generator.prompt_ids`;
* behaviour: a greedy `/v1/chat/completions` must produce chattune's greedy token ids. A difference counts
  as a tie only where chattune's margin between the two tokens at the first differing step is below
  `tie_margin` (a float32 near-tie that summation order can flip); vLLM's own margin there is recorded.
"""
from __future__ import annotations

from pathlib import Path

from .stage import RunFacts
from .verify_llamacpp import Parity, _hf_logits
from .vllm_launch import VLLM_PYTHON_ENV, ServerSpec, VllmServer, free_port, vllm_env, vllm_python

DTYPE = "float32"


def _strip_eos(ids: list[int], eos: set[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in eos else ids


def _top(step: dict | None) -> dict[int, float]:
    """{token id: logprob} of one step of vLLM's logprobs (tokens come back as "token_id:N")."""
    out = {}
    for t in (step or {}).get("top_logprobs") or []:
        if str(t.get("token", "")).startswith("token_id:"):
            out[int(t["token"].split(":", 1)[1])] = float(t["logprob"])
    return out


def vllm_parity(bundle: Path, spec: ServerSpec, facts: RunFacts, generator, prompts: list[list[dict]], *,
                max_new_tokens: int = 32, tie_margin: float = 1e-3,
                ready_timeout: float = 900) -> list[Parity]:
    """Tokenization and greedy parity of the bundle's vLLM server vs chattune.

    Args:
        bundle: the export folder holding serve.sh.
        spec: what serve.sh serves (its served name is what requests ask for).
        prompts: held-out conversations ending before the answer.

    Returns:
        [tokenization parity, greedy parity] (details: identical, ties, each difference, dtype).

    Raises:
        ChattuneError: vLLM is missing, did not start, or answered with an HTTP error.
    """
    from ..data.render import prepare_messages

    # what chattune renders: the run's default system prompt first when a conversation has none
    convs = [prepare_messages(generator.renderer.with_system(p), facts.thinking) for p in prompts]
    want_ids = [generator.prompt_ids(p) for p in prompts]
    hf = generator.generate_ids(want_ids, max_new_tokens=max_new_tokens)
    env = vllm_env({VLLM_PYTHON_ENV: str(vllm_python())})
    port = free_port()
    tokens, answers = [], []
    with VllmServer(["bash", str(bundle / "serve.sh"), "--port", str(port), "--dtype", DTYPE], port=port, env=env,
                    ready_timeout=ready_timeout) as srv:
        for conv in convs:
            tokens.append(srv.post("/tokenize", {"model": spec.name, "messages": conv,
                                                 "add_generation_prompt": True})["tokens"])
            answers.append(srv.post("/v1/chat/completions", {
                "model": spec.name, "messages": conv, "temperature": 0.0, "max_tokens": max_new_tokens,
                "return_token_ids": True, "logprobs": True, "top_logprobs": 2, "return_tokens_as_token_ids": True,
                "skip_special_tokens": True})["choices"][0])
    tok_ok = [t == w for t, w in zip(tokens, want_ids)]
    first_tok = next((f"prompt {i}: vLLM {tokens[i][-8:]} vs chattune {want_ids[i][-8:]}"
                      for i, ok in enumerate(tok_ok) if not ok), None)
    eos = set(generator.eos_token_ids)
    decode = generator.tokenizer.decode
    same = ties = 0
    diffs = []
    for ids, want, a in zip(want_ids, hf, answers):
        got, want = _strip_eos(list(a["token_ids"]), eos), _strip_eos(want, eos)
        if got == want:
            same += 1
            continue
        k = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
        row = {"hf": decode(want, skip_special_tokens=True), "vllm": decode(got, skip_special_tokens=True),
               "step": k, "tie": False}
        if k < len(got) and k < len(want):
            lh = _hf_logits(generator, ids + want[:k])
            row["margin"] = float(lh[want[k]] - lh[got[k]])
            steps = (a.get("logprobs") or {}).get("content") or []
            top = _top(steps[k] if k < len(steps) else None)
            if want[k] in top and got[k] in top:
                row["vllm_margin"] = top[got[k]] - top[want[k]]
            row["tie"] = row["margin"] <= tie_margin
        ties += row["tie"]
        diffs.append(row)
    bad = next((d for d in diffs if not d["tie"]), None)
    answered = sum(bool(a["token_ids"]) for a in answers)
    return [Parity("tokenization (vLLM /tokenize)", len(tokens), sum(tok_ok), first_tok),
            Parity(f"greedy answers (vLLM, {DTYPE})", len(answers), same + ties,
                   f"HF {bad['hf']!r} vs vLLM {bad['vllm']!r} (step {bad['step']})" if bad else None,
                   {"identical": same, "ties": ties, "differences": diffs, "max_new_tokens": max_new_tokens,
                    "dtype": DTYPE, "answered": answered})]

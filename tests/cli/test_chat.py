"""`chattune chat` driven through a pipe, plus ChatSession history rules.

The scripted model answers according to the OLDEST trigger word in the conversation, so whether the
history was kept, cleared or prefixed by a system prompt shows in the answers.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.infer.test_generate import SCRIPTS, scripted_model_dir

CHATTUNE = Path(sys.executable).with_name("chattune")


def test_chat_repl_through_a_pipe(tmp_path_factory, qwen3_tokenizer_dir):
    model = scripted_model_dir(tmp_path_factory, qwen3_tokenizer_dir)
    lines = ["gamma", "alpha", "/reset", "alpha", "/system epsilon", "beta", "/system", "/reset", "beta",
             "/bogus", "/reset", "delta", "/exit", "alpha"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(CHATTUNE), "chat", str(model), "--temperature", "0", "--max-new-tokens", "12"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, encoding="utf-8",
                          timeout=240, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out == [
        SCRIPTS["gamma"],
        SCRIPTS["gamma"],              # history kept: gamma is still the first thing said
        "[history cleared]",
        SCRIPTS["alpha"],
        "[system prompt set]",
        SCRIPTS["epsilon"],            # the system prompt now comes first in the conversation
        "[system prompt removed]",
        "[history cleared]",
        "one two three four five six seven eight nine ten",
        out[9],
        "[history cleared]",
        "ping" + " pong ping" * 5 + " pong [cut at --max-new-tokens 12]",
    ]
    assert out[9].startswith("[unknown command /bogus")
    assert "ready" in proc.stderr


def test_chat_session_system_prompt_and_reset(tmp_path_factory, qwen3_tokenizer_dir):
    from chattune.infer.chat import ChatSession
    from chattune.infer.generate import Completion, Generator

    gen = Generator.from_path(scripted_model_dir(tmp_path_factory, qwen3_tokenizer_dir))
    s = ChatSession(gen, system="epsilon", max_new_tokens=20, temperature=0.0)
    parts = list(s.send("alpha"))
    assert "".join(p for p in parts if isinstance(p, str)) == SCRIPTS["epsilon"]  # the system prompt comes first
    assert isinstance(parts[-1], Completion)
    assert s.messages == [{"role": "system", "content": "epsilon"}, {"role": "user", "content": "alpha"},
                          {"role": "assistant", "content": SCRIPTS["epsilon"]}]
    s.set_system("")
    s.reset()
    assert s.messages == []
    # An abandoned reply does not join the history.
    it = s.send("delta")
    next(it)
    it.close()
    assert s.messages == []

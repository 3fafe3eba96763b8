"""Runs INSIDE vLLM's own venv (it imports vllm, never chattune): answer prompts with vLLM's offline engine.

Input (stdin, JSON): {"model", "conversations", "max_new_tokens", "max_model_len", "chat_template",
"chat_template_kwargs", "generation_config", "lora": null | {"name", "path", "rank"}}. Output (stdout, the
line starting with MARK, JSON): one {"prompt_token_ids", "token_ids", "text"} per conversation. The prompt
ids are what vLLM's engine rendered and tokenized itself (the same path its OpenAI server takes), the rest
its greedy answer.
"""
from __future__ import annotations

import json
import sys

MARK = "CHATTUNE_VLLM_RESULT "


def main() -> None:
    req = json.load(sys.stdin)
    from vllm import LLM, SamplingParams

    kwargs = {}
    if req.get("lora"):
        kwargs = {"enable_lora": True, "max_lora_rank": req["lora"]["rank"], "max_loras": 1}
    llm = LLM(model=req["model"], dtype="float32", max_model_len=req["max_model_len"], seed=0,
              generation_config=req["generation_config"], enforce_eager=True, **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=req["max_new_tokens"], skip_special_tokens=True)
    lora = None
    if req.get("lora"):
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(req["lora"]["name"], 1, req["lora"]["path"])
    outs = llm.chat(req["conversations"], params, chat_template=req["chat_template"], lora_request=lora,
                    chat_template_kwargs=req["chat_template_kwargs"] or None, add_generation_prompt=True)
    rows = [{"prompt_token_ids": list(o.prompt_token_ids), "token_ids": list(o.outputs[0].token_ids),
             "text": o.outputs[0].text} for o in outs]
    print(MARK + json.dumps(rows), flush=True)  # vLLM prints its own progress on stdout too


if __name__ == "__main__":
    main()

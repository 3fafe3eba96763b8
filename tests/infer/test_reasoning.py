"""thinking: keep — reasoning is split from the answer wherever text comes back (issue 14, item 4).

A hand-wired bigram Qwen3 (each token's embedding is one-hot, every layer writes nothing, lm_head maps a
token to the next of a fixed chain) answers the thinking prompt with ``<think>hmm</think>Paris.`` exactly,
so evaluation, predict and the server are checked on a known output.
"""
from __future__ import annotations

import json
import random

import openai
import pytest

from chattune.infer.reasoning import ReasoningStream, split_reasoning

ANSWER = "Paris."


def build_thinking_bigram(tok):
    """A tiny Qwen3 that answers the Qwen3 thinking prompt (ending "assistant\\n") with <think>hmm</think>Paris."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    end = tok.convert_tokens_to_ids("<|im_end|>")
    chain = [tok.encode("\n")[0], *tok.encode("<think>hmm</think>" + ANSWER), end]
    assert len(set(chain)) == len(chain), chain
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False,
                      bos_token_id=None, eos_token_id=end, pad_token_id=tok.pad_token_id)
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:  # zero o_proj / down_proj: the residual stream is the embedding
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        model.model.embed_tokens.weight[:, 0] = 1.0  # every other token: dim 0 → no preference
        for i, (a, b) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[a].zero_()
            model.model.embed_tokens.weight[a, 1 + i] = 1.0
            model.lm_head.weight[b, 1 + i] = 10.0
    model.generation_config = GenerationConfig(eos_token_id=end, pad_token_id=tok.pad_token_id)
    return model, tok


@pytest.fixture(scope="module")
def gen(qwen3_tokenizer):
    from chattune.infer.generate import Generator

    model, tok = build_thinking_bigram(qwen3_tokenizer)
    return Generator(model, tok, name="think", thinking="keep")


def test_split_and_stream_agree_on_any_chunking():
    cases = {"<think>\nhmm, 2+2\n</think>\n\nFour.": ("hmm, 2+2", "Four."),
             "Four.": (None, "Four."),
             "<think>unfinished": ("unfinished", ""),
             "  <think></think>\n\n{\"a\": 1}": ("", '{"a": 1}'),
             "a <think> inside is just text": (None, "a <think> inside is just text")}
    rng = random.Random(0)
    for text, (reasoning, content) in cases.items():
        s = split_reasoning(text)
        assert (s.reasoning, s.content) == (reasoning, content), text
        for _ in range(20):  # stream deltas never retract and add up to the final split
            cuts = sorted(rng.sample(range(1, len(text)), min(4, len(text) - 1)))
            stream, got = ReasoningStream(), {"reasoning": "", "content": ""}
            for a, b in zip([0, *cuts], [*cuts, len(text)]):
                for kind, piece in stream.feed(text[a:b]):
                    got[kind] += piece
            for kind, piece in stream.finish():
                got[kind] += piece
            assert (got["reasoning"] or None if reasoning is None else got["reasoning"], got["content"]) == \
                (reasoning, content)
    # a prompt that opened the block: the model writes only the close
    assert split_reasoning("hmm</think>\n\nOK", opened=True) == split_reasoning("<think>hmm</think>OK")


def test_generation_eval_and_predict_score_the_answer_not_the_think_block(tmp_path, gen):
    from chattune.infer.evaluate import evaluate, predict

    c = gen.generate([[{"role": "user", "content": "Capital of France?"}]], max_new_tokens=16)[0]
    assert c.text == "<think>hmm</think>" + ANSWER and (c.reasoning, c.content) == ("hmm", ANSWER)
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"question": "Capital of France?", "answer": ANSWER}) + "\n", encoding="utf-8")
    res = evaluate(None, data, metrics=["exact", "contains"], max_new_tokens=16, generator=gen)
    assert res["metrics"]["exact"] == 1.0
    assert res["rows"][0]["output"] == ANSWER and res["rows"][0]["reasoning"] == "hmm"
    out = tmp_path / "p.jsonl"
    predict(None, data, out, max_new_tokens=16, generator=gen)
    row = json.loads(out.read_text(encoding="utf-8"))
    assert (row["output"], row["reasoning"]) == (ANSWER, "hmm")


def test_server_returns_reasoning_content_streaming_and_not(gen):
    from chattune.config import ServeConfig
    from chattune.infer.engine_hf import HfEngine
    from chattune.infer.serve import BackgroundServer, bind_socket, create_app

    with BackgroundServer(create_app(HfEngine([gen], ServeConfig()), ServeConfig()), bind_socket("127.0.0.1", 0)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        msgs = [{"role": "user", "content": "Capital of France?"}]
        r = client.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=16)
        m = r.choices[0].message
        assert (m.content, m.reasoning_content) == (ANSWER, "hmm")
        got = {"reasoning_content": "", "content": ""}
        for chunk in client.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=16,
                                                    stream=True):
            for d in chunk.choices:
                for k in got:
                    got[k] += getattr(d.delta, k, None) or ""
        assert got == {"reasoning_content": "hmm", "content": ANSWER}

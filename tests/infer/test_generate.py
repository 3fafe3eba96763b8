"""Generator: stopping, batching, streaming, stop strings, cancel — on a model whose output is known.

Random tiny models emit garbage and almost never end a turn, so most tests use a hand-wired tiny
Qwen3 (`build_scripted_qwen3`): its answer is a fixed token chain chosen by the FIRST trigger word
the user typed in the conversation (alpha/beta/gamma/delta), ending in <|im_end|> (delta cycles
forever). The wiring is real attention + RoPE + RMSNorm, so it runs through the same code as any
Qwen3. The random tiny model checks that left padding changes nothing when attention is dense.
"""
from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

# What each trigger word makes the scripted model answer (gamma ends in 龘, split over two byte tokens).
SCRIPTS = {
    "alpha": "Hello! How are you?",
    "beta": "one two three four five six seven eight nine ten",
    "gamma": "你好，世界！龘",
    "epsilon": '{"city": "北京"}',
}
CYCLE = ("ping", " pong", " ping")  # delta: "ping pong ping pong ..." never ends
TRIGGERS = (*SCRIPTS, "delta")
NEWLINES = 271  # Qwen3 "\n\n": the last prompt token after the empty <think></think> block


def build_scripted_qwen3(out_dir: Path | None, tokenizer_dir: Path, scripts: dict[str, str] | None = None,
                         continuations: dict[str, str] | None = None):
    """A tiny Qwen3 that deterministically answers with `scripts[trigger]` + <|im_end|>.

    Residual-stream layout: dim 0 = constant (every token), 1 = trigger flag, then one dim per trigger
    (which trigger a token is), one per trigger (which trigger the attention found), one identity dim per
    chain token. Layer 0, head 0 attends to trigger tokens only (key = trigger flag), preferring the OLDEST
    one via a slow RoPE pair, and copies its identity into the found dims; the MLPs and layer 1 write
    nothing. The untied lm_head maps the current token to its successor in the chains; where chains of
    different triggers continue one token differently (several tool calls share ``<tool_call>\n{"``), the
    found trigger's successor gets a bonus.

    Args:
        out_dir: folder to save model + tokenizer into (None: don't save).
        tokenizer_dir: the real Qwen3 tokenizer.
        scripts: trigger word (one token) → answer (default `SCRIPTS`, plus the never-ending delta cycle).
            Within one answer no token may repeat.
        continuations: text → what follows it whatever the trigger: when the prompt ends with the text's
            last token (e.g. a forced answer start), the model continues with this. Its tokens must have
            one successor across all chains.

    Returns:
        (model, tokenizer)
    """
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    end = tok.convert_tokens_to_ids("<|im_end|>")

    def one(text: str) -> int:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (text, ids)
        return ids[0]

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    cycle = scripts is None
    scripts = SCRIPTS if scripts is None else scripts
    words = (*scripts, "delta") if cycle else tuple(scripts)
    triggers = [one(w) for w in words]
    chains = [ids(scripts[w]) + [end] for w in scripts]
    # succ[a][b] = the triggers whose chain goes a -> b (None: a continuation, any trigger)
    succ: dict[int, dict[int, set[int | None]]] = {}
    for i, chain in enumerate(chains):
        assert len(set(chain)) == len(chain), f"a token repeats in the answer to {words[i]!r}"
        for a, b in itertools.pairwise(chain):
            succ.setdefault(a, {}).setdefault(b, set()).add(i)
    for text, cont in (continuations or {}).items():
        chain = [ids(text)[-1], *ids(cont), end]
        for a, b in itertools.pairwise(chain):
            succ.setdefault(a, {}).setdefault(b, set()).add(None)
    if cycle:
        cyc = [one(t) for t in CYCLE]
        chains.append(cyc)
        for a, b in ((cyc[0], cyc[1]), (cyc[1], cyc[2]), (cyc[2], cyc[1])):
            succ.setdefault(a, {}).setdefault(b, set()).add(len(chains) - 1)
    for a, nexts in succ.items():
        assert len(nexts) == 1 or all(None not in who for who in nexts.values()), \
            f"token {tok.decode([a])!r} continues differently, and a continuation cannot tell which"
    n = len(words)
    which, found, first_ident = 2, 2 + n, 2 + 2 * n
    tokens = sorted({NEWLINES, *succ, *(b for nexts in succ.values() for b in nexts)})
    ident = {t: first_ident + i for i, t in enumerate(tokens)}
    hidden = max(64, -(-(first_ident + len(ident)) // 16) * 16)
    assert n <= 16, "head 0 carries one value dim per trigger"
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=end,
                      pad_token_id=tok.pad_token_id, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = Qwen3ForCausalLM(cfg).eval()

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.model.norm, *(m for layer in model.model.layers for m in (
                layer.input_layernorm, layer.post_attention_layernorm))):
            norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 1.0
        for i, t in enumerate(triggers):
            emb[t, 1] = 1.0
            emb[t, which + i] = 1.0
        for t, d in ident.items():
            emb[t, d] = 1.0
        attn = model.model.layers[0].self_attn
        # Head 0 uses two RoPE pairs: dim 7 (slowest, ~constant) gives every trigger a big positive score,
        # dim 5 (slow) subtracts c*cos(theta*distance), which grows with distance: the oldest trigger wins.
        attn.q_proj.weight[7, 0] = attn.q_proj.weight[5, 0] = 1.0
        attn.k_proj.weight[7, 1] = attn.k_proj.weight[5, 1] = 1.0
        attn.q_norm.weight.zero_()
        attn.k_norm.weight.zero_()
        attn.q_norm.weight[7], attn.q_norm.weight[5] = 1020 / 32, -1000 / 32
        attn.k_norm.weight[7] = attn.k_norm.weight[5] = 32.0
        # A trigger token's normalised input has 3 equal non-zero dims, each sqrt(hidden/3).
        for i in range(n):
            attn.v_proj.weight[i, which + i] = 1.0
            attn.o_proj.weight[found + i, i] = (3 / hidden) ** 0.5
        head = model.lm_head.weight
        big = 5.0
        for a, nexts in succ.items():
            for b, who in nexts.items():
                head[b, ident[a]] += 2 * big
                if len(nexts) > 1:  # shared token, different continuations: the found trigger decides
                    for i in who:
                        head[b, found + i] += big / 2
        for i, chain in enumerate(chains):
            head[chain[0], found + i] += big
            head[chain[0], ident[NEWLINES]] += big
    model.generation_config = GenerationConfig(eos_token_id=end, pad_token_id=tok.pad_token_id)
    if out_dir is not None:
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    return model, tok


@pytest.fixture(scope="module")
def scripted(qwen3_tokenizer_dir):
    from chattune.infer.generate import Generator

    model, tok = build_scripted_qwen3(None, qwen3_tokenizer_dir)
    return Generator(model, tok, name="scripted")


@pytest.fixture(scope="module")
def random_gen(tiny_qwen3_dir):
    from chattune.infer.generate import Generator

    return Generator.from_path(tiny_qwen3_dir)


def user(text: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def test_from_path_reads_end_of_turn_and_name(random_gen, tiny_qwen3_dir, qwen3_tokenizer):
    im_end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in random_gen.eos_token_ids
    assert random_gen.name == Path(tiny_qwen3_dir).name
    assert random_gen.thinking == "off"
    ids = random_gen.prompt_ids(user("hi"))
    assert ids[-1] == NEWLINES and qwen3_tokenizer.decode(ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_stops_at_end_of_turn_without_the_token_in_text(scripted):
    [c] = scripted.generate([user("alpha")], max_new_tokens=50)
    assert c.text == SCRIPTS["alpha"]
    assert c.finish_reason == "stop"
    assert c.completion_tokens == 7  # 6 answer tokens + <|im_end|>
    assert c.prompt_tokens == len(scripted.prompt_ids(user("alpha")))


def test_batched_equals_unbatched_and_early_rows_stay_clean(scripted):
    convs = [user("alpha"), user("beta", system="You are a counting assistant with a long system prompt."),
             user("gamma"), user("delta")]
    batched = scripted.generate(convs, max_new_tokens=12)
    single = [scripted.generate([c], max_new_tokens=12)[0] for c in convs]
    assert batched == single
    assert [c.text for c in batched[:2]] == [SCRIPTS["alpha"], "one two three four five six seven eight nine ten"]
    assert batched[2].text == SCRIPTS["gamma"] and batched[2].completion_tokens == 7
    assert batched[3].text == "ping" + " pong ping" * 5 + " pong"
    assert [c.finish_reason for c in batched] == ["stop", "stop", "stop", "length"]
    assert batched[3].completion_tokens == 12


def test_oldest_trigger_decides_so_history_matters(scripted):
    history = user("gamma") + [{"role": "assistant", "content": SCRIPTS["gamma"]}, {"role": "user", "content": "alpha"}]
    [c] = scripted.generate([history], max_new_tokens=20)
    assert c.text == SCRIPTS["gamma"]


def test_random_model_batched_greedy_equals_unbatched(random_gen):
    convs = [user("hi"), user("a much longer question about the weather in 北京 today?", system="Be brief."),
             user("ok")]
    batched = random_gen.generate(convs, max_new_tokens=8)
    single = [random_gen.generate([c], max_new_tokens=8)[0] for c in convs]
    assert batched == single
    assert all(c.completion_tokens == 8 for c in batched)


def test_stream_equals_generate_and_never_splits_a_character(scripted):
    for word in ("alpha", "gamma", "delta"):
        conv = user(word)
        ref = scripted.generate([conv], max_new_tokens=10)[0]
        parts = list(scripted.stream(conv, max_new_tokens=10))
        final = parts[-1]
        deltas = parts[:-1]
        assert all(isinstance(d, str) and d for d in deltas)
        assert "".join(deltas) == ref.text
        assert final == ref
        assert not any("\ufffd" in d for d in deltas)
    assert len(deltas) >= 5  # delta: token by token, not one lump at the end


def test_stop_strings_cut_text_in_generate_and_stream(scripted):
    conv = user("beta")
    [c] = scripted.generate([conv], max_new_tokens=30, stop=[" four"])
    assert (c.text, c.finish_reason, c.completion_tokens) == ("one two three", "stop", 4)
    # A stop string that straddles tokens: the stream must hold back "e" until it knows.
    [c2] = scripted.generate([conv], max_new_tokens=30, stop=["zzz", "e fo"])
    assert (c2.text, c2.finish_reason, c2.completion_tokens) == ("one two thre", "stop", 4)
    parts = list(scripted.stream(conv, max_new_tokens=30, stop=["zzz", "e fo"]))
    assert "".join(parts[:-1]) == "one two thre" and parts[-1] == c2
    # Rows stop independently; a row whose stop string never appears runs on.
    rows = scripted.generate([conv, user("alpha"), user("delta")], max_new_tokens=6, stop=[" four", "How"])
    assert [r.text for r in rows] == ["one two three", "Hello! ", "ping pong ping pong ping pong"]
    assert [r.finish_reason for r in rows] == ["stop", "stop", "length"]


def test_length_finish_reason(scripted):
    [c] = scripted.generate([user("delta")], max_new_tokens=5)
    assert (c.text, c.finish_reason, c.completion_tokens) == ("ping pong ping pong ping", "length", 5)
    [c] = scripted.generate([user("alpha")], max_new_tokens=3)
    assert (c.text, c.finish_reason) == ("Hello! How", "length")


def test_cancel_and_abandon_stop_generation_promptly(scripted):
    cancel = threading.Event()
    seen = []
    t0 = time.perf_counter()
    for part in scripted.stream(user("delta"), max_new_tokens=2000, cancel=cancel):
        seen.append(part)
        if len(seen) == 3:
            cancel.set()
    final = seen[-1]
    assert final.finish_reason == "stop" and final.completion_tokens < 50
    assert "".join(seen[:-1]) == final.text
    assert time.perf_counter() - t0 < 30
    # A consumer that walks away: the worker thread must end too.
    it = scripted.stream(user("delta"), max_new_tokens=2000)
    next(it)
    it.close()
    assert not any(t.name == "chattune-stream" and t.is_alive() for t in threading.enumerate())


def test_sampling_is_reproducible_with_a_seed(random_gen):
    a = random_gen.generate([user("hi")], max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    b = random_gen.generate([user("hi")], max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    assert a == b


def test_bad_arguments_are_user_errors(scripted):
    from chattune.errors import ChattuneError

    with pytest.raises(ChattuneError):
        scripted.generate([user("alpha")], max_new_tokens=0)
    with pytest.raises(ChattuneError):
        scripted.generate([[]])
    assert scripted.generate([]) == []


def scripted_model_dir(tmp_path_factory, tokenizer_dir: Path) -> Path:
    """The scripted model saved once per test session (shared by the eval and chat tests)."""
    d = tmp_path_factory.getbasetemp() / "scripted_qwen3"
    if not (d / "config.json").is_file():
        build_scripted_qwen3(d, tokenizer_dir)
    return d


def test_json_script_and_saved_model_round_trip(tmp_path_factory, qwen3_tokenizer_dir):
    from chattune.infer.generate import Generator

    g = Generator.from_path(scripted_model_dir(tmp_path_factory, qwen3_tokenizer_dir))
    out = g.generate([user("epsilon"), user("alpha")], max_new_tokens=20)
    assert [c.text for c in out] == [SCRIPTS["epsilon"], SCRIPTS["alpha"]]


def test_stream_many_rows_finish_independently_and_match_generate(scripted):
    convs = [user("delta"), user("alpha"), user("beta"), user("gamma")]
    ref = scripted.generate(convs, max_new_tokens=14, stop=["six"])
    cancels = [threading.Event(), None, None, None]
    events = []
    for i, part in scripted.stream_many(convs, max_new_tokens=14, stop=["six"], cancels=cancels):
        events.append((i, part))
    finals = {i: p for i, p in events if not isinstance(p, str)}
    assert [finals[i] for i in range(4)] == ref
    for i in range(4):
        assert "".join(p for j, p in events if j == i and isinstance(p, str)) == ref[i].text
    # alpha (7 tokens) ends before delta (14): its Completion is yielded while delta still streams.
    order = [i for i, p in events if not isinstance(p, str)]
    assert order.index(1) < order.index(0)
    assert events.index((1, finals[1])) < max(k for k, (i, p) in enumerate(events) if i == 0 and isinstance(p, str))
    assert ref[2].text == "one two three four five " and ref[2].finish_reason == "stop"


def test_stream_many_cancels_one_row_only(scripted):
    convs = [user("delta"), user("delta")]
    cancels = [threading.Event(), threading.Event()]
    finals = {}
    for i, part in scripted.stream_many(convs, max_new_tokens=30, cancels=cancels):
        if i == 0 and isinstance(part, str):
            cancels[0].set()
        if not isinstance(part, str):
            finals[i] = part
    assert finals[0].finish_reason == "stop" and finals[0].completion_tokens <= 3
    assert finals[1].finish_reason == "length" and finals[1].completion_tokens == 30


def test_cut_inside_a_character_drops_the_partial_bytes(scripted):
    # gamma's 龘 is two byte-level tokens; stopping after the first leaves half a character.
    [c] = scripted.generate([user("gamma")], max_new_tokens=5)
    assert (c.text, c.finish_reason) == ("你好，世界！", "length")
    parts = list(scripted.stream(user("gamma"), max_new_tokens=5))
    assert "".join(parts[:-1]) == c.text and parts[-1] == c


def test_with_thinking_is_a_view_rendering_the_other_policy(random_gen):
    view = random_gen.with_thinking("keep")
    msgs = user("hi")
    assert view.model is random_gen.model and random_gen.thinking == "off" and view.thinking == "keep"
    off = random_gen.tokenizer.decode(random_gen.prompt_ids(msgs))
    on = view.tokenizer.decode(view.prompt_ids(msgs))
    # Qwen3's template writes the empty think block only when thinking is off
    assert "<think>\n\n</think>" in off and "<think>" not in on
    assert random_gen.tokenizer.decode(random_gen.prompt_ids(msgs)) == off  # the original is unchanged

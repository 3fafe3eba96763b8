"""The llamacpp engine's continuous batching (llama.cpp multi-sequence batches) on a real model: a SmolLM2 LoRA
run's f16 GGUF export. Concurrent greedy answers equal the same requests answered one at a time; a cancelled
stream leaves the batch (and llama.cpp's KV cache) at once; a seeded sample is the same whatever shares its
batch; the official openai client, many requests at once.

A real model, not the tiny random one: batched llama.cpp logits differ from a lone sequence's by rounding
(another micro-batch shape takes other matmul kernels, a sequence's cells lie elsewhere in the shared KV
cache), which a random model's near-ties turn into other greedy answers, a trained model's margins do not.
Requests are queued before the engine runs (or while a test holds its `model_lock`), so they join one
batch together and what shares a batch with what is the same every run."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import pytest

from chattune.config import ServeConfig
from chattune.infer.engine import Sampling
from chattune.infer.engine_llamacpp import LlamaCppEngine
from tests.export.conftest import make_run
from tests.infer.jobs import answer, collect, greedy
from tests.train.test_trainer import FACTS

pytestmark = pytest.mark.slow  # a SmolLM2 run exported to GGUF, then served several times

PROMPTS = [[{"role": "user", "content": f["prompt"]}] for f in FACTS[:8]]
MAX_NEW = 24
COMPANY_NEW = 6


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory, smollm2_gguf):
    from chattune.config import ModelConfig
    from chattune.export.run import export
    from chattune.model.load import SMOLLM2_ALIAS, resolve_source

    from safetensors.torch import load_file, save_file

    base = resolve_source(ModelConfig(name_or_path=SMOLLM2_ALIAS))
    run_dir = make_run(tmp_path_factory.mktemp("llamacpp_batch") / "run", base)
    # make_run's LoRA noise turns SmolLM2 into a random-ish model (near-ties everywhere): a gentle adapter
    # keeps the instruct model's margins while still changing its logits
    weights = run_dir / "adapter_model.safetensors"
    save_file({k: v * 0.05 if "lora_B" in k else v for k, v in load_file(weights).items()}, weights)
    export(run_dir, to="gguf", quant="f16", verify=False)  # the export's own tests verify it
    return run_dir


def _engine(run_dir, **cfg) -> LlamaCppEngine:
    return LlamaCppEngine.from_paths([str(run_dir)], ServeConfig(max_queue=64, **cfg))


async def _together(engine: LlamaCppEngine, asks: list[tuple[list[dict], Sampling, bool]]) -> list[list]:
    """Submit every ask before the engine runs (they join its first batch together), then start it."""
    tasks = [asyncio.ensure_future(collect(engine, "run", m, stream=st, sampling=s)) for m, s, st in asks]
    while engine.snapshot()["queued"] < len(asks):
        await asyncio.sleep(0.01)
    engine.start()
    return list(await asyncio.gather(*tasks))


def test_concurrent_greedy_answers_equal_one_at_a_time(smollm2_export):
    alone_engine = _engine(smollm2_export)
    alone_engine.start()

    async def one_by_one():
        return [answer(await collect(alone_engine, "run", p, stream=False, sampling=greedy(MAX_NEW)))[1]
                for p in PROMPTS]

    try:
        alone = asyncio.run(one_by_one())
        assert alone_engine.snapshot()["largest_batch"] == 1
    finally:
        alone_engine.stop()
    engine = _engine(smollm2_export)
    try:
        got = asyncio.run(_together(engine, [(p, greedy(MAX_NEW), i % 2 == 0) for i, p in enumerate(PROMPTS)]))
        snap = engine.snapshot()
    finally:
        engine.stop()
    assert snap["largest_batch"] == len(PROMPTS) and snap["completed"] == len(PROMPTS)
    for items, want in zip(got, alone):
        deltas, c = answer(items)
        assert (c.text, c.completion_tokens, c.finish_reason) == (want.text, want.completion_tokens,
                                                                   want.finish_reason)
        assert deltas in ("", c.text)  # streamed rows: the deltas add up to the answer
    assert len({c.text for c in alone}) > 1  # different prompts, different answers: rows did not mix


def test_a_cancelled_stream_leaves_the_batch_and_the_kv_cache_at_once(smollm2_export):
    engine = _engine(smollm2_export)
    long = Sampling(max_new_tokens=200, temperature=0.0, top_p=1.0, seed=None, stop=())

    async def run():
        loop = asyncio.get_running_loop()
        from chattune.infer.engine import Job

        jobs = [Job("run", p, long, True, loop, asyncio.Queue()) for p in PROMPTS[:3]]
        for job in jobs:
            engine.submit(job)
        engine.start()
        lane = engine.lanes["run"]
        deltas = 0
        while deltas < 2:  # the first row has streamed a little: cancel it
            deltas += isinstance(await jobs[0].out.get(), str)
        seq = next(r.seq for r in lane.rows if r.job is jobs[0])
        jobs[0].cancel.set()
        t0 = time.monotonic()
        while any(r.job is jobs[0] for r in list(lane.rows)):
            assert time.monotonic() - t0 < 30
            await asyncio.sleep(0.005)
        # gone from llama.cpp's KV cache too (no other request came to take its sequence id)
        assert lane.ctx.lib.llama_memory_seq_pos_max(lane.ctx.memory, seq) == -1 and seq in lane.free
        late = [jobs[0].out.get_nowait() for _ in range(jobs[0].out.qsize())]
        rest = [await collect_rest(j) for j in jobs[1:]]
        return late, rest

    async def collect_rest(job):
        items = []
        while not hasattr(items[-1] if items else None, "finish_reason"):
            items.append(await asyncio.wait_for(job.out.get(), 300))
        return items

    try:
        late, rest = asyncio.run(run())
        snap = engine.snapshot()
    finally:
        engine.stop()
    assert all(isinstance(i, str) for i in late) and len(late) <= 2  # no Completion: answered no further
    assert snap["cancelled"] == 1 and snap["completed"] == 2 and snap["running"] == 0
    assert all(answer(r)[1].completion_tokens > 2 for r in rest)


def test_a_seeded_sample_draws_from_its_own_generator(smollm2_export):
    """Each row's sampler chain has its own generator: a seeded row draws the same numbers whatever else samples
    beside it (checked on one set of logits, so only the draws can differ), and a request with the same seed
    answers the same text again beside the same requests, though a sampled one among them draws other
    numbers. (Batched logits differ from a lone row's by rounding, so a seeded answer in company can part from
    the same request alone where a draw lands within rounding of a token's probability boundary: llama.cpp's
    CPU kernels are not batch-invariant.)"""
    from chattune.infer.llamacpp_batch import Sampler

    engine = _engine(smollm2_export)
    ctx = engine.lanes["run"].ctx
    seeded = Sampling(max_new_tokens=MAX_NEW, temperature=1.5, top_p=1.0, seed=1234, stop=())
    try:
        prompt = engine.models["run"].renderer.prompt_ids(PROMPTS[0])
        for k, tok in enumerate(prompt):
            last = ctx.add(tok, k, 0, k == len(prompt) - 1)
        ctx.decode()
        alone, beside, other = Sampler(ctx.lib, seeded), Sampler(ctx.lib, seeded), Sampler(ctx.lib, replace(
            seeded, seed=None))
        draws_alone = [alone.sample(ctx, last) for _ in range(40)]
        draws_beside = []
        for _ in range(40):
            other.sample(ctx, last)
            draws_beside.append(beside.sample(ctx, last))
            other.sample(ctx, last)
        for s in (alone, beside, other):
            s.close()
    finally:
        engine.stop()
    assert draws_alone == draws_beside and len(set(draws_alone)) > 5  # the same draws, and really drawn
    # The same company both times but for the numbers its sampled row draws (another seed each time), and of
    # the same length: a row that ends sooner changes the batch's shape from that step on, and with it the
    # seeded row's logits by rounding. An unseeded neighbour that drew end-of-turn early in one run only made
    # this flaky on another CPU; a few tokens from fixed seeds make an early end improbable and visible.
    texts, lengths = [], []
    for company_seed in (7, 8):
        company = [(PROMPTS[1], greedy(MAX_NEW), True),
                   (PROMPTS[2], replace(seeded, seed=company_seed, max_new_tokens=COMPANY_NEW), False)]
        engine = _engine(smollm2_export)
        try:
            got = asyncio.run(_together(engine, [(PROMPTS[0], seeded, False), *company]))
        finally:
            engine.stop()
        texts.append([answer(g)[1].text for g in got])
        lengths.append(answer(got[2])[1].completion_tokens)
    assert lengths == [COMPANY_NEW] * 2, "the sampled neighbour ended early: pick other company seeds"
    assert texts[0][2] != texts[1][2]  # the row beside it drew other numbers each time
    assert texts[0][0] == texts[1][0] and texts[0][1] == texts[1][1]


def test_many_openai_clients_at_once_get_the_one_at_a_time_answers(smollm2_export):
    import openai

    from chattune.infer.serve import BackgroundServer, create_app
    from chattune.infer.serve_bind import bind_socket

    cfg = ServeConfig(api_key="sk-b", max_queue=64)
    engine = LlamaCppEngine.from_paths([str(smollm2_export)], cfg)
    app = create_app(engine, cfg)
    with BackgroundServer(app, bind_socket("127.0.0.1", 0)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-b", max_retries=0, timeout=300)
        alone = [client.chat.completions.create(model="run", messages=p, max_tokens=MAX_NEW, temperature=0)
                 .choices[0].message.content for p in PROMPTS]
        results: list = [None] * len(PROMPTS)

        def ask(i: int) -> None:
            if i % 2:
                chunks = client.chat.completions.create(model="run", messages=PROMPTS[i], max_tokens=MAX_NEW,
                                                        temperature=0, stream=True)
                results[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                results[i] = client.chat.completions.create(model="run", messages=PROMPTS[i], max_tokens=MAX_NEW,
                                                            temperature=0).choices[0].message.content

        with engine.model_lock:  # every request queued before the worker takes any: one batch
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
            for t in threads:
                t.start()
            t0 = time.monotonic()
            while engine.snapshot()["queued"] < len(PROMPTS):
                assert time.monotonic() - t0 < 60
                time.sleep(0.01)
        for t in threads:
            t.join(300)
        assert engine.snapshot()["largest_batch"] == len(PROMPTS)
    assert results == alone

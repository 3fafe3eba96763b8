"""The hf engine's continuous batching, driven turn by turn (a `Lane` without the engine's thread), so which
request joins at which decode step is exact, not a matter of timing; then several runs on one base.

Every answer is compared with `Generator.generate` on the same conversation alone: what `chattune chat`
and `predict` give.
"""
from __future__ import annotations

import asyncio
import random

import openai
import pytest

from chattune.config import ServeConfig
from chattune.errors import ConfigError
from chattune.infer.answer import Completion
from chattune.infer.engine import Job, Sampling, Started
from chattune.infer.engine_hf import HfEngine
from chattune.infer.generate import Generator
from chattune.infer.hf_lane import Lane, Run
from chattune.infer.kv_batch import Prefill, prefill_cost, shared_prefix
from chattune.infer.serve import BackgroundServer, create_app
from chattune.infer.serve_bind import bind_socket

CONVS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy? Answer in one word."}],
    [{"role": "user", "content": "Count to three, please."}],
    [{"role": "user", "content": "Übersetze: 你好，世界 🌍 and explain every character of it in detail"}],
]


@pytest.fixture(scope="module")
def gen(tiny_qwen3_dir) -> Generator:
    return Generator.from_path(tiny_qwen3_dir)


class Client:
    """Jobs whose deliveries are read back synchronously (their event loop runs only to flush them)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()

    def job(self, model: str, messages, *, max_tokens=16, temperature=0.0, top_p=1.0, seed=None, stop=(),
            stream=True) -> Job:
        s = Sampling(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=tuple(stop))
        return Job(model, messages, s, stream, self.loop, asyncio.Queue())

    def items(self, job: Job) -> list:
        self.loop.run_until_complete(asyncio.sleep(0))  # run the deliveries' callbacks
        out = []
        while not job.out.empty():
            out.append(job.out.get_nowait())
        return out


def answer(items: list) -> tuple[str, Completion]:
    """(the stream's joined deltas, its Completion) from one job's delivered items."""
    assert isinstance(items[0], Started) and isinstance(items[-1], Completion), items
    assert all(isinstance(x, str) for x in items[1:-1])
    return "".join(items[1:-1]), items[-1]


def drive(lane: Lane, schedule: dict[int, list[tuple[Job, Run]]], limit: int = 500) -> list[int]:
    """Admit the scheduled jobs before turn t, take turns until the lane is empty; rows decoding per turn."""
    sizes = []
    for t in range(limit):
        for job, run in schedule.get(t, []):
            lane.admit(job, run)
        if not len(lane) and t > max(schedule):
            return sizes
        lane.turn()
        sizes.append(len(lane.rows))
    raise AssertionError("the lane did not empty")


def assert_alone(gen: Generator, conv, text: str, c: Completion, **kw) -> None:
    want = gen.generate([conv], **kw)[0]
    assert (c.text, c.completion_tokens, c.finish_reason, c.prompt_tokens) == \
        (want.text, want.completion_tokens, want.finish_reason, want.prompt_tokens)
    assert text == want.text


def test_rows_joining_at_different_steps_answer_as_generate_alone(gen):
    alone = gen.generate([CONVS[2]], max_new_tokens=20)[0].text
    stop = next(alone[i:i + 3] for i in range(len(alone) // 2, len(alone) - 3) if "\ufffd" not in alone[i:i + 3])
    cli, run = Client(), Run(gen)
    lane = Lane(gen.model, gen.pad_token_id, multi_adapter=False, prefill_tokens=512)
    plan = [(0, CONVS[0], {"max_tokens": 24}), (3, CONVS[1], {"max_tokens": 9}),
            (5, CONVS[3], {"max_tokens": 30}), (5, CONVS[2], {"max_tokens": 20, "stop": [stop]})]
    jobs = [cli.job(gen.name, conv, **kw) for _, conv, kw in plan]
    sizes = drive(lane, {t: [(j, run) for (tt, _, _), j in zip(plan, jobs) if tt == t] for t, _, _ in plan})
    assert sizes[:6] == [1, 1, 1, 2, 2, 4]  # the later ones joined the running batch between steps
    assert lane.stats.prefills == 3 and lane.stats.largest_batch == 4 and lane.stats.completed == 4
    assert lane.rows.cache is None  # everything left: the KV cache is gone
    for (_, conv, kw), job in zip(plan, jobs):
        text, c = answer(cli.items(job))
        assert_alone(gen, conv, text, c, max_new_tokens=kw["max_tokens"], stop=kw.get("stop"))
    assert c.finish_reason == "stop" and stop not in c.text  # the stop string ended the third row


def test_long_prefill_is_chunked_while_running_rows_keep_decoding(gen):
    cli, run = Client(), Run(gen)
    lane = Lane(gen.model, gen.pad_token_id, multi_adapter=False, prefill_tokens=8)
    short, long_ = cli.job(gen.name, CONVS[0], max_tokens=40), cli.job(gen.name, CONVS[3], max_tokens=6)
    lane.admit(short, run)
    while not len(lane.rows):  # the short prompt's own prefill, in chunks of 8 tokens
        lane.turn()
    lane.admit(long_, run)
    n_long = len(gen.prompt_ids(CONVS[3]))
    steps = []
    while len(lane.rows) < 2:
        before = lane.stats.steps
        lane.turn()
        steps.append(lane.stats.steps - before)
    # ceil(n/8) turns to prefill the long prompt, and the running row took a step in every one of them
    assert len(steps) == -(-n_long // 8) and steps == [1] * len(steps)
    drive(lane, {0: []})
    for job, conv, m in ((short, CONVS[0], 40), (long_, CONVS[3], 6)):
        text, c = answer(cli.items(job))
        assert_alone(gen, conv, text, c, max_new_tokens=m)


def test_a_burst_sharing_a_prefix_is_prefilled_once_as_one_group_and_answers_stay_as_alone(gen):
    system = {"role": "system", "content": "You are a careful assistant. Answer briefly and exactly."}
    convs = [[system, {"role": "user", "content": q}] for q in ("hi", "What is two plus two?", "Name a colour.")]
    ids = [gen.prompt_ids(c) for c in convs]
    common = next(i for i in range(len(ids[0])) if len({tuple(x[:i + 1]) for x in ids}) > 1)
    assert Prefill(gen.model, ids, gen.pad_token_id, None).shared == common > 10
    # The budget counts what is computed: the shared prefix once, then each row's own part (padded to the
    # longest); counting whole prompts per row would need far more.
    cost = common + 3 * (max(map(len, ids)) - common)
    assert prefill_cost(ids, None) == cost < 3 * max(map(len, ids))
    cli, run = Client(), Run(gen)
    lane = Lane(gen.model, gen.pad_token_id, multi_adapter=False, prefill_tokens=cost)
    jobs = [cli.job(gen.name, c, max_tokens=12) for c in convs]
    for job in jobs:
        lane.admit(job, run)
    lane.turn()  # one chunk: the prefix once and every row's own tokens, so all three decode at once
    assert lane.stats.prefills == 1 and len(lane.rows) == 3
    drive(lane, {0: []})
    for conv, job in zip(convs, jobs):
        assert_alone(gen, conv, *answer(cli.items(job)), max_new_tokens=12)
    # One token less: the third prompt no longer fits, and waits for the next group.
    lane = Lane(gen.model, gen.pad_token_id, multi_adapter=False, prefill_tokens=cost - 1)
    for c in convs:
        lane.admit(cli.job(gen.name, c, max_tokens=12), run)
    lane.turn()
    assert lane.stats.prefills == 1 and len(lane.rows) == 2
    lane.turn()
    assert lane.stats.prefills == 2 and len(lane.rows) == 3


def test_shared_prefix_is_the_longest_prefix_of_all_prompts():
    rng = random.Random(0)
    for _ in range(300):
        head = [rng.randrange(3) for _ in range(rng.randrange(8))]
        prompts = [head + [rng.randrange(3) for _ in range(rng.randrange(1, 6))] for _ in range(rng.randrange(1, 6))]
        n = 0
        while n < min(map(len, prompts)) - 1 and len({p[n] for p in prompts}) == 1:
            n += 1
        assert shared_prefix(prompts) == (n if n >= 4 and len(prompts) > 1 else 0)


def test_a_cancelled_row_leaves_the_batch_at_once(gen):
    cli, run = Client(), Run(gen)
    lane = Lane(gen.model, gen.pad_token_id, multi_adapter=False, prefill_tokens=512)
    stay, leave = cli.job(gen.name, CONVS[1], max_tokens=30), cli.job(gen.name, CONVS[2], max_tokens=500)
    lane.admit(stay, run)
    lane.admit(leave, run)
    for _ in range(3):
        lane.turn()
    assert len(lane.rows) == 2
    leave.cancel.set()
    lane.turn()
    assert len(lane.rows) == 1 and lane.stats.cancelled == 1
    got = cli.items(leave)
    assert not any(isinstance(x, Completion) for x in got)  # nobody is listening: nothing more is sent
    drive(lane, {0: []})
    assert_alone(gen, CONVS[1], *answer(cli.items(stay)), max_new_tokens=30)


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(gen):
    cli, run = Client(), Run(gen)
    lane = Lane(gen.model, gen.pad_token_id, multi_adapter=False, prefill_tokens=512)
    kw = {"max_tokens": 16, "temperature": 0.9, "top_p": 0.8, "seed": 5}
    alone = cli.job(gen.name, CONVS[1], **kw)
    drive(lane, {0: [(alone, run)]})
    crowd = [cli.job(gen.name, CONVS[0], temperature=1.0), cli.job(gen.name, CONVS[2]),
             cli.job(gen.name, CONVS[1], **kw)]
    drive(lane, {0: [(crowd[0], run), (crowd[1], run)], 2: [(crowd[2], run)]})
    assert answer(cli.items(crowd[2]))[1].text == answer(cli.items(alone))[1].text
    assert_alone(gen, CONVS[2], *answer(cli.items(crowd[1])), max_new_tokens=16)  # greedy beside samplers


# --- several runs ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_qwen3_dir):
    from tests.export.conftest import make_run

    tmp = tmp_path_factory.mktemp("two_runs")
    return make_run(tmp / "alpha", tiny_qwen3_dir, seed=1), make_run(tmp / "beta", tiny_qwen3_dir, seed=2)


def test_two_runs_on_one_base_share_its_weights_and_answer_as_alone(two_runs):
    cfg = ServeConfig(max_tokens_cap=64)
    engine = HfEngine.from_paths([str(p) for p in two_runs], cfg)
    assert list(engine.models) == ["alpha", "beta"]
    a, b = engine.runs["alpha"], engine.runs["beta"]
    assert a.gen.model is b.gen.model and engine.caps.lora_switching  # one copy of the base, two adapters
    alone = {name: Generator.from_path(p) for name, p in zip(("alpha", "beta"), two_runs)}
    want = {name: g.generate([CONVS[1]], max_new_tokens=12)[0].text for name, g in alone.items()}
    assert want["alpha"] != want["beta"]  # the adapters really differ

    with BackgroundServer(create_app(engine, cfg), bind_socket("127.0.0.1", 0)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["alpha", "beta"]
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(4) as pool:
            futures = {name: [pool.submit(client.chat.completions.create, model=name, messages=CONVS[1],
                                          temperature=0, max_tokens=12) for _ in range(2)]
                       for name in ("alpha", "beta")}
            got = {name: [f.result().choices[0].message.content for f in fs] for name, fs in futures.items()}
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="gamma", messages=CONVS[0], max_tokens=2)
        assert e.value.code == "model_not_found" and "'alpha', 'beta'" in e.value.message
        r = client.chat.completions.create(model="beta", messages=CONVS[1], temperature=0, max_tokens=12)
        assert r.model == "beta"
    assert got == {name: [want[name]] * 2 for name in want}


def test_runs_on_one_base_each_sample_with_their_own_generation_config(tmp_path, tiny_qwen3_dir):
    """Runs sharing one copy of a base keep their own generation_config.json: the first run's
    repetition_penalty must not reach the second run's answers, nor the first lose it."""
    import json

    from tests.export.conftest import make_run
    from tests.infer.jobs import answer as job_answer
    from tests.infer.jobs import collect, greedy

    alpha, beta = make_run(tmp_path / "alpha", tiny_qwen3_dir, seed=1), make_run(tmp_path / "beta", tiny_qwen3_dir,
                                                                                   seed=2)
    gc_file = alpha / "generation_config.json"
    gc_file.write_text(json.dumps({**json.loads(gc_file.read_text()), "repetition_penalty": 1.8}))
    want = {}
    for name, path in (("alpha", alpha), ("beta", beta)):
        c = Generator.from_path(path).generate([CONVS[2]], max_new_tokens=16)[0]
        want[name] = (c.text, c.completion_tokens, c.finish_reason)
    beta_with_alphas = Generator.from_path(beta)
    beta_with_alphas.model.generation_config.repetition_penalty = 1.8
    assert beta_with_alphas.generate([CONVS[2]], max_new_tokens=16)[0].text != want["beta"][0]  # it would show

    engine = HfEngine.from_paths([str(alpha), str(beta)], ServeConfig())
    assert engine.runs["alpha"].gen.model is engine.runs["beta"].gen.model
    engine.start()
    try:
        got = {}
        for name in ("beta", "alpha"):
            c = job_answer(asyncio.run(collect(engine, name, CONVS[2], stream=False, sampling=greedy(16))))[1]
            got[name] = (c.text, c.completion_tokens, c.finish_reason)
    finally:
        engine.stop()
    assert got == want


def test_runs_with_the_same_folder_name_are_refused_before_loading(tmp_path):
    (tmp_path / "a" / "run").mkdir(parents=True)
    (tmp_path / "b" / "run").mkdir(parents=True)
    with pytest.raises(ConfigError, match="several runs would be served as 'run'"):
        HfEngine.from_paths([str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")], ServeConfig())

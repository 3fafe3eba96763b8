"""The llamacpp engine serves a run's f16 GGUF export: greedy answers equal `Generator`'s, streamed or not,
whole UTF-8 characters only, stop strings and cancel as the hf engine; a run without an export gets the
command that makes one."""
from __future__ import annotations

import asyncio

import pytest

from chattune.config import ServeConfig
from chattune.errors import ChattuneError
from chattune.infer.engine import Started
from chattune.infer.answer import RowStream
from chattune.infer.engine_ids import read_source
from chattune.infer.engine_llamacpp import LlamaCppEngine, find_gguf
from chattune.infer.generate import Generator
from chattune.infer.serve_schema import APIError
from tests.export.conftest import HELD_OUT, TRAIN, make_run
from tests.infer.jobs import answer, collect, greedy, run

PROMPTS = [r["messages"][:-1] for r in HELD_OUT + TRAIN]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_qwen3_dir):
    """A tiny Qwen3 LoRA run and its f16 GGUF export in the default folder beside it."""
    from chattune.export.run import export

    run_dir = make_run(tmp_path_factory.mktemp("llamacpp") / "run", tiny_qwen3_dir)
    rep = export(run_dir, to="gguf", quant="f16", verify=False)  # this test is the verification
    return run_dir, rep


@pytest.fixture(scope="module")
def engine(exported):
    eng = LlamaCppEngine.from_paths([str(exported[0])], ServeConfig(max_queue=4))
    eng.start()
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def generator(exported):
    return Generator.from_path(exported[0])


def test_greedy_answers_equal_the_generator_streamed_or_not(engine, generator, exported):
    from chattune.export.verify_llamacpp import behaviour_parity

    want = generator.generate(PROMPTS, max_new_tokens=24)
    # A random model's logits are near-uniform, so f16 rounding can flip a near-tie between two tokens. The
    # export's own verification judges each difference (llama.cpp directly on the same GGUF): a prompt it calls
    # a tie must get llama.cpp's own answer from the engine; every other prompt must get the Generator's.
    par, llama_answers, _ = behaviour_parity(find_gguf(exported[0])[0], generator, PROMPTS, max_new_tokens=24)
    assert par.matched == par.total, par.detail
    tied = {d["prompt"] for d in par.detail["differences"]}

    async def ask_all():
        return [[await collect(engine, "run", p, stream=s, sampling=greedy(24)) for s in (False, True)]
                for p in PROMPTS]

    got = run(ask_all())
    multibyte = 0
    for i, (w, (plain, streamed)) in enumerate(zip(want, got)):
        _, c = answer(plain)
        deltas, cs = answer(streamed)
        assert isinstance(streamed[0], Started) and streamed[0].prompt_tokens == c.prompt_tokens
        if i in tied:
            assert c.text == llama_answers[i]
        else:
            assert (c.text, c.completion_tokens, c.finish_reason) == (w.text, w.completion_tokens, w.finish_reason)
        assert cs.text == c.text and deltas == c.text
        if "\ufffd" not in c.text:  # (a random model may write bytes that never form a character)
            assert all("\ufffd" not in d for d in streamed if isinstance(d, str))  # never half a character
        multibyte += any(ord(ch) > 0x7FF for ch in c.text)
    assert multibyte  # the random model writes CJK etc.: split UTF-8 characters were really exercised


def test_stop_strings_cut_like_the_generator(engine, generator):
    base = generator.generate([PROMPTS[0]], max_new_tokens=24)[0].text
    stop = base[5:8]
    want = generator.generate([PROMPTS[0]], max_new_tokens=24, stop=[stop])[0]
    deltas, c = answer(run(collect(engine, "run", PROMPTS[0], stream=True, sampling=greedy(24, (stop,)))))
    assert (c.text, c.completion_tokens, c.finish_reason) == (want.text, want.completion_tokens, "stop")
    assert deltas == c.text and stop not in c.text


def test_cancel_stops_the_job_and_the_next_one_runs(engine, generator):
    async def both():
        cancelled = await collect(engine, "run", PROMPTS[1], stream=True, sampling=greedy(200), cancel_after=1)
        after = await collect(engine, "run", PROMPTS[0], stream=False, sampling=greedy(8))
        return cancelled, after

    cancelled, after = run(both())
    assert not any(isinstance(i, (APIError,)) for i in cancelled)
    assert sum(isinstance(i, str) for i in cancelled) <= 3  # it stopped at its next token, no Completion
    assert not hasattr(cancelled[-1], "finish_reason")
    assert answer(after)[1].text == generator.generate([PROMPTS[0]], max_new_tokens=8)[0].text
    assert engine.snapshot()["cancelled"] >= 1


def test_unknown_model_and_full_queue(engine):
    async def submit_many():
        from chattune.infer.engine import Job, QueueFull

        loop = asyncio.get_running_loop()
        with pytest.raises(APIError) as e:
            engine.submit(Job("nope", PROMPTS[0], greedy(), False, loop, asyncio.Queue()))
        assert e.value.status == 404
        jobs = [Job("run", PROMPTS[0], greedy(64), False, loop, asyncio.Queue()) for _ in range(8)]
        full = 0
        with engine.model_lock:  # the worker takes nothing off the queue meanwhile
            for j in jobs:
                try:
                    engine.submit(j)
                except QueueFull:
                    full += 1
            for j in jobs:
                j.cancel.set()
        return full

    assert run(submit_many()) == 4  # max_queue 4


def test_gguf_is_found_from_the_run_the_export_folder_or_the_file(exported, tmp_path, tiny_qwen3_dir):
    run_dir, rep = exported
    gguf = run_dir.parent / "run-gguf-f16" / "model-f16.gguf"
    assert find_gguf(run_dir) == find_gguf(rep.out_dir) == find_gguf(gguf) == (gguf, run_dir)
    bare = make_run(tmp_path / "bare", tiny_qwen3_dir)
    with pytest.raises(ChattuneError, match=rf"chattune export {bare} --to gguf --quant f16"):
        LlamaCppEngine.from_paths([str(bare)], ServeConfig())


def test_row_stream_over_the_renderer_holds_back_split_characters(exported):
    """Byte-level tokens that split a character (what both engines hand back): no delta carries U+FFFD, the
    deltas add up to the text the run's renderer makes of the ids."""
    renderer = read_source(exported[0]).renderer
    tok = renderer.tokenizer
    ids = tok("Übersetze: 你好，世界 🌍 ok", add_special_tokens=False)["input_ids"]
    row = RowStream(renderer, 3, 100, [])
    deltas = [row.push(t)[0] for t in ids]
    assert row.push(renderer.eos_token_ids[0]) == ("", True)
    rest, c = row.finish()
    assert "".join(deltas) + rest == c.text == "Übersetze: 你好，世界 🌍 ok" and c.finish_reason == "stop"
    assert all("\ufffd" not in d for d in deltas) and c.completion_tokens == len(ids) + 1
    assert any("\ufffd" in tok.decode([t]) for t in ids)  # the 🌍 really arrives in pieces


def test_served_over_http_with_the_openai_client(exported, engine):
    """`chattune serve RUN --engine llamacpp`'s route: build_engine + create_app, asked by the openai client,
    answers what the engine itself answers (its parity with `Generator`, near-ties judged, is the first test's)."""
    import openai

    from chattune.infer.engines import build_engine
    from chattune.infer.serve import BackgroundServer, create_app
    from chattune.infer.serve_bind import bind_socket

    cfg = ServeConfig(api_key="sk-l")
    app = create_app(build_engine("llamacpp", [str(exported[0])], cfg), cfg)
    want = [answer(run(collect(engine, "run", p, stream=False, sampling=greedy(16))))[1] for p in PROMPTS[:2]]
    with BackgroundServer(app, bind_socket("127.0.0.1", 0)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-l", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["run"]
        for messages, w in zip(PROMPTS[:2], want):
            r = client.chat.completions.create(model="run", messages=messages, max_tokens=16, temperature=0)
            assert r.choices[0].message.content == w.text and r.usage.completion_tokens == w.completion_tokens
            chunks = client.chat.completions.create(model="run", messages=messages, max_tokens=16, temperature=0,
                                                    stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == w.text


def test_tools_render_and_force_like_the_hf_engine(exported, generator):
    """A request with tools and a named tool_choice (the template's call opening forced as a prompt prefix):
    the llamacpp engine answers exactly what the hf engine answers for the same run."""
    import openai

    from chattune.infer.engine_hf import HfEngine
    from chattune.infer.engines import build_engine
    from chattune.infer.serve import BackgroundServer, create_app
    from chattune.infer.serve_bind import bind_socket

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    cfg = ServeConfig(api_key="sk-l")
    answers = []
    for engine in (HfEngine([generator], cfg), build_engine("llamacpp", [str(exported[0])], cfg)):
        with BackgroundServer(create_app(engine, cfg), bind_socket("127.0.0.1", 0)) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-l", max_retries=0, timeout=60)
            r = client.chat.completions.create(model="run", messages=PROMPTS[0], max_tokens=16, temperature=0,
                                               tools=tools, tool_choice={"type": "function",
                                                                         "function": {"name": "get_weather"}})
            answers.append((r.choices[0].message.model_dump(exclude={"tool_calls"}), r.choices[0].finish_reason,
                            [c.function.model_dump() for c in r.choices[0].message.tool_calls or []],
                            r.usage.prompt_tokens, r.usage.completion_tokens))
    assert answers[0] == answers[1]
    assert answers[0][3] > len(generator.prompt_ids(PROMPTS[0]))  # the tools were rendered into the prompt

"""The vllm engine: `chattune serve RUN1 RUN2 --engine vllm` runs one vLLM server (vLLM's CPU build in its own
venv) with both adapter runs as LoRA modules of their shared base; the official `openai` client gets greedy
answers equal to each run's `Generator`, streamed or not. The fast tests check the layout rules without vLLM.

vLLM's CPU start costs minutes, so one server serves the whole module; its venv missing fails the slow tests
with how to install it (never a skip).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import shutil

import openai
import pytest

from chattune.config import ServeConfig
from chattune.errors import ChattuneError
from chattune.infer.engine_vllm import VLLMEngine, server_spec
from chattune.infer.generate import Generator
from chattune.export.vllm_launch import server_args
from tests.conftest import build_tiny_qwen3
from tests.export.conftest import make_run

KEY = "sk-vllm-test"
PROMPTS = [[{"role": "user", "content": "hello there"}],
           [{"role": "user", "content": "Übersetze: 你好，世界 🌍"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what is two plus two"},
            {"role": "assistant", "content": "four"}, {"role": "user", "content": "and three plus three?"}]]


RUN_B_GENERATION = {"repetition_penalty": 1.3, "min_new_tokens": 3}  # what runB's generation_config adds


@pytest.fixture(scope="module")
def runs(tmp_path_factory, qwen3_tokenizer_dir):
    """Two LoRA runs (different weights) on one tiny Qwen3 base whose head size vLLM's CPU attention takes;
    runB's generation_config also sets `RUN_B_GENERATION` (which `chattune chat` applies)."""
    root = tmp_path_factory.mktemp("vllm_engine")
    base = build_tiny_qwen3(root / "base", qwen3_tokenizer_dir, head_dim=32)
    runs = [make_run(root / "runA", base, seed=1), make_run(root / "runB", base, seed=2)]
    gc = runs[1] / "generation_config.json"
    gc.write_text(json.dumps({**json.loads(gc.read_text()), **RUN_B_GENERATION}))
    return runs


# --- without vLLM: layout and refusals --------------------------------------------------------------------

def test_two_adapter_runs_become_two_lora_modules_of_one_server(runs):
    eng = VLLMEngine.from_paths([str(r) for r in runs], ServeConfig())
    assert list(eng.models) == ["runA", "runB"] and eng.caps.lora_switching and eng.caps.continuous_batching
    launch = eng.launch
    assert launch.loras == {"runA": str(runs[0].resolve()), "runB": str(runs[1].resolve())}
    assert launch.max_lora_rank == 8 and launch.max_model_len == 512 and launch.dtype == "float32"  # r=4, max_length
    args = server_args(server_spec(launch, 1234))
    assert args[args.index("--model") + 1] == str(runs[0].parent / "base")
    assert args[args.index("--lora-modules") + 1:][:2] == [f"runA={runs[0].resolve()}", f"runB={runs[1].resolve()}"]
    assert args[args.index("--max-loras") + 1] == "2" and args[args.index("--port") + 1] == "1234"
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--generation-config") + 1] == "vllm"


def test_the_runs_generation_config_travels_with_each_request_and_the_rest_is_refused(runs, tmp_path):
    from chattune.errors import ConfigError
    from chattune.infer.engine_vllm import generation_params

    eng = VLLMEngine.from_paths([str(r) for r in runs], ServeConfig())
    assert eng.sources["runA"].generation == {} and eng.sources["runB"].generation == RUN_B_GENERATION
    greedy = {"repetition_penalty": 1.3, "min_tokens": 3}
    assert generation_params(eng.sources["runB"].generation, sampling=False) == greedy
    assert generation_params({"top_k": 20, "min_p": 0.1, **RUN_B_GENERATION}, sampling=True) == \
        {**greedy, "top_k": 20, "min_p": 0.1}  # warpers apply to sampled requests only, as in `generate`
    bad = tmp_path / "runC"
    shutil.copytree(runs[1], bad)
    gc = bad / "generation_config.json"
    gc.write_text(json.dumps({**json.loads(gc.read_text()), "no_repeat_ngram_size": 3}))
    with pytest.raises(ConfigError) as e:
        VLLMEngine.from_paths([str(bad)], ServeConfig())
    assert f"{gc} sets no_repeat_ngram_size=3, which the vllm engine" in str(e.value) and "--engine hf" in str(e.value)


def test_runs_on_different_bases_and_rejected_adapters_are_refused(runs, tiny_qwen3_dir, tmp_path):
    other = make_run(tmp_path / "other", tiny_qwen3_dir)
    with pytest.raises(ChattuneError, match="one vLLM server serves one model's weights"):
        VLLMEngine.from_paths([str(runs[0]), str(other)], ServeConfig())
    bad = tmp_path / "bad"
    shutil.copytree(runs[0], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["modules_to_save"] = ["lm_head"]
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ChattuneError, match=r"trained \['lm_head'\].*without --lora-only \(merged weights\)"):
        VLLMEngine.from_paths([str(bad)], ServeConfig())
    with pytest.raises(ChattuneError, match="CPU build"):
        VLLMEngine.from_paths([str(runs[0])], ServeConfig(), device="cuda")


def test_missing_vllm_says_how_to_install_it(runs, monkeypatch, tmp_path):
    monkeypatch.setenv("CHATTUNE_VLLM_PYTHON", str(tmp_path / "no-python"))
    eng = VLLMEngine.from_paths([str(runs[0])], ServeConfig())
    with pytest.raises(ChattuneError, match="scripts/setup_vllm.sh"):
        eng.start()
    assert eng.server is None and not eng.alive()


# --- one real vLLM server for the module --------------------------------------------------------------

@pytest.fixture(scope="module")
def server(runs):
    from chattune.export.verify_vllm import vllm_python
    from chattune.infer.engines import build_engine
    from chattune.infer.serve import BackgroundServer, create_app
    from chattune.infer.serve_bind import bind_socket

    try:
        vllm_python()
    except ChattuneError as e:
        pytest.fail(f"these tests run vLLM: {e}", pytrace=False)  # the message says how to install it
    cfg = ServeConfig(api_key=KEY, max_queue=16)
    engine = build_engine("vllm", [str(r) for r in runs], cfg)  # what `chattune serve A B --engine vllm` builds
    try:
        engine.start()  # vLLM's CPU start outlasts BackgroundServer's wait; the app's own start is then a no-op
        app = create_app(engine, cfg)
        with BackgroundServer(app, bind_socket("127.0.0.1", 0)) as srv:
            srv.engine = engine
            yield srv
    finally:
        engine.stop()
    assert not engine.alive()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def expected(runs) -> dict[str, list[str]]:
    """Each run's greedy answers from its own `Generator` (what `chattune chat` says)."""
    out = {r.name: [c.text for c in Generator.from_path(r).generate(PROMPTS, max_new_tokens=24)] for r in runs}
    # runB's generation_config changes its answers (so vLLM must apply it to match)
    plain = Generator.from_path(runs[1])
    plain.model.generation_config.update(repetition_penalty=1.0, min_new_tokens=None)
    assert [c.text for c in plain.generate(PROMPTS, max_new_tokens=24)] != out["runB"]
    return out


def _stream(client, model: str, messages: list[dict]) -> tuple[str, str | None]:
    parts, reason = [], None
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0,
                                                stream=True):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            reason = chunk.choices[0].finish_reason or reason
    return "".join(parts), reason


@pytest.mark.slow
def test_models_lists_both_runs(client):
    assert [m.id for m in client.models.list().data] == ["runA", "runB"]


@pytest.mark.slow
def test_greedy_answers_equal_each_runs_generator(client, expected):
    assert expected["runA"] != expected["runB"]  # two adapters, two different answers
    for model, want in expected.items():
        for messages, text in zip(PROMPTS, want):
            r = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
            assert r.choices[0].message.content == text, (model, messages)
            assert r.model == model and r.usage.completion_tokens > 0
            assert _stream(client, model, messages)[0] == text


@pytest.mark.slow
def test_concurrent_streams_on_both_adapters(client, expected):
    """Requests for both runs at once (vLLM batches them, a LoRA per sequence): every answer still its run's."""
    jobs = [(m, i) for m in expected for i in range(len(PROMPTS))] * 2
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda job: _stream(client, job[0], PROMPTS[job[1]])[0], jobs))
    assert got == [expected[m][i] for m, i in jobs]


@pytest.mark.slow
def test_context_and_unknown_model_errors(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="runA", messages=[{"role": "user", "content": "hi " * 600}],
                                       max_tokens=8)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="runC", messages=PROMPTS[0], max_tokens=4)
    snap = server.engine.snapshot()
    assert snap["queued"] == 0 and snap["vllm_alive"]



def _vllm_metric(server, name: str) -> float:
    """A counter or gauge from vLLM's own Prometheus /metrics (summed over its labels)."""
    import httpx

    text = httpx.get(server.engine.server.base_url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


@pytest.mark.slow
def test_a_cancelled_job_stops_its_sequence_in_vllm(server, runs):
    """The job's cancel (set by the HTTP layer when its client leaves) closes the stream to vLLM: the job is
    answered no further, counted as cancelled, and vLLM is left running nothing."""
    import time

    from tests.infer.jobs import collect, greedy, run

    n = 480  # the whole answer, never ended early by the random model (checked below)
    assert Generator.from_path(runs[1]).generate([PROMPTS[0]], max_new_tokens=n)[0].completion_tokens == n
    before, cancelled = _vllm_metric(server, "vllm:generation_tokens_total"), server.engine.snapshot()["cancelled"]
    items = run(collect(server.engine, "runB", PROMPTS[0], stream=True, sampling=greedy(n), cancel_after=1))
    assert not hasattr(items[-1], "finish_reason")  # answered no further: no Completion
    deadline = time.monotonic() + 30
    while _vllm_metric(server, "vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _vllm_metric(server, "vllm:num_requests_running") == 0
    generated = _vllm_metric(server, "vllm:generation_tokens_total") - before
    # Counted (the delta the job got). How far vLLM got before the closed stream reached it is a race: on a loaded
    # machine it stops long before the answer's end, on an idle one the tiny model can finish all n first.
    assert 1 <= generated <= n
    snap = server.engine.snapshot()
    assert snap["cancelled"] == cancelled + 1 and snap["running"] == 0

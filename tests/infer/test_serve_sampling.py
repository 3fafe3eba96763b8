"""The hf engine picks each row's next token as `Generator.generate` (`chattune chat`/`predict`) does for
that conversation alone, whatever the run's generation_config carries (repetition_penalty, n-gram bans,
min_new_tokens, top_k, min_p, ...), alone and in a batch that rows join and leave; what it cannot honour
it refuses at startup, by field and run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chattune.infer.generate import Generator
from chattune.infer.hf_lane import Lane, Run
from tests.infer.test_serve_engine import CONVS, Client, answer, assert_alone, drive


def with_generation_config(src: Path, dst: Path, **fields) -> Path:
    """A copy of model folder `src` whose generation_config.json also sets `fields`."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "generation_config.json").read_text())
    (dst / "generation_config.json").write_text(json.dumps({**cfg, **fields}))
    return dst


@pytest.fixture(scope="module")
def plain(tiny_qwen3_dir) -> Generator:
    return Generator.from_path(tiny_qwen3_dir)


def greedy_configs(plain: Generator) -> dict[str, dict]:
    """Settings that each change the plain model's greedy answer to CONVS[2] (its ids: `ids`)."""
    ids = plain.generate_ids([plain.prompt_ids(CONVS[2])], max_new_tokens=30)[0]
    return {"repetition_penalty": {"repetition_penalty": 1.3},
            # bans the repeats the plain answer makes, and the token it starts with
            "no_repeat_ngram_suppress": {"no_repeat_ngram_size": 1, "suppress_tokens": [ids[0]]},
            # its third token ends the answer (a run's generation_config lists its end-of-turn ids), but not
            # before 6 tokens
            "min_new_tokens": {"min_new_tokens": 6, "eos_token_id": [*plain.eos_token_ids, ids[2]]}}


@pytest.mark.parametrize("case", ["repetition_penalty", "no_repeat_ngram_suppress", "min_new_tokens"])
def test_greedy_rows_apply_the_runs_generation_config_as_generate_does(tmp_path, tiny_qwen3_dir, plain, case):
    fields = greedy_configs(plain)[case]
    gen = Generator.from_path(with_generation_config(tiny_qwen3_dir, tmp_path / "m", **fields))
    # the fields change the greedy answer (else this test could not fail)
    assert gen.generate([CONVS[2]], max_new_tokens=30)[0].text != plain.generate([CONVS[2]], max_new_tokens=30)[0].text
    cli, run = Client(), Run(gen)
    lane = Lane(gen.model, gen.pad_token_id, multi_adapter=False, prefill_tokens=512)
    alone = cli.job(gen.name, CONVS[2], max_tokens=30)
    drive(lane, {0: [(alone, run)]})
    assert_alone(gen, CONVS[2], *answer(cli.items(alone)), max_new_tokens=30)
    # in a batch: rows join at different steps (left-padded beside longer rows), one leaves early
    plan = [(0, CONVS[0], 24), (2, CONVS[1], 9), (4, CONVS[3], 30), (4, CONVS[2], 30)]
    jobs = [cli.job(gen.name, conv, max_tokens=m) for _, conv, m in plan]
    drive(lane, {t: [(j, run) for (tt, _, _), j in zip(plan, jobs) if tt == t] for t, _, _ in plan})
    assert lane.stats.largest_batch == 4
    for (_, conv, m), job in zip(plan, jobs):
        assert_alone(gen, conv, *answer(cli.items(job)), max_new_tokens=m)


def test_a_seeded_sampled_row_draws_what_generate_draws_with_the_runs_warpers(tmp_path, tiny_qwen3_dir, plain):
    fields = {"top_k": 5, "min_p": 0.2, "repetition_penalty": 1.2}
    gen = Generator.from_path(with_generation_config(tiny_qwen3_dir, tmp_path / "m", **fields))
    kw = {"temperature": 1.5, "top_p": 0.9, "seed": 7}
    want = gen.generate([CONVS[1]], max_new_tokens=20, **kw)[0]
    assert want.text != plain.generate([CONVS[1]], max_new_tokens=20, **kw)[0].text  # the warpers matter
    cli, run = Client(), Run(gen)
    lane = Lane(gen.model, gen.pad_token_id, multi_adapter=False, prefill_tokens=512)
    job = cli.job(gen.name, CONVS[1], max_tokens=20, **kw)
    others = [cli.job(gen.name, CONVS[0], max_tokens=20), cli.job(gen.name, CONVS[3], max_tokens=20, temperature=1.0)]
    drive(lane, {0: [(others[0], run)], 1: [(job, run), (others[1], run)]})
    assert answer(cli.items(job))[1].text == want.text


def test_settings_a_batch_row_cannot_honour_are_refused_at_startup_by_field_and_run(tmp_path, tiny_qwen3_dir):
    from chattune.config import ServeConfig
    from chattune.errors import ConfigError
    from chattune.infer.engine_hf import HfEngine

    folder = with_generation_config(tiny_qwen3_dir, tmp_path / "beams", num_beams=3, max_time=5.0,
                                    repetition_penalty=1.1)
    with pytest.raises(ConfigError) as e:
        HfEngine([Generator.from_path(folder)], ServeConfig())
    msg = str(e.value)
    assert f"{folder}/generation_config.json sets num_beams=3 (beam_search" in msg and "max_time=5.0" in msg
    assert "repetition_penalty" not in msg  # what a row can apply is not listed


def test_admitting_a_row_logs_nothing_generate_would_not(smollm2_gguf, capfd):
    # generate sets max_length from max_new_tokens silently when the config sets no max_length; a row
    # built the same way must too (SmolLM2's config, made from its model config, drew a warning per request)
    gen = Generator.from_path(smollm2_gguf)
    cli, run = Client(), Run(gen)
    lane = Lane(gen.model, gen.pad_token_id, multi_adapter=False, prefill_tokens=512)
    capfd.readouterr()
    drive(lane, {0: [(cli.job(gen.name, CONVS[0], max_tokens=2), run)]})
    assert "max_length" not in capfd.readouterr().err


@pytest.mark.slow  # a GGUF export and two llama.cpp loads
def test_llamacpp_takes_the_runs_top_k_and_refuses_what_it_cannot_apply(tmp_path_factory, tiny_qwen3_dir):
    from chattune.config import ServeConfig
    from chattune.errors import ConfigError
    from chattune.export.run import export
    from chattune.infer.engine import Sampling
    from chattune.infer.engine_llamacpp import LlamaCppEngine
    from tests.export.conftest import make_run
    from tests.infer.jobs import answer as job_answer
    from tests.infer.jobs import collect, greedy
    from tests.infer.jobs import run as run_async

    run_dir = make_run(tmp_path_factory.mktemp("llamacpp_gen") / "run", tiny_qwen3_dir)
    export(run_dir, to="gguf", quant="f16", verify=False)
    gc = run_dir / "generation_config.json"
    base = json.loads(gc.read_text())
    hot = Sampling(max_new_tokens=16, temperature=1.5, top_p=1.0, seed=3, stop=())

    def greedy_and_hot() -> tuple[str, str]:
        eng = LlamaCppEngine.from_paths([str(run_dir)], ServeConfig())
        eng.start()
        try:
            async def ask():
                return [await collect(eng, "run", CONVS[2], stream=False, sampling=s) for s in (greedy(16), hot)]

            cold_text, hot_text = (job_answer(items)[1].text for items in run_async(ask()))
            return cold_text, hot_text
        finally:
            eng.stop()

    cold_text, hot_text = greedy_and_hot()
    assert hot_text != cold_text  # sampling hot really departs from greedy...
    gc.write_text(json.dumps({**base, "top_k": 1}))
    cold_text, hot_text = greedy_and_hot()
    assert hot_text == cold_text  # ...unless the run's top_k is 1
    gc.write_text(json.dumps({**base, "top_k": 7, "repetition_penalty": 1.3}))
    with pytest.raises(ConfigError) as e:
        LlamaCppEngine.from_paths([str(run_dir)], ServeConfig())
    assert f"{gc} sets repetition_penalty=1.3, which the llamacpp engine" in str(e.value)

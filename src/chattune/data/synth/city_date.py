"""City + date → JSON extraction: the task of the Chinese SFT tutorials (github.com/owenliang/qwen-sft).

A user sentence such as ``你们3月7号去大连市玩吗？`` must become
``{"city": "大连市", "date": "03-07"}``; with a year in the sentence the date is ``YYYY-MM-DD``.
Month and day are written the way people write them (unpadded) in the sentence and zero-padded
(like ``strftime``) in the answer, so the model learns the normalisation, not a copy.
"""
from __future__ import annotations

import calendar
import json
import random
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ._unique import draw_unique

# (template, has_year). The first twelve follow the tutorial's phrasings; the rest add variety in
# where the city and date sit and in the date's spelling (号/日, "3-15号").
PHRASINGS: tuple[tuple[str, bool], ...] = (
    ("{city}{year}年{month}月{day}日的天气", True),
    ("{city}{year}年{month}月{day}号的天气", True),
    ("{city}{month}月{day}日的天气", False),
    ("{city}{month}月{day}号的天气", False),
    ("{year}年{month}月{day}日{city}的天气", True),
    ("{year}年{month}月{day}号{city}的天气", True),
    ("{month}月{day}日{city}的天气", False),
    ("{month}月{day}号{city}的天气", False),
    ("你们{year}年{month}月{day}日去{city}玩吗？", True),
    ("你们{year}年{month}月{day}号去{city}玩么？", True),
    ("你们{month}月{day}日去{city}玩吗？", False),
    ("你们{month}月{day}号去{city}玩吗？", False),
    ("{city}{month}-{day}号天气预报", False),
    ("{month}月{day}号下雪么，城市是{city}", False),
    ("{city}{year}年{month}月{day}号有雾霾么？", True),
    ("我打算{month}月{day}号去{city}旅游，请问天气怎么样？", False),
    ("你们打算{month}月{day}号坐哪一趟航班去{city}？", False),
    ("{year}年{month}月{day}日{city}会下雨吗？", True),
)

PROMPTS = {
    # Short on purpose: the demo trains a 135M model on CPU and every prompt token costs time.
    "short": "提取城市和日期，输出JSON：{sentence}",
    # The tutorial's long step-by-step prompt.
    "steps": ("给定一句话：“{sentence}”，请你按步骤要求工作。步骤1：识别这句话中的城市和日期共2个信息\n"
              "步骤2：根据城市和日期信息，生成JSON字符串，格式为{{\"city\":城市,\"date\":日期}}\n"
              "请问，这个JSON字符串是："),
}

YEARS = (1990, 2025)


@lru_cache(maxsize=1)
def load_cities() -> tuple[str, ...]:
    """City names shipped with the package (``cities.txt``, from owenliang/qwen-sft city.txt).

    Returns:
        The names in file order, comments and blank lines dropped.
    """
    text = resources.files("chattune.data.synth").joinpath("cities.txt").read_text(encoding="utf-8")
    return tuple(ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))


def make_prompt(sentence: str, prompt: str = "short") -> str:
    """The full user prompt for one sentence.

    Args:
        sentence: the bare sentence holding a city and a date.
        prompt: "short" (one-line instruction) or "steps" (the tutorial's step-by-step prompt).

    Returns:
        The prompt text.
    """
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {sorted(PROMPTS)}, got {prompt!r}")
    return PROMPTS[prompt].format(sentence=sentence)


def _one(rng: random.Random, cities: tuple[str, ...]) -> tuple[str, str]:
    template, has_year = PHRASINGS[rng.randrange(len(PHRASINGS))]
    city = cities[rng.randrange(len(cities))]
    year = rng.randint(*YEARS)
    month = rng.randint(1, 12)
    # Any real day of that month (the tutorial stopped at 28); Feb 29 only in leap years.
    day = rng.randint(1, calendar.monthrange(year, month)[1])
    sentence = template.format(city=city, year=year, month=month, day=day)
    date = f"{year:04d}-{month:02d}-{day:02d}" if has_year else f"{month:02d}-{day:02d}"
    return sentence, json.dumps({"city": city, "date": date}, ensure_ascii=False)


def generate_city_date(n: int, seed: int = 0, *, prompt: str = "short",
                       n_test: int = 0) -> tuple[list[dict], list[dict]]:
    """Generate city+date extraction examples, deterministic for a seed.

    Sentences are unique across both lists, so no test sentence is ever seen in training.
    The first `n` unique sentences form the train list and the next `n_test` the test list, so
    the train rows for a seed do not change when `n_test` changes.

    Args:
        n: number of train rows.
        seed: seed of the `random.Random` that draws phrasing, city and date.
        prompt: "short" or "steps" (see `PROMPTS`).
        n_test: number of held-out test rows.

    Returns:
        ``(train_rows, test_rows)``; each row is ``{"prompt": full user prompt, "completion":
        JSON string, "sentence": bare sentence}``.
    """
    if n < 0 or n_test < 0:
        raise ValueError(f"n and n_test must be >= 0, got n={n}, n_test={n_test}")
    make_prompt("", prompt)  # validate the prompt name before the loop
    rng = random.Random(seed)
    cities = load_cities()

    def draw() -> tuple[str, dict]:
        sentence, completion = _one(rng, cities)
        return sentence, {"prompt": make_prompt(sentence, prompt), "completion": completion, "sentence": sentence}

    rows = draw_unique(n + n_test, draw)  # ~10^8 sentences: duplicates are rare
    return rows[:n], rows[n:]


def write_city_date(rows: list[dict], path: str | Path) -> int:
    """Write rows atomically: .jsonl keeps prompt/completion/sentence; .xlsx has Prompt/Completion columns
    written by pandas with its index (the tutorials' ``train.xlsx``); .json is an array of the rows.

    Returns:
        The number of rows written.
    """
    from ..convert import write_records

    if Path(path).suffix.lower() == ".xlsx":
        rows = [{"Prompt": r["prompt"], "Completion": r["completion"]} for r in rows]
    return write_records(rows, path)


def make_city_date_files(out: str | Path, n: int, seed: int = 0, *, prompt: str = "short", n_test: int = 0,
                         test_out: str | Path | None = None) -> dict[str, int]:
    """Generate and write a train file (and a test file when `n_test` > 0).

    Args:
        out: train file (.jsonl, .json or .xlsx).
        n, seed, prompt, n_test: as in `generate_city_date`.
        test_out: test file; required when `n_test` > 0.

    Returns:
        ``{"train": rows written, "test": rows written}``.

    Raises:
        DataError: a bad suffix, `n_test` without `test_out`, or the same path twice; nothing is written.
    """
    from ...errors import DataError
    from ..convert import OUT_SUFFIXES
    from ._files import check_outputs

    check_outputs(out, test_out, n_test, OUT_SUFFIXES)
    try:
        train, test = generate_city_date(n, seed, prompt=prompt, n_test=n_test)
    except ValueError as e:
        raise DataError(str(e)) from None
    counts = {"train": write_city_date(train, out), "test": 0}
    if test_out is not None:
        counts["test"] = write_city_date(test, test_out)
    return counts

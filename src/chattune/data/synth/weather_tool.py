"""Weather tool calling: the city + date sentences of `city_date`, answered by calling ``get_weather``.

A user asking about the weather (``大连市3月7号的天气``) gets an assistant turn that calls
``get_weather(city="大连市", date="03-07")`` (arguments normalised as `city_date` writes its JSON), the
tool's result, and a final answer that reads the result back. Other rows must be answered without a tool:
city + date sentences that ask no weather question (``你们3月7号去大连市玩吗？``) and small questions
about a city name or a month. Every row declares the tool (OpenAI ``tools`` shape), so the model learns
when to call, not only how. Rows are OpenAI ``messages`` with ``tool_calls`` and ``tool`` messages.
"""
from __future__ import annotations

import calendar
import json
import random
from pathlib import Path

from ._unique import draw_unique
from .city_date import PHRASINGS, YEARS, load_cities

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather",
    "description": "查询某个城市某一天的天气预报。",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "城市名，照用户的写法，如 大连市"},
        "date": {"type": "string", "description": "日期：MM-DD；用户说了年份时 YYYY-MM-DD"}},
        "required": ["city", "date"]}}}
COMPACT_TOOL = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "date": {"type": "string"}},
                   "required": ["city", "date"]}}}
# The phrasings that ask about the weather (a call), and those that do not (an answer without a tool).
_WEATHER_WORDS = ("天气", "下雪", "雾霾", "下雨")
ASKS_WEATHER = tuple(p for p in PHRASINGS if any(w in p[0] for w in _WEATHER_WORDS))
NO_WEATHER = tuple(p for p in PHRASINGS if p not in ASKS_WEATHER)
CONDITIONS = ("晴", "多云", "阴", "小雨", "中雨", "雷阵雨", "小雪", "雾")


def _date_args(rng: random.Random, has_year: bool) -> tuple[dict, str]:
    year = rng.randint(*YEARS)
    month = rng.randint(1, 12)
    day = rng.randint(1, calendar.monthrange(year, month)[1])
    date = f"{year:04d}-{month:02d}-{day:02d}" if has_year else f"{month:02d}-{day:02d}"
    return {"year": year, "month": month, "day": day}, date


def _call_row(rng: random.Random, cities: tuple[str, ...]) -> tuple[str, list[dict]]:
    template, has_year = ASKS_WEATHER[rng.randrange(len(ASKS_WEATHER))]
    city = cities[rng.randrange(len(cities))]
    parts, date = _date_args(rng, has_year)
    sentence = template.format(city=city, **parts)
    low = rng.randint(-15, 28)
    result = {"city": city, "date": date, "weather": CONDITIONS[rng.randrange(len(CONDITIONS))],
              "temperature": f"{low}~{low + rng.randint(3, 12)}℃"}
    call_id = "call_0"
    return sentence, [
        {"role": "user", "content": sentence},
        {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function", "function": {
            "name": "get_weather", "arguments": {"city": city, "date": date}}}]},
        {"role": "tool", "tool_call_id": call_id, "name": "get_weather", "content": json.dumps(result, ensure_ascii=False)},
        {"role": "assistant", "content": f"{city} {date}：{result['weather']}，{result['temperature']}。"},
    ]


def _answer_row(rng: random.Random, cities: tuple[str, ...]) -> tuple[str, list[dict]]:
    city = cities[rng.randrange(len(cities))]
    kind = rng.randrange(3)
    if kind == 0:  # a city and a date, but no weather question
        template, has_year = NO_WEATHER[rng.randrange(len(NO_WEATHER))]
        parts, _ = _date_args(rng, has_year)
        sentence = template.format(city=city, **parts)
        answer = f"我是AI助手，不会出行。需要的话，我可以查询{city}那天的天气。"
    elif kind == 1:
        sentence = rng.choice(("“{c}”这个名字有几个字？", "{c}这个地名一共几个字？")).format(c=city)
        answer = f"“{city}”有{len(city)}个字。"
    else:
        month = rng.randint(1, 12)
        sentence = rng.choice(("{m}月有多少天？", "一年中的{m}月有几天？")).format(m=month)
        days = calendar.monthrange(2025, month)[1]
        answer = "平年28天，闰年29天。" if month == 2 else f"{month}月有{days}天。"
    return sentence, [{"role": "user", "content": sentence}, {"role": "assistant", "content": answer}]


def generate_weather_tool(n: int, seed: int = 0, *, n_test: int = 0, answer_share: float = 0.3,
                          decision_only: bool = False, compact: bool = False) -> tuple[list[dict], list[dict]]:
    """Generate weather tool-calling conversations, deterministic for a seed.

    User sentences are unique across both lists. Train rows are whole conversations (the call, the tool
    result, the final answer); test rows end at the decision turn (the call, or the answer without a
    tool), which is what evaluation scores with the tool_calls metric.

    Args:
        n: number of train rows.
        seed: seed of the `random.Random` that draws everything.
        n_test: number of held-out test rows.
        answer_share: share of rows to answer without a tool (0 to 1).
        decision_only: train rows end at the decision turn too (what is scored; a third of the tokens).
        compact: declare `COMPACT_TOOL` (no descriptions) instead of `WEATHER_TOOL`: the schema is in every
            prompt, and on a small model's CPU run every prompt token costs time.

    Returns:
        ``(train_rows, test_rows)``; each row is ``{"messages": [...], "tools": [the tool]}``. The same seed draws
        the same sentences whatever `decision_only` and `compact` say.
    """
    if n < 0 or n_test < 0 or not 0 <= answer_share <= 1:
        raise ValueError(f"n and n_test must be >= 0 and answer_share in [0, 1], got n={n}, n_test={n_test}, "
                         f"answer_share={answer_share}")
    rng = random.Random(seed)
    cities = load_cities()
    tool = COMPACT_TOOL if compact else WEATHER_TOOL
    # only the small questions repeat (a few hundred of them)
    rows = draw_unique(n + n_test, lambda: (_answer_row if rng.random() < answer_share else _call_row)(rng, cities),
                       hint="lower answer_share or n")
    return ([{"messages": m[:2] if decision_only else m, "tools": [tool]} for m in rows[:n]],
            [{"messages": m[:2], "tools": [tool]} for m in rows[n:]])  # test rows: up to the first assistant turn


def make_weather_tool_files(out: str | Path, n: int, seed: int = 0, *, n_test: int = 0,
                            test_out: str | Path | None = None, answer_share: float = 0.3,
                            decision_only: bool = False, compact: bool = False) -> dict[str, int]:
    """Generate and write a train file (and a test file when `n_test` > 0) as .jsonl or .json.

    Args:
        out, test_out: the train and test files.
        n, seed, n_test, answer_share, decision_only, compact: as in `generate_weather_tool`.

    Returns:
        ``{"train": rows written, "test": rows written}``.

    Raises:
        DataError: a suffix other than .jsonl/.json, `n_test` without `test_out` (or the reverse), the same
            path twice, or bad counts; nothing is written.
    """
    from ...errors import DataError
    from ..convert import write_records
    from ._files import check_outputs

    check_outputs(out, test_out, n_test, (".jsonl", ".json"), why="tool conversations need .jsonl or .json")
    try:
        train, test = generate_weather_tool(n, seed, n_test=n_test, answer_share=answer_share,
                                            decision_only=decision_only, compact=compact)
    except ValueError as e:
        raise DataError(str(e)) from None
    counts = {"train": write_records(train, out), "test": 0}
    if test_out is not None:
        counts["test"] = write_records(test, test_out)
    return counts

"""City + date generator: determinism, phrasings, valid zero-padded dates, no train/test overlap."""
from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from chattune.data.synth import PHRASINGS, PROMPTS, generate_city_date, load_cities, make_prompt


def _pattern(template: str) -> re.Pattern:
    out = re.escape(template)
    for name, rx in (("city", r"(?P<city>\D+?)"), ("year", r"(?P<year>\d{4})"),
                     ("month", r"(?P<month>\d{1,2})"), ("day", r"(?P<day>\d{1,2})")):
        out = out.replace(re.escape("{" + name + "}"), rx)
    return re.compile(out)


PATTERNS = [(_pattern(t), has_year) for t, has_year in PHRASINGS]


def test_cities_ship_with_the_package():
    cities = load_cities()
    assert len(cities) > 300 and len(set(cities)) == len(cities)
    assert {"北京", "上海", "青岛市", "大连市"} <= set(cities)
    assert not {"市辖区", "县", "省直辖县级行政区划"} & set(cities)
    assert all(not re.search(r"\d|\s", c) for c in cities)


def test_deterministic_for_a_seed():
    a = generate_city_date(200, seed=3, n_test=20)
    assert a == generate_city_date(200, seed=3, n_test=20)
    assert a[0] != generate_city_date(200, seed=4, n_test=20)[0]
    # The train rows do not depend on how many test rows are asked for.
    assert generate_city_date(200, seed=3)[0] == a[0]


def test_rows_parse_to_valid_zero_padded_dates_and_many_phrasings():
    train, test = generate_city_date(1500, seed=0, n_test=300)
    cities = set(load_cities())
    used = set()
    for row in train + test:
        assert row["prompt"] == make_prompt(row["sentence"]) == "提取城市和日期，输出JSON：" + row["sentence"]
        answer = json.loads(row["completion"])
        assert row["completion"] == json.dumps(answer, ensure_ascii=False) and set(answer) == {"city", "date"}
        matches = [(i, m, y) for i, (p, y) in enumerate(PATTERNS)
                   if (m := p.fullmatch(row["sentence"])) and m["city"] in cities]
        assert matches, row["sentence"]
        i, m, has_year = matches[0]
        used.add(i)
        month, day = int(m["month"]), int(m["day"])
        assert answer["city"] == m["city"]
        if has_year:
            year = int(m["year"])
            assert 1990 <= year <= 2025
            dt.date(year, month, day)  # raises on Feb 30 etc.
            assert answer["date"] == f"{year:04d}-{month:02d}-{day:02d}"
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", answer["date"])
        else:
            dt.date(2000, month, day)  # a leap year: Feb 29 is a real date without a year
            assert answer["date"] == f"{month:02d}-{day:02d}" and re.fullmatch(r"\d{2}-\d{2}", answer["date"])
    assert len(PHRASINGS) >= 12 and len(used) >= 12
    assert any(re.search(r"(?<!\d)\d月", r["sentence"]) for r in train)  # unpadded as people write it


def test_no_sentence_in_both_splits_and_no_repeats():
    train, test = generate_city_date(800, seed=1, n_test=200)
    assert (len(train), len(test)) == (800, 200)
    sentences = [r["sentence"] for r in train + test]
    assert len(set(sentences)) == len(sentences)


def test_steps_prompt_and_bad_arguments():
    train, _ = generate_city_date(3, seed=0, prompt="steps")
    p = train[0]["prompt"]
    assert p.startswith("给定一句话：“" + train[0]["sentence"] + "”，请你按步骤要求工作。")
    assert '格式为{"city":城市,"date":日期}' in p and p.endswith("请问，这个JSON字符串是：")
    assert set(PROMPTS) == {"short", "steps"}
    with pytest.raises(ValueError, match="prompt must be one of"):
        generate_city_date(3, prompt="long")
    with pytest.raises(ValueError):
        generate_city_date(-1)

"""Task metrics on (prediction, reference) strings: each returns a score in [0, 1].

* `exact`: equal after trimming surrounding whitespace.
* `contains`: the trimmed reference occurs in the prediction.
* `json_fields`: the prediction parses as a JSON object (surrounding whitespace and one ```json fence
  tolerated); per-field exact match against the reference object, all-fields match, invalid count.
* `rouge_l`: ROUGE-L F1 (LCS-based, beta = 1, as rouge-score and Lin 2004 with equal weights).
* `bleu4`: sentence BLEU-4, uniform weights, brevity penalty against the one reference, smoothed with
  NIST geometric smoothing (NLTK `SmoothingFunction().method3`, which LLaMA-Factory and ms-swift
  report): an n-gram order with no match counts 1 / (2^k * hyp_ngrams) instead of 0, k = 1, 2, ...
  for successive orders with no match; no unigram match at all scores 0.

Tokens for ROUGE/BLEU: characters (whitespace dropped) when either text holds CJK characters,
else whitespace-separated words — so Chinese is scored per character as peers do.
Peers multiply ROUGE/BLEU by 100; we keep every metric in [0, 1].

Own code rather than nltk/rouge-chinese: each is ~20 lines, and those packages pull jieba/nltk data.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable

_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?[ \t]*```$", re.DOTALL)
_CJK = re.compile(r"[\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
                  r"\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0002ffff]")


# ----------------------------------------------------------------------------------------- simple

def exact(prediction: str, reference: str) -> float:
    """1.0 when prediction and reference are equal after trimming surrounding whitespace."""
    return float(prediction.strip() == reference.strip())


def contains(prediction: str, reference: str) -> float:
    """1.0 when the trimmed reference occurs in the prediction (an empty reference always does)."""
    return float(reference.strip() in prediction)


# ------------------------------------------------------------------------------------------- JSON

def parse_json_object(text: str) -> dict | None:
    """Parse `text` as one JSON object, tolerating surrounding whitespace and a ```json fence.

    Returns:
        The dict, or None when the text is not a JSON object.
    """
    s = text.strip()
    m = _FENCE.match(s)
    if m:
        s = m.group(1).strip()
    try:
        obj = json.loads(s)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _same(a, b) -> bool:
    # JSON-typed equality: 1 == true and 1 == 1.0 are equal in Python, but a model writing `true` for `1`
    # (or "1" for 1) got the field wrong; int vs float of the same value counts as the same number.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def json_fields_detail(prediction: str, reference: str) -> dict:
    """Compare a predicted JSON object with the reference object field by field.

    Args:
        prediction: model output.
        reference: the reference answer; it must be a JSON object.

    Returns:
        ``{"valid": bool, "all": 0.0|1.0, "fields": {name: 0.0|1.0 for each reference field}}``.
        ``all`` is 1 only when the objects are equal (same keys, same values, no extra keys).

    Raises:
        ValueError: the reference is not a JSON object (json_fields needs JSON references).
    """
    ref = parse_json_object(reference)
    if ref is None:
        raise ValueError(f"json_fields needs references that are JSON objects, found {reference[:80]!r}")
    pred = parse_json_object(prediction)
    if pred is None:
        return {"valid": False, "all": 0.0, "fields": {k: 0.0 for k in ref}}
    fields = {k: float(k in pred and _same(pred[k], v)) for k, v in ref.items()}
    return {"valid": True, "all": float(_same(pred, ref)), "fields": fields}


def json_fields(prediction: str, reference: str) -> float:
    """1.0 when the prediction is a JSON object equal to the reference object (all fields right)."""
    return json_fields_detail(prediction, reference)["all"]


# ------------------------------------------------------------------------------------ ROUGE / BLEU

def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


def tokenize(text: str, *, chars: bool | None = None) -> list[str]:
    """Characters without whitespace when `chars` (default: the text holds CJK), else whitespace words."""
    if chars is None:
        chars = has_cjk(text)
    return [c for c in text if not c.isspace()] if chars else text.split()


def _pair_tokens(prediction: str, reference: str) -> tuple[list[str], list[str]]:
    chars = has_cjk(prediction) or has_cjk(reference)
    return tokenize(prediction, chars=chars), tokenize(reference, chars=chars)


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: 2PR/(P+R) with P = LCS/len(prediction), R = LCS/len(reference) over tokens.

    Both empty scores 1.0; one empty scores 0.0.
    """
    hyp, ref = _pair_tokens(prediction, reference)
    if not hyp or not ref:
        return float(not hyp and not ref)
    lcs = _lcs(hyp, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu4(prediction: str, reference: str) -> float:
    """Sentence BLEU-4 with NIST geometric smoothing (NLTK method3); see the module docstring."""
    hyp, ref = _pair_tokens(prediction, reference)
    if not hyp or not ref:
        return float(not hyp and not ref)
    log_p = 0.0
    k = 0
    for n in range(1, 5):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        total = max(1, sum(h.values()))
        match = sum(min(c, r[g]) for g, c in h.items())
        if match == 0:
            if n == 1:
                return 0.0
            k += 1
            log_p += math.log(1 / (2 ** k * total))
        else:
            log_p += math.log(match / total)
    bp = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return bp * math.exp(log_p / 4)


# ----------------------------------------------------------------------------------- row + aggregate

METRICS: dict[str, Callable[[str, str], float]] = {
    "exact": exact, "contains": contains, "json_fields": json_fields, "rouge_l": rouge_l, "bleu4": bleu4,
}


def check_metrics(names: Iterable[str]) -> list[str]:
    """Validate metric names ("loss" is computed by the evaluator, not here); raise ValueError on unknown."""
    names = list(names)
    bad = [n for n in names if n not in METRICS and n != "loss"]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; choose from {sorted([*METRICS, 'loss'])}")
    return names


def score_row(prediction: str, reference: str, metrics: Iterable[str]) -> dict:
    """Every requested metric for one example (json_fields adds ``json_valid`` and ``json_field_scores``)."""
    out: dict = {}
    for name in metrics:
        if name == "loss":
            continue
        if name == "json_fields":
            d = json_fields_detail(prediction, reference)
            out["json_fields"] = d["all"]
            out["json_valid"] = float(d["valid"])
            out["json_field_scores"] = d["fields"]
        else:
            out[name] = METRICS[name](prediction, reference)
    return out


def aggregate(rows: list[dict]) -> dict:
    """Mean of each per-row score; for json_fields also the invalid count and per-field accuracy.

    Args:
        rows: outputs of `score_row`.

    Returns:
        ``{metric: mean}``, plus with json_fields: ``json_invalid`` (count), ``json_field_acc`` (share of
        all reference fields right) and ``json_field/<name>`` (accuracy of each field).
    """
    if not rows:
        return {}
    out: dict = {}
    for key in rows[0]:
        if key == "json_field_scores":
            continue
        out[key] = sum(r[key] for r in rows) / len(rows)
    if "json_valid" in out:
        out["json_invalid"] = sum(1 for r in rows if not r["json_valid"])
        per: dict[str, list[float]] = {}
        for r in rows:
            for k, v in r["json_field_scores"].items():
                per.setdefault(k, []).append(v)
        total = sum(len(v) for v in per.values())
        out["json_field_acc"] = sum(sum(v) for v in per.values()) / total if total else 0.0
        for k, v in per.items():
            out[f"json_field/{k}"] = sum(v) / len(v)
    return out

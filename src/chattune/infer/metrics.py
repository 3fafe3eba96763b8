"""Task metrics on (prediction, reference) strings: each returns a score in [0, 1].

* `exact`: equal after trimming surrounding whitespace.
* `contains`: the trimmed reference occurs in the prediction.
* `json_fields`: the prediction parses as a JSON object (surrounding whitespace and one ```json fence
  tolerated); per-field exact match against the reference object, all-fields match, invalid count.
* `tool_calls`: the calls a model made (function names and parsed arguments, in order) against the reference
  assistant turn's calls: exact match, names only, per-argument accuracy like `json_fields`, and the two
  wrong decisions (answered when it should have called; called when it should have answered). The text is
  parsed into calls by `chattune.infer.tool_calls` (the evaluator does it, with the template's format).
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
from collections.abc import Callable, Iterable, Sequence

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


# ------------------------------------------------------------------------------------- tool calls

Call = tuple[str, dict]  # (function name, arguments object)


def reference_calls(message: dict) -> list[Call]:
    """The calls of a reference assistant message in the conversation shape (`chattune.data.tools`).

    Raises:
        ValueError: a call whose arguments are not a JSON object (the evaluator names the file and row).
    """
    out = []
    for tc in message.get("tool_calls") or []:
        fn = tc.get("function", tc) if isinstance(tc, dict) else {}
        args = fn.get("arguments", {})
        if isinstance(args, str):
            args = parse_json_object(args) if args.strip() else {}
        if not isinstance(fn.get("name"), str) or not isinstance(args, dict):
            raise ValueError(f"tool_calls needs reference calls with a name and a JSON object of arguments, "
                             f"found {json.dumps(tc, ensure_ascii=False, default=str)[:120]}")
        out.append((fn["name"], args))
    return out


def tool_calls_detail(predicted: Sequence[Call], reference: Sequence[Call], *, malformed: bool = False) -> dict:
    """Compare the calls a model made with the reference turn's calls.

    Args:
        predicted: the parsed calls, in order (empty: the model answered in prose).
        reference: the reference turn's calls (empty: it should answer without a tool).
        malformed: the model began a call that could not be read: it called (wrongly), never right.

    Returns:
        ``{"calls": 1.0 when names and arguments all equal (no call on both sides counts equal), "names": the
        same on names only, "expected": reference calls, "called": the model called (malformed included),
        "malformed", "args": {"<name>.<argument>": 1.0|0.0 for each reference argument, the call at the same
        position}}``.
    """
    names = not malformed and [n for n, _ in predicted] == [n for n, _ in reference]
    args = {}
    for i, (name, ref_args) in enumerate(reference):
        got = predicted[i] if i < len(predicted) else None
        for k, v in ref_args.items():
            right = got is not None and got[0] == name and k in got[1] and _same(got[1][k], v)
            args[f"{name}.{k}"] = float(right)
    exact = names and all(_same(p[1], r[1]) for p, r in zip(predicted, reference))
    return {"calls": float(exact), "names": float(names), "expected": float(bool(reference)),
            "called": float(bool(predicted) or malformed), "malformed": float(malformed), "args": args}


def _aggregate_tools(rows: list[dict]) -> dict:
    expected = [r for r in rows if r["tool_expected"]]
    out: dict = {
        "tool_calls": sum(r["tool_calls"] for r in rows) / len(rows),
        "tool_names": sum(r["tool_names"] for r in rows) / len(rows),
        # The headline of "does it call the right function": over the rows that should call.
        "tool_call_name_acc": sum(r["tool_names"] for r in expected) / len(expected) if expected else None,
        "tool_expected": len(expected),
        "tool_missed": sum(1 for r in expected if not r["tool_called"]),     # answered, should have called
        # a malformed call counts as a call: on a row that should answer, it is the wrong decision
        "tool_spurious": sum(1 for r in rows if r["tool_called"] and not r["tool_expected"]),  # the reverse
        "tool_malformed": sum(1 for r in rows if r["tool_malformed"]),
    }
    per: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r["tool_arg_scores"].items():
            per.setdefault(k, []).append(v)
    total = sum(len(v) for v in per.values())
    out["tool_arg_acc"] = sum(sum(v) for v in per.values()) / total if total else None
    out.update({f"tool_arg/{k}": sum(v) / len(v) for k, v in per.items()})
    return out


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
# Scored from more than two strings: "loss" by the evaluator's model, "tool_calls" from parsed calls.
STRUCTURED = ("loss", "tool_calls")


def check_metrics(names: Iterable[str]) -> list[str]:
    """Validate metric names; raise ValueError on unknown."""
    names = list(names)
    bad = [n for n in names if n not in METRICS and n not in STRUCTURED]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; choose from {sorted([*METRICS, *STRUCTURED])}")
    return names


def score_row(prediction: str, reference: str, metrics: Iterable[str], *, calls: Sequence[Call] | None = None,
              expected_calls: Sequence[Call] = (), malformed: bool = False) -> dict:
    """Every requested metric for one example (json_fields adds ``json_valid`` and ``json_field_scores``;
    tool_calls needs `calls`, the model's parsed calls, and `expected_calls`/`malformed` as in
    `tool_calls_detail`, and adds ``tool_*`` keys)."""
    out: dict = {}
    for name in metrics:
        if name == "loss":
            continue
        if name == "tool_calls":
            if calls is None:
                raise ValueError("tool_calls needs the calls parsed from the prediction")
            t = tool_calls_detail(calls, expected_calls, malformed=malformed)
            out.update({"tool_calls": t["calls"], "tool_names": t["names"], "tool_expected": t["expected"],
                        "tool_called": t["called"], "tool_malformed": t["malformed"], "tool_arg_scores": t["args"]})
        elif name == "json_fields":
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
        all reference fields right) and ``json_field/<name>`` (accuracy of each field); with tool_calls:
        ``tool_calls`` (exact), ``tool_names``, ``tool_call_name_acc`` (names right among the rows that should
        call; None without such rows), counts ``tool_expected``, ``tool_missed`` (answered when it should
        have called), ``tool_spurious`` (called when it should have answered), ``tool_malformed``, and
        ``tool_arg_acc`` / ``tool_arg/<function>.<argument>`` (per-argument accuracy).
    """
    if not rows:
        return {}
    out: dict = {}
    for key in rows[0]:
        if key == "json_field_scores" or key.startswith("tool_"):
            continue
        out[key] = sum(r[key] for r in rows) / len(rows)
    if "tool_calls" in rows[0]:
        out.update(_aggregate_tools(rows))
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

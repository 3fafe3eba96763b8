"""The tasks `chattune demo --task NAME` can show a model learning: data, recipe and what is scored, per task.

Each recipe lives here (so a fresh clone or an installed wheel needs no file) and is mirrored by an example YAML
(tests/test_demo.py keeps each pair equal). Both are the cheapest recipes tried (``bench/demo_recipe.py`` runs
candidates through `chattune.demo.run_demo` itself) that reach their goal with SmolLM2-135M-Instruct on a CPU:

* ``city-date``: >= 90% exact JSON on 100 held-out sentences (``examples/demo_city_date.yaml``).
* ``weather-tool``: >= 90% of the held-out rows that need get_weather call it, with mostly right arguments, while
  the rows that need no tool are answered (``examples/demo_weather_tool.yaml``). SmolLM2's own template renders no
  tools, so the recipe names the template chattune ships for it (``model.chat_template: smollm2-tools``).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Chosen with bench/demo_recipe.py:
# - lr 2e-3: LoRA on a 135M model learns this task far faster per example than the usual 2e-4.
# - batch 4: twice the optimizer steps for the same tokens (more updates beat bigger ones in one epoch).
# - LoRA dropout 0: one epoch over fresh sentences has nothing to overfit, and dropout costs a random
#   mask per adapted layer and step (peft skips that pass at 0).
# - a short system prompt: without one SmolLM2's template inserts its default (13 more tokens on every
#   training example and every eval prompt).
CITY_DATE_RECIPE: dict[str, Any] = {
    "model": {"name_or_path": "smollm2-135m-instruct"},
    "data": {"system": "Extract JSON.", "max_length": 256},
    "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}},
    "train": {"epochs": 1, "lr": 2.0e-3, "scheduler": "cosine", "warmup_ratio": 0.03, "batch_size": 4,
              "logging_steps": 1, "save_total_limit": 1, "report_to": ["none"], "seed": 42},
    "eval": {"metrics": ["json_fields", "exact"], "max_new_tokens": 56, "batch_size": 50},
}
CITY_DATE_PROMPT = "short"  # chattune.data.synth.city_date prompt wording

# The city-date recipe, on decision turns (the call, or the answer) with the compact schema: the Hermes tools
# block is most of every prompt, so rows stay short only by leaving out what is not scored.
WEATHER_TOOL_RECIPE: dict[str, Any] = {
    "model": {"name_or_path": "smollm2-135m-instruct", "chat_template": "smollm2-tools"},
    "data": {"system": "Weather assistant.", "max_length": 320},
    "method": {"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}},
    "train": {"epochs": 1, "lr": 2.0e-3, "scheduler": "cosine", "warmup_ratio": 0.03, "batch_size": 4,
              "logging_steps": 1, "save_total_limit": 1, "report_to": ["none"], "seed": 42},
    "eval": {"metrics": ["tool_calls"], "max_new_tokens": 72, "batch_size": 50},
}
WEATHER_TOOL_ANSWER_SHARE = 0.5  # half the rows answer: at 0.3 the model learned to call on most of them


@dataclass(frozen=True)
class DemoTask:
    """One demo task.

    Attributes:
        name: the ``--task`` value.
        recipe: the training config (data files and output_dir are filled in by the demo).
        n_train, n_test: default row counts.
        learns: what the model learns, for titles ("city + date → JSON").
        unit: what a row is called in messages ("sentences", "requests").
        data_format: the train file's ``format:`` (None: detected).
        headline: metrics printed after each evaluation; the first present decides an example's ✓.
        synth: writes ``(train_path, n, seed, n_test, test_path)`` and returns ``{"train", "test"}`` counts.
        synth_args: the ``chattune data synth`` arguments that write the same files (without paths).
        data_note: how the data is made, for the report's recipe table.
    """

    name: str
    recipe: dict[str, Any]
    n_train: int
    n_test: int
    learns: str
    unit: str
    data_format: str | None
    headline: tuple[str, ...]
    synth: Callable[[Path, int, int, int, Path], dict[str, int]]
    synth_args: Callable[[int, int, int], str]
    data_note: str


def _city_date_files(train: Path, n: int, seed: int, n_test: int, test: Path) -> dict[str, int]:
    from .data.synth.city_date import make_city_date_files

    return make_city_date_files(train, n, seed, prompt=CITY_DATE_PROMPT, n_test=n_test, test_out=test)


def _weather_tool_files(train: Path, n: int, seed: int, n_test: int, test: Path) -> dict[str, int]:
    from .data.synth.weather_tool import make_weather_tool_files

    return make_weather_tool_files(train, n, seed, n_test=n_test, test_out=test, answer_share=WEATHER_TOOL_ANSWER_SHARE,
                                   decision_only=True, compact=True)


TASKS: dict[str, DemoTask] = {t.name: t for t in (
    DemoTask("city-date", CITY_DATE_RECIPE, 300, 100, "city + date → JSON", "sentences", "prompt_completion",
             ("exact", "json_fields"), _city_date_files,
             lambda n, seed, n_test: f"city-date --n {n} --seed {seed} --prompt {CITY_DATE_PROMPT} --split {n_test}",
             f"city_date '{CITY_DATE_PROMPT}' prompt"),
    DemoTask("weather-tool", WEATHER_TOOL_RECIPE, 240, 100, "to call get_weather(city, date)", "requests", None,
             ("tool_call_name_acc", "tool_arg_acc", "tool_calls"), _weather_tool_files,
             lambda n, seed, n_test: f"weather-tool --n {n} --seed {seed} --split {n_test} --answer-share "
                                     f"{WEATHER_TOOL_ANSWER_SHARE} --decision-only --compact",
             f"weather_tool, decision turns, compact schema, answer share {WEATHER_TOOL_ANSWER_SHARE}"),
)}


def demo_task(name: str) -> DemoTask:
    """The task called `name`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in TASKS:
        raise ValueError(f"--task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]


def shown_reference(row: dict) -> str:
    """An evaluated row's reference as the examples table shows it: the reference calls when it has them."""
    calls = row.get("reference_tool_calls")
    return json.dumps(calls, ensure_ascii=False) if calls else row["reference"]


__all__ = ["CITY_DATE_RECIPE", "TASKS", "WEATHER_TOOL_RECIPE", "DemoTask", "demo_task", "shown_reference"]

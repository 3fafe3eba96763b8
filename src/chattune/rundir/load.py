"""Load a trained model back for inference: a run dir, a merged folder, or any model chattune can generate with.

For a run dir the tokenizer and chat template are the run's own, so inference renders exactly as training
did, and the adapter is checked tensor by tensor against its file: a run loads with exactly its adapter or
not at all (peft only warns about adapter tensors it could not place, and then runs the base model).
"""
from __future__ import annotations

import copy
import warnings as warnings_module
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import Config, ModelConfig
from ..data.render import inference_thinking
from ..errors import ModelError
from .layout import ADAPTER_FILE, GENERATION_FILE, TEMPLATE_FILE, TOKENIZER_CONFIG_FILE, is_run_dir
from .read import read_merge_report, read_run


@dataclass(frozen=True)
class LoadInfo:
    """What was loaded and how (see `load_run`).

    Attributes:
        kind: "adapter" (base + the run's adapter), "full" (a full/freeze run's weights) or "model" (any
            other folder, GGUF or Hub id; a `chattune merge` output included).
        path: what was asked for.
        base: the base model the run trained (the path itself for a plain model).
        method: the run's method (lora/qlora/full/freeze), None for a plain model.
        thinking: "off"/"keep", what inference renders with after the run's data.thinking
            (`chattune.data.render.inference_thinking`: a ``mixed`` run answers with thinking on by default).
        device: where the weights are.
        dtype: the weights' dtype ("float32", "bfloat16", ...).
        eos_token_ids: ids generation stops on (end-of-turn first), see `stop_token_ids`.
        pad_token_id: the tokenizer's pad id (never an end-of-turn id).
        chat_template: the template inference renders with (the run's own for a run dir).
        config: the run's resolved config (None for a plain model).
        quantised: a QLoRA run's base: "nf4" (kept 4-bit), "nf4-dequantised", or None.
        warnings: things the user should know, e.g. an adapter that changes nothing.
        system: the system prompt the run trained with (its most common one, `read.SystemPrompts`), or None.
        date: the day a date-writing template was pinned to in training (``data.date``), or None.
    """

    kind: str
    path: str
    base: str
    method: str | None
    thinking: str
    device: str
    dtype: str
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    chat_template: str | None
    config: Config | None = None
    quantised: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    system: str | None = None
    date: str | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference (eval mode), its tokenizer, `LoadInfo`, and the transformers
    ``GenerationConfig`` its answers sample with: the run's generation_config.json (over the base's). That is
    the model's own, except for runs added to a model by `load_adapter_into`, which holds the first run's."""

    model: Any
    tokenizer: Any
    info: LoadInfo
    generation_config: Any


def stop_token_ids(generation_config, tokenizer) -> list[int]:
    """Ids that end an answer: the chat template's end-of-turn token(s), then `generation_config`'s EOS ids
    (a run's generation_config.json lists its end-of-turn ids; None: none); the tokenizer's EOS when the
    template writes none."""
    from ..data.render import end_of_turn_ids
    from ..errors import TemplateError

    def as_list(x) -> list[int]:
        if x is None:
            return []
        return [int(i) for i in x if i is not None] if isinstance(x, (list, tuple)) else [int(x)]

    try:
        ids = list(end_of_turn_ids(tokenizer))
    except TemplateError:
        ids = as_list(tokenizer.eos_token_id)
    ids += as_list(getattr(generation_config, "eos_token_id", None))
    return list(dict.fromkeys(ids))


def run_tokenizer(run_dir: Path, model_cfg: ModelConfig):
    """The tokenizer saved in the run dir, with the run dir's chat template: what training rendered with."""
    from transformers import AutoTokenizer

    from ..data.render import apply_template_override
    from ..model.load import ensure_pad_token, load_tokenizer

    if not (run_dir / TOKENIZER_CONFIG_FILE).is_file():
        return load_tokenizer(model_cfg)  # a run dir written before the tokenizer: fall back to the base's
    tok = AutoTokenizer.from_pretrained(run_dir, trust_remote_code=model_cfg.trust_remote_code)
    tpl = run_dir / TEMPLATE_FILE
    apply_template_override(tok, str(tpl) if tpl.is_file() else None)
    ensure_pad_token(tok)  # no-op: training already made it safe and saved it
    return tok


def read_generation_config(folder: str | Path):
    """`folder`'s generation_config.json as a transformers ``GenerationConfig`` (None: the folder has none)."""
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(folder) if (Path(folder) / GENERATION_FILE).is_file() else None


def _generation_config(model, folder: Path):
    """The run's generation config (`folder`'s generation_config.json) for `model`, or None: no such file."""
    gc = read_generation_config(folder)
    if gc is None:
        return None
    pad = model.config.pad_token_id  # chosen by load_model; the file may predate it
    if pad is not None:
        gc.pad_token_id = pad
    return gc


def _apply_generation_config(model, folder: Path) -> None:
    gc = _generation_config(model, folder)
    if gc is not None:
        model.generation_config = gc


def check_adapter_loaded(model, run_dir: Path, adapter_name: str = "default") -> None:
    """Every tensor of the run's adapter file is in the model, with the file's values, and nothing is missing.

    The expected names are what `save_pretrained` writes for this model (peft's
    ``get_peft_model_state_dict``, embedding layers off as `rundir.write.save_final` saves them).

    Raises:
        ModelError: missing, unexpected or unequal tensors (names the first few).
    """
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    path = run_dir / ADAPTER_FILE
    saved = load_file(path)
    have = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    missing = sorted(set(have) - set(saved))
    unexpected = sorted(set(saved) - set(have))
    differ = sorted(k for k in set(saved) & set(have)
                    if have[k].shape != saved[k].shape or not torch.equal(saved[k].to(have[k].dtype), have[k].cpu()))
    if missing or unexpected or differ:
        parts = [f"{len(v)} {what} (e.g. {', '.join(v[:2])})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("not loaded as saved", differ)) if v]
        raise ModelError(f"{path} does not match the adapter its adapter_config.json describes: "
                         f"{'; '.join(parts)}. Loading it would silently run the base model; re-save the adapter "
                         "from its training run (or restore the file).")


def _adapter_changes_nothing(model, tokenizer) -> bool:
    """True when the adapter leaves the base model's logits bit-identical on a short probe prompt."""
    import torch

    from ..data.render import prompt_ids

    ids = torch.tensor([prompt_ids(tokenizer, [{"role": "user", "content": "Hello! Who are you?"}])],
                       device=next(model.parameters()).device)
    with torch.inference_mode():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    return bool(torch.equal(tuned, base))


@dataclass(frozen=True)
class RunText:
    """How a run dir or model folder renders, and what it is, read without its weights: the one route
    `load_run` and the engines that never load the weights (`infer.engine_ids.read_source`) both take.

    Attributes:
        kind: "adapter", "full" or "model" (as `LoadInfo.kind`).
        tokenizer: the run's own tokenizer and chat template (`run_tokenizer`); a folder's own otherwise.
        source: where the weights are: the run dir, or the resolved folder / Hub id of a plain model.
        base, method, system, date, config: as in `LoadInfo`.
        thinking: the policy the run trained with (``data.thinking``; `LoadInfo.thinking` is what inference
            makes of it).
    """

    kind: str
    tokenizer: Any
    source: str
    base: str
    method: str | None
    thinking: str
    system: str | None = None
    date: str | None = None
    config: Config | None = None


def read_run_text(path: str | Path, *, tokenizer=None) -> RunText:
    """Read `path` (a run dir, a model folder, the SmolLM2 alias, a GGUF or a Hub id) as `load_run` renders it.

    Args:
        tokenizer: reuse this tokenizer instead of loading it (it must be the one `path` holds).
    """
    from ..model.load import load_tokenizer, resolve_source

    path_s = str(path)
    if is_run_dir(path_s):
        run = read_run(path_s)
        cfg = run.config
        return RunText(kind="adapter" if run.is_adapter else "full",
                       tokenizer=tokenizer or run_tokenizer(Path(path_s), cfg.model), source=path_s,
                       base=cfg.model.name_or_path, method=cfg.method.type, thinking=cfg.data.thinking,
                       system=run.system_prompts.default, date=cfg.data.date, config=cfg)
    mcfg = ModelConfig(name_or_path=path_s)
    src = resolve_source(mcfg)
    tok = tokenizer or load_tokenizer(mcfg, source=src)
    rep = read_merge_report(src) or {}  # a `chattune merge` output: render as the run was trained
    return RunText(kind="model", tokenizer=tok, source=src, base=rep.get("base", path_s), method=rep.get("method"),
                   thinking=rep.get("thinking") or "off", system=rep.get("system"), date=rep.get("date"))


def load_run(path: str | Path, *, device: str | None = None, dtype: str | None = None,
             tokenizer=None, dequantise: bool | None = None) -> LoadedModel:
    """Load anything chattune can generate with: a run dir, a model folder, the SmolLM2 alias, a GGUF, a Hub id.

    Args:
        path: a chattune run dir (adapter or full weights), a merged/plain HF folder, "smollm2-135m-instruct",
            a .gguf file or a Hub id.
        device: None = CUDA when available (the inference plan decides dtype and attention).
        dtype: overrides the run's model.dtype ("auto", "float32", "bfloat16", "float16" or a torch.dtype).
        tokenizer: reuse this tokenizer instead of loading it again (it must be the one `path` holds;
            merge loads the same run twice and a 151k-token tokenizer costs seconds).
        dequantise: a QLoRA run's 4-bit base: True = dequantised to plain weights (what merging needs),
            False = kept 4-bit; None = dequantised on CPU (same logits, no dequantising per matmul),
            kept 4-bit on CUDA (the memory QLoRA was chosen for).

    Returns:
        A `LoadedModel` with the model in eval mode; for a run dir the tokenizer and chat template are the
        run's own, so inference renders exactly as training did.

    Raises:
        ModelError: not loadable, or the adapter file does not match its config (see `check_adapter_loaded`).
    """
    from ..model.adapters import quiet_peft
    from ..model.load import load_base
    from ..plan import inference_plan

    if dtype is not None and not isinstance(dtype, str):  # a torch.dtype
        dtype = str(dtype).replace("torch.", "")
    path_s = str(path)
    text = read_run_text(path_s, tokenizer=tokenizer)
    tok, cfg = text.tokenizer, text.config
    warnings: list[str] = []
    if cfg is not None:
        mcfg = cfg.model.model_copy(update={"dtype": dtype} if dtype else {})
        # an adapter's base: for QLoRA the 4-bit base it was trained on, never the original weights
        plan = inference_plan(mcfg, device=device, method=cfg.method.type if text.kind == "adapter" else None,
                              dequantise=dequantise)
        run_dir = Path(path_s)
        if text.kind == "adapter":
            from peft import PeftModel

            loaded = load_base(mcfg, plan=plan, tokenizer=tok, prepare_for_training=False)
            base = loaded.model
            _apply_generation_config(base, run_dir)
            with quiet_peft(), warnings_module.catch_warnings():
                # check_adapter_loaded raises a clear error for what peft would only warn about
                warnings_module.filterwarnings("ignore", message="Found missing adapter keys")
                model = PeftModel.from_pretrained(base, run_dir, is_trainable=False)
            check_adapter_loaded(model, run_dir)
            if _adapter_changes_nothing(model, tok):
                warnings.append(f"the adapter in {run_dir} changes nothing: outputs are the base model's "
                                "(every LoRA B matrix is still zero? did training run any step?)")
        else:
            full_cfg = mcfg.model_copy(update={"name_or_path": str(run_dir), "gguf_file": None, "revision": None})
            loaded = load_base(full_cfg, plan=plan, tokenizer=tok, source=str(run_dir))
            model = loaded.model
            _apply_generation_config(model, run_dir)
    else:
        mcfg = ModelConfig(name_or_path=path_s, **({"dtype": dtype} if dtype else {}))
        plan = inference_plan(mcfg, device=device)
        loaded = load_base(mcfg, plan=plan, tokenizer=tok, source=text.source)
        model = loaded.model
    return _loaded(model, tok, plan, loaded.quantised, path_s, kind=text.kind, base=text.base, method=text.method,
                   thinking=text.thinking, config=cfg, warnings=warnings, system=text.system, date=text.date)


def _loaded(model, tok, plan, quantised, path: str, *, kind: str, base: str, method: str | None, thinking: str | None,
            config: Config | None = None, warnings: list[str] | None = None, system: str | None = None,
            date: str | None = None) -> LoadedModel:
    model.eval()
    gc = getattr(model, "generation_config", None)
    info = LoadInfo(kind=kind, path=path, base=base, method=method,
                    thinking=inference_thinking(thinking or "off"),
                    device=plan.device, dtype=plan.dtype,
                    eos_token_ids=tuple(stop_token_ids(gc, tok)), pad_token_id=tok.pad_token_id,
                    chat_template=tok.chat_template if isinstance(tok.chat_template, str) else None,
                    config=config, quantised=quantised,
                    warnings=tuple(warnings or ()), system=system, date=date)
    return LoadedModel(model=model, tokenizer=tok, info=info, generation_config=gc)


def load_untrained(model_cfg: ModelConfig, *, tokenizer=None, device: str | None = None,
                   dtype: str | None = None) -> LoadedModel:
    """The model a config trains, before training, rendering as that config does: the weights `model_cfg` names
    (revision, GGUF file included) with its tokenizer and chat template (``model.chat_template``), no adapter.

    A before/after comparison must differ only in the weights: a run trained with ``model.chat_template`` (a
    SmolLM2 run with the shipped ``smollm2-tools``) compared with its base loaded by name would render the base
    with the base's own template, which may not even carry tools.

    Args:
        model_cfg: the config's model section.
        tokenizer: use this tokenizer (a run's own, `run_tokenizer`) instead of loading the config's.
        device, dtype: as in `load_run`.
    """
    from ..model.load import load_base, load_tokenizer, resolve_source
    from ..plan import inference_plan

    mcfg = model_cfg.model_copy(update={"dtype": dtype} if dtype else {})
    plan = inference_plan(mcfg, device=device)
    src = resolve_source(mcfg)
    tok = tokenizer or load_tokenizer(mcfg, source=src)
    loaded = load_base(mcfg, plan=plan, tokenizer=tok, source=src)
    return _loaded(loaded.model, tok, plan, loaded.quantised, mcfg.name_or_path, kind="model",
                   base=mcfg.name_or_path, method=None, thinking="off")


def load_run_base(run_dir: str | Path, *, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """A run's base model (no adapter, no trained weights) rendering with the run's own tokenizer and chat template:
    what ``eval --compare base`` and the UI's compare-with-base answer with (see `load_untrained`)."""
    run = read_run(run_dir)
    return load_untrained(run.config.model, tokenizer=run_tokenizer(Path(run_dir), run.config.model), device=device,
                          dtype=dtype)


def shares_base(loaded: LoadedModel, path: str | Path) -> bool:
    """Whether `path` is an adapter run dir trained on the same base as `loaded` (an adapter run loaded by
    `load_run`), so `load_adapter_into` can add it to the same model."""
    if loaded.info.kind != "adapter" or not is_run_dir(str(path)):
        return False
    run = read_run(path)
    return (run.is_adapter and run.config.model.name_or_path == loaded.info.base
            and (run.config.method.type == "qlora") == (loaded.info.method == "qlora"))


def load_adapter_into(loaded: LoadedModel, path: str | Path, adapter_name: str) -> LoadedModel:
    """Add the adapter of run dir `path` to `loaded`'s peft model, sharing its base weights (several runs
    served by one model; a forward picks adapters per row with peft's ``adapter_names``).

    Args:
        loaded: an adapter run loaded by `load_run` (its model gains the adapter).
        path: another adapter run dir of the same base (`shares_base`).
        adapter_name: the name the adapter gets in the model (not "default", the first run's).

    Returns:
        A `LoadedModel` with the same model, and `path`'s own tokenizer, chat template and `LoadInfo`.

    Raises:
        ModelError: not an adapter run of that base, or its adapter file does not match its config.
    """
    from ..model.adapters import quiet_peft

    if not shares_base(loaded, path):
        raise ModelError(f"{path} is not a LoRA run of {loaded.info.base}: it cannot share that model's weights")
    run_dir = Path(path)
    run = read_run(run_dir)
    cfg = run.config
    tok = run_tokenizer(run_dir, cfg.model)
    model = loaded.model
    with quiet_peft(), warnings_module.catch_warnings():
        warnings_module.filterwarnings("ignore", message="Found missing adapter keys")
        model.load_adapter(run_dir, adapter_name=adapter_name, is_trainable=False)
    check_adapter_loaded(model, run_dir, adapter_name)
    model.eval()
    # the model keeps the first run's generation config: this run's answers sample with its own
    gc = _generation_config(model, run_dir) or copy.deepcopy(loaded.generation_config)
    info = replace(loaded.info, path=str(path), method=cfg.method.type, thinking=cfg.data.thinking or "off",
                   eos_token_ids=tuple(stop_token_ids(gc, tok)), pad_token_id=tok.pad_token_id,
                   chat_template=tok.chat_template if isinstance(tok.chat_template, str) else None, config=cfg,
                   warnings=(), system=run.system_prompts.default, date=cfg.data.date)
    return LoadedModel(model=model, tokenizer=tok, info=info, generation_config=gc)

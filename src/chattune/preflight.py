"""Checks that need no model, run before any heavy work (GGUF conversion, tokenizer or model loading,
Hub downloads): a typo in a data path or a model source that cannot be reached is said at once,
not after minutes of loading or of Hub retries.
"""
from __future__ import annotations

import re
from pathlib import Path

from .config import Config, ModelConfig
from .errors import DataError, ModelError

# "org/name" or "name": what the Hub accepts as a model id (letters, digits, - _ .)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
HUB_TIMEOUT_S = 10.0


def _hub_model_info(repo_id: str, timeout: float):
    """One Hub API call (a seam for tests: the test machine has no Hub)."""
    from huggingface_hub import HfApi

    return HfApi().model_info(repo_id, timeout=timeout)


def check_model_source(model_cfg: ModelConfig) -> None:
    """Raise `ModelError` when the model cannot be found without loading it.

    A GGUF file or the SmolLM2 alias must exist; an existing folder is used as is; anything else must
    look like a Hub id and be either in the local Hugging Face cache or, when not offline, reachable
    on the Hub (one API call with a short timeout instead of the download retries).
    """
    import huggingface_hub.constants as hub

    from .model.load import gguf_file

    if gguf_file(model_cfg) is not None:  # raises with the missing path (and how to fetch the alias)
        return
    name = model_cfg.name_or_path
    if Path(name).expanduser().exists():
        return
    if not _HUB_ID.match(name):
        raise ModelError(f"model.name_or_path {name!r}: no such folder (working directory {Path.cwd()}), and "
                         "it is not a Hugging Face Hub id (org/name)")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json", revision=model_cfg.revision), str):
        return
    if hub.HF_HUB_OFFLINE:
        raise ModelError(f"model.name_or_path {name!r} is a Hub id that is not in the local Hugging Face cache "
                         f"({hub.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: download it where there is internet "
                         f"(`hf download {name}`) into that cache, or point model.name_or_path at a local folder")
    try:
        _hub_model_info(name, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - any failure here means loading would fail too, only later
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        if isinstance(e, GatedRepoError):
            raise ModelError(f"model.name_or_path {name!r} is gated on the Hub: accept its licence on the "
                             "model page and log in (`hf auth login`)") from None
        if isinstance(e, RepositoryNotFoundError):
            raise ModelError(f"model.name_or_path {name!r}: no such model on the Hugging Face Hub (or it is "
                             "private: log in with `hf auth login`)") from None
        raise ModelError(f"model.name_or_path {name!r} is not in the local Hugging Face cache and cannot reach "
                         f"the Hugging Face Hub ({type(e).__name__}: {e}): check the network, or download it "
                         "elsewhere and set HF_HUB_OFFLINE=1, or use a local folder") from None


def check_data_files(cfg: Config) -> None:
    """Raise `DataError` naming the first data file (train or eval) that does not exist."""
    if not cfg.data.train:
        raise DataError("no training data: set data.train to one or more files (e.g. data.train=train.jsonl)")
    for key, sources in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        for s in sources:
            if s.hub is not None:
                from .data.hub import resolve_revision

                resolve_revision(s)  # unreachable Hub, unknown id or revision: said now, not after retries
            elif s.path is not None and not Path(s.path).expanduser().exists():
                raise DataError(f"{key}: data file not found (working directory: {Path.cwd()})", file=s.path)


def check_before_training(cfg: Config) -> None:
    """Everything `train` can check before touching a model: data files, the method's libraries, the
    model source. Raises the first `ChattuneError` found."""
    check_data_files(cfg)
    if cfg.method.type == "qlora":
        from .model.quant import require_bitsandbytes

        require_bitsandbytes()
    check_model_source(cfg.model)

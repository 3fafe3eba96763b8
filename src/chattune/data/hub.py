"""Hub datasets: ``hub: owner/name`` sources and local folders laid out as a Hub dataset repo.

Both are read by ``datasets`` (its builder, its cache, the dataset card's configs), so a folder
downloaded with ``hf download owner/name --repo-type dataset --local-dir DIR`` reads exactly as the
Hub id does. Rows then go through the same shapes and column maps as files (`chattune.data.formats`).

An unreachable Hub must not cost the download retries (they take tens of seconds and end in an
error naming no fix): before ``datasets`` touches the network, one API call with a short timeout
resolves the revision, and any failure becomes a `DataError` that says how to use a local copy.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import DataSource
from ..errors import DataError
from ..fsutil import sha256_file

if TYPE_CHECKING:
    import datasets

HUB_TIMEOUT_S = 10.0
# "owner/name" or a legacy "name": what the Hub accepts as a dataset id
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Files that make a folder a datasets.save_to_disk folder (read by `readers`), not a Hub-style repo.
SAVED_MARKERS = ("dataset_info.json", "dataset_dict.json")


@dataclass(frozen=True)
class HubSplit:
    """One split of a Hub dataset or Hub-style folder, loaded, and what the run records about it."""

    dataset: datasets.Dataset
    split: str
    revision: str | None  # the commit read (None for a local folder, or when the cache does not say)


def is_hub_folder(path: str | Path) -> bool:
    """A folder that `datasets.save_to_disk` did not write: read as a Hub dataset repo."""
    p = Path(path)
    return p.is_dir() and not any((p / m).exists() for m in SAVED_MARKERS)


def _local_copy_hint(hub: str, offline: bool = False) -> str:
    cache = "" if offline else "; or, if datasets cached it before, set HF_HUB_OFFLINE=1 to read that cache"
    return (f"to use a local copy: download it where the Hub is reachable (`hf download {hub} --repo-type dataset "
            f"--local-dir DIR`) and set `path: DIR` instead of `hub:`{cache}")


def _dataset_info(hub: str, revision: str | None, timeout: float):
    """One Hub API call (a seam for tests: this machine has no Hub)."""
    from huggingface_hub import HfApi

    return HfApi().dataset_info(hub, revision=revision, timeout=timeout)


def resolve_revision(src: DataSource) -> str | None:
    """The commit a ``hub:`` source will read, asked once with a short timeout (no retries).

    Returns:
        The commit sha; None when HF_HUB_OFFLINE is set (datasets then reads its cache).

    Raises:
        DataError: a malformed id, no such dataset or revision, a gated dataset, or the Hub unreachable
            (each with the dataset id and the fix).
    """
    import huggingface_hub.constants as hub_constants

    hub = str(src.hub)
    if not _HUB_ID.match(hub):
        raise DataError(f"hub: {hub!r} is not a Hub dataset id (owner/name); for a local folder use `path:`",
                        file=src.label, field="hub")
    if hub_constants.HF_HUB_OFFLINE:
        return None
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = _dataset_info(hub, src.revision, HUB_TIMEOUT_S)
    except GatedRepoError:
        raise DataError(f"Hub dataset {hub!r} is gated: accept its terms on the dataset page and log in "
                        "(`hf auth login`)", file=src.label, field="hub") from None
    except RevisionNotFoundError:
        raise DataError(f"Hub dataset {hub!r} has no revision {src.revision!r}", file=src.label,
                        field="revision") from None
    except RepositoryNotFoundError:
        raise DataError(f"no dataset {hub!r} on the Hugging Face Hub (or it is private: log in with "
                        "`hf auth login`)", file=src.label, field="hub") from None
    except Exception as e:  # noqa: BLE001 - network errors come as many types (httpx, OSError, timeouts)
        raise DataError(f"Hub dataset {hub!r}: the Hugging Face Hub is unreachable ({type(e).__name__}: {e}); "
                        f"{_local_copy_hint(hub)}", file=src.label, field="hub") from None
    return info.sha


def _pick_split(splits: list[str], split: str | None, src: DataSource) -> str:
    if split is None:
        if len(splits) != 1 and "train" not in splits:
            raise DataError(f"the dataset holds splits {splits}; set `split:` in the data source",
                            file=src.label, field="split")
        return "train" if "train" in splits else splits[0]
    if split not in splits:
        raise DataError(f"no split {split!r}; the dataset holds {splits}", file=src.label, field="split")
    return split


def load_split(src: DataSource) -> HubSplit:
    """Load the split a ``hub:`` source or a Hub-style ``path:`` folder names, through datasets' cache.

    Raises:
        DataError: see `resolve_revision`; offline without a cached copy; a folder or dataset that
            datasets cannot read; an unknown subset or split.
    """
    import datasets

    where = src.hub if src.hub is not None else src.path
    revision = resolve_revision(src) if src.hub is not None else None
    try:
        builder = datasets.load_dataset_builder(str(where), name=src.subset, revision=revision or src.revision)
        builder.download_and_prepare()
        splits = sorted(builder.info.splits or {})
        split = _pick_split(splits, src.split, src)
        ds = builder.as_dataset(split=split)
    except DataError:
        raise
    except ConnectionError as e:  # offline (datasets' OfflineModeIsEnabled) and nothing cached
        raise DataError(f"Hub dataset {src.hub!r} is not in datasets' cache and the Hugging Face Hub is "
                        f"unreachable ({e}); {_local_copy_hint(str(src.hub), offline=True)}", file=src.label,
                        field="hub") from None
    except Exception as e:  # noqa: BLE001 - datasets raises ValueError/FileNotFoundError/DataFilesNotFoundError...
        what = ("a Hub-style dataset folder (data files such as train.jsonl or data/train-*.parquet, optional "
                "README.md dataset card) or a datasets.save_to_disk folder") if src.hub is None else "a Hub dataset"
        cause: BaseException = e
        while cause.__cause__ is not None:  # datasets wraps the reader's error ("error generating the dataset")
            cause = cause.__cause__
        detail = f"{type(e).__name__}: {e}" + (f" ({type(cause).__name__}: {cause})" if cause is not e else "")
        raise DataError(f"cannot read as {what}: {detail}", file=src.label) from None
    if not isinstance(ds, datasets.Dataset):  # as_dataset(split=name) returns one Dataset
        raise DataError(f"split {split!r} did not load as one table", file=src.label, field="split")
    if revision is None and src.hub is not None and _COMMIT.match(str(builder.hash or "")):
        revision = builder.hash  # offline: the cached copy's commit (datasets keys its cache by it)
    return HubSplit(dataset=ds, split=split, revision=revision)


def read_hub_records(src: DataSource) -> list[tuple[int, dict]]:
    """Records of a ``hub:`` source or Hub-style folder, numbered 1.. in split order (errors say "row N")."""
    import math

    ds = load_split(src).dataset

    def cell(v):  # NaN is how pandas-written parquet spells an empty cell
        return None if isinstance(v, float) and math.isnan(v) else v

    return [(n, {k: cell(v) for k, v in rec.items()}) for n, rec in enumerate(ds.to_list(), start=1)]


def source_identity(src: DataSource) -> dict:
    """What the run's data.json records to tell this source's content (and the data cache keys on).

    Returns:
        A file or folder: ``{"path", "sha256"}`` (of the bytes). A Hub dataset: ``{"path": "hub:owner/name",
        "hub", "subset", "split", "revision": the commit read, "sha256": fingerprint of the loaded split}``
        (hash of datasets' cache files for it, so it changes exactly when the rows do).
    """
    if src.hub is None:
        return {"path": src.path, "sha256": sha256_file(str(src.path))}
    loaded = load_split(src)
    h = hashlib.sha256()
    for f in loaded.dataset.cache_files:
        h.update(sha256_file(f["filename"]).encode())
    return {"path": src.label, "hub": src.hub, "subset": src.subset, "split": loaded.split,
            "revision": loaded.revision, "sha256": h.hexdigest()}

"""Which files the browser may name: everything goes through `Roots.resolve`, which refuses paths outside
the allowed folders (the runs folder and the folders given with ``--root``), symlinks included.

Uploads land in ``RUNS/uploads/`` under a sanitised name and are refused above a size cap while they
stream in, so a large body never fills the disk first.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChattuneError
from ..fsutil import atomic_path

UPLOADS = "uploads"
UI_STATE = ".ui"  # the UI's own job records and logs, inside the runs folder
# What chattune's readers take (chattune.data.readers); save_to_disk folders are recognised by their marker file.
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".xlsx", ".parquet")
DATASET_MARKERS = ("dataset_dict.json", "dataset_info.json")
_MODEL_MARKERS = {"config.json", "tokenizer_config.json", "adapter_config.json", "chattune.yaml"}
_SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", UI_STATE}


class PathError(ChattuneError):
    """A path the UI may not read or write (outside the allowed roots, or not there)."""


@dataclass(frozen=True)
class Roots:
    """The folders the UI may read from; `runs` is also where it writes (uploads, run dirs, job logs)."""

    runs: Path
    extra: tuple[Path, ...] = ()

    @property
    def all(self) -> tuple[Path, ...]:
        return (self.runs, *self.extra)

    def resolve(self, path: str | Path, *, must_exist: bool = True) -> Path:
        """The real path of `path` (relative paths are tried against each root in order) if it lies in a root.

        Raises:
            PathError: empty, outside every root (after following symlinks), or missing when `must_exist`.
        """
        text = str(path).strip()
        if not text:
            raise PathError("no path given")
        p = Path(text).expanduser()
        candidates = [c.resolve() for c in ([p] if p.is_absolute() else [root / p for root in self.all])]
        inside = [c for c in candidates if _within(c, self.all)]
        found = [c for c in inside if c.exists()]
        # refuse what exists only outside (a symlink out of a root, ../ past it) as outside, not as missing
        if not inside or (not found and any(c.exists() for c in candidates)):
            raise PathError(f"{text}: outside the folders this UI may read ({', '.join(map(str, self.all))}); "
                            "start `chattune ui` with --root FOLDER to allow another one")
        if must_exist and not found:
            raise PathError(f"{text}: no such file under {', '.join(map(str, self.all))}")
        return (found or inside)[0]

    def display(self, path: Path) -> str:
        """`path` relative to the first root holding it (what the browser shows and sends back)."""
        for root in self.all:
            if _within(path, (root,)):
                return str(path.relative_to(root))
        return str(path)

    def data_files(self, limit: int = 500, depth: int = 4) -> list[str]:
        """Data files and save_to_disk folders under the roots (shallow walk, hidden and tool folders skipped)."""
        out: list[str] = []
        for root in self.all:
            base_depth = len(root.parts)
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")
                                     and len(here.parts) - base_depth < depth)
                if _MODEL_MARKERS & set(filenames):  # a model or run folder: its JSON files are not data
                    dirnames[:] = []
                    continue
                if any(m in filenames for m in DATASET_MARKERS) and here != root:
                    out.append(self.display(here))
                    dirnames[:] = []
                    continue
                out += [self.display(here / f) for f in sorted(filenames) if f.endswith(DATA_SUFFIXES)
                        and not here.name.startswith("checkpoint-")]
                if len(out) >= limit:
                    return list(dict.fromkeys(out))[:limit]
        return list(dict.fromkeys(out))


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def safe_name(name: str) -> str:
    """A file name without folders or odd characters; keeps the suffix (the readers pick by it)."""
    base = Path(name.replace("\\", "/")).name
    stem, suffix = os.path.splitext(base)
    stem = re.sub(r"[^\w.-]+", "_", stem, flags=re.UNICODE).strip("._") or "upload"
    suffix = suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix.lower()) else ""
    return stem[:80] + suffix


async def save_upload(roots: Roots, name: str, chunks: AsyncIterator[bytes], max_bytes: int) -> Path:
    """Stream an upload into ``RUNS/uploads/<time>-<name>``; refuse it once it passes `max_bytes`.

    Raises:
        PathError: the suffix is not one chattune reads, or the body is larger than `max_bytes`
            (nothing is left behind: the temp file is removed).
    """
    clean = safe_name(name)
    if not clean.endswith(DATA_SUFFIXES):
        raise PathError(f"{name}: chattune reads {', '.join(DATA_SUFFIXES)} files; this one has another suffix")
    target = roots.runs / UPLOADS / f"{time.strftime('%Y%m%d-%H%M%S')}-{clean}"
    size = 0
    # plain blocking writes: local disk, chunks of at most 64 KiB; the cap is checked between them
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise PathError(f"{name}: larger than the upload limit of {max_bytes // 2**20} MiB "
                                "(start `chattune ui` with --max-upload-mb to raise it)")
            fh.write(chunk)
    return target

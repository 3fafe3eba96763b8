"""Write files so that a crash never leaves one half-written: temp file in the same folder, then rename."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it is renamed onto `target`, on error removed.

    Works for files and folders (write a folder at the yielded path, it replaces `target` whole).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if target.is_dir() and tmp_path.is_dir():
            shutil.rmtree(target)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `target` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, or of every file under a folder (sorted by relative path)."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def is_disk_full(e: BaseException) -> bool:
    """True for "no space left" (or over quota): an OSError with that errno, or the RuntimeError that
    torch's zip writer turns it into."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(e)


@contextlib.contextmanager
def disk_full_is_an_error(what: str, error: type[Exception] | None = None) -> Iterator[None]:
    """Turn "no space left" raised inside into `error` (default `ChattuneError`) saying `what` failed,
    with the OS message; other errors pass unchanged. Put it outside `atomic_path`, so the temp file is
    gone by the time the error is reported."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        from .errors import ChattuneError

        raise (error or ChattuneError)(f"disk full while {what} ({e})") from e


def cache_root() -> Path:
    """chattune's one cache folder: $CHATTUNE_CACHE, else ~/.cache/chattune (converted models, tokenized data)."""
    return Path(os.environ.get("CHATTUNE_CACHE") or Path.home() / ".cache" / "chattune")

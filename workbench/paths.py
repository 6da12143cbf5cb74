"""Cache location and atomic file-system writes.

Everything the workbench caches on disk lives under :func:`workbench_cache_dir`
(``$WORKBENCH_CACHE``, else ``~/.cache/workbench``). Cache writes go through the
helpers here so that a crash or a concurrent writer never leaves a half-written
file or directory where a reader could pick it up: data is written to a temporary
sibling first and then moved into place with :func:`os.replace` (a rename on the
same file system).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["workbench_cache_dir", "atomic_write_bytes", "atomic_write_text", "atomic_dir"]


def workbench_cache_dir() -> Path:
    """Root directory of the workbench's on-disk caches.

    ``$WORKBENCH_CACHE`` when set, otherwise ``~/.cache/workbench``. Read on every
    call (so tests can monkeypatch the variable); the directory is not created here.
    """
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))


def _fsync_dir(path: Path) -> None:
    """Best-effort fsync of a directory so a rename inside it is durable (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json_object(path: Path, what: str | None = None) -> dict:
    """The JSON object in `path`; a clear ValueError naming `what` (default: the path) when
    the file is not JSON or holds something other than an object."""
    import json

    what = what or str(path)
    try:
        data = json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} must hold a JSON object, got {type(data).__name__}")
    return data


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path.

    The bytes go to a temporary file in the same directory, are flushed and fsynced,
    and the file is then renamed over ``path``. Readers see either the old file or
    the complete new one, never a partial write. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cache files are ordinary files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_dir(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory out of sight, then move it to ``final_path`` in one step.

    Yields an empty temporary directory in the same parent as ``final_path``. When
    the ``with`` block finishes normally the temporary directory is renamed to
    ``final_path``, replacing any existing directory there (the old one is moved
    aside, then deleted). If the block raises, the temporary directory is deleted
    and any existing ``final_path`` is left untouched.

    Replacing an existing directory takes two renames, so a reader may briefly
    find ``final_path`` missing; it is never half-written.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the result is an ordinary cache directory
        yield tmp
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)


def _replace_dir(src: Path, dst: Path, attempts: int = 10) -> None:
    """Rename directory ``src`` to ``dst``, moving an existing ``dst`` aside first."""
    for _ in range(attempts):
        try:
            os.replace(src, dst)  # succeeds if dst is absent (or an empty dir on POSIX)
            return
        except OSError:
            if not dst.exists():
                raise
        # dst exists: move it out of the way and retry (another writer may race us)
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex}")
        try:
            os.replace(dst, old)
        except FileNotFoundError:
            continue  # someone else moved it already
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    raise OSError(f"could not move {src} into place at {dst}")

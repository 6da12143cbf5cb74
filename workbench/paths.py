"""Cache location and atomic file-system writes.

Everything the workbench caches on disk lives under :func:`workbench_cache_dir`
(``$WORKBENCH_CACHE``, else ``~/.cache/workbench``). Cache writes go through the
helpers here so that a crash or a concurrent writer never leaves a half-written
file or directory where a reader could pick it up: data is written to a temporary
sibling first and then moved into place with :func:`os.replace` (a rename on the
same file system).

File modes: every file the workbench writes gets ``0o666 & ~umask`` and every folder
``0o777 & ~umask`` (0644 / 0755 under the usual umask 022), also files that another
library wrote into an :func:`atomic_dir` (transformers' ``save_pretrained`` writes 0600).

Stale temporaries: a temp folder (or file) carries the host and process id of its
writer in its name (``.<name>.tmp-<host>-<pid>-<random>``). When a process is killed
mid-write (SIGKILL, power loss) its temp stays behind; the next write of the same target
removes every temp of that target whose process is gone on this host, and any older
than :data:`STALE_AFTER_S` (one day; covers other hosts sharing the folder and a reused
pid). Temps in the older unnamed form (``.<name>.tmp-<random>``, no pid) are removed once
older than :data:`STALE_UNNAMED_AFTER_S` (one hour). Folders moved aside during a
replace (``.<name>.old-<random>``) belong to nobody and are removed at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import FileFormatError

__all__ = [
    "workbench_cache_dir", "atomic_write_bytes", "atomic_write_text", "atomic_dir", "read_json_object",
    "check_safetensors", "clean_stale_temps", "file_mode", "dir_mode",
]  # fmt: skip

STALE_AFTER_S = 24 * 3600
STALE_UNNAMED_AFTER_S = 3600


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


# --------------------------------------------------------------------------- modes


_UMASK: int | None = None


def _umask() -> int:
    """The process umask, read without changing it where the system tells it
    (/proc/self/status on Linux; os.umask would briefly set it process-wide, racing other
    threads that create files)."""
    global _UMASK
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def file_mode() -> int:
    """Mode of an ordinary file the workbench writes: 0o666 less the umask (0644 usually)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Mode of a folder the workbench creates: 0o777 less the umask (0755 usually)."""
    return 0o777 & ~_umask()


def _normalise_modes(root: Path) -> None:
    """Give every file under `root` `file_mode()` and every folder `dir_mode()` (the
    executable bit of a file is kept: nothing here writes programs, but never take it
    away)."""
    fm, dm = file_mode(), dir_mode()
    os.chmod(root, dm)
    for parent, dirs, files in os.walk(root):
        for d in dirs:
            p = os.path.join(parent, d)
            if not os.path.islink(p):
                os.chmod(p, dm)
        for n in files:
            p = os.path.join(parent, n)
            if os.path.islink(p):
                continue
            mode = fm | (os.stat(p).st_mode & 0o111 & dm)
            os.chmod(p, mode)


# --------------------------------------------------------------------------- stale temps


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_tag() -> str:
    """`<host>-<pid>-<random>`: who wrote a temp, so a later writer can tell a dead one."""
    return f"{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


_TAGGED = re.compile(r"^(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")
_UNNAMED = re.compile(r"^[a-z0-9_]{8}$")  # tempfile.mkstemp / mkdtemp names of earlier versions


def clean_stale_temps(final: str | os.PathLike[str], *, now: float | None = None) -> list[Path]:
    """Remove the temporaries a killed writer of `final` left beside it (see the module
    doc for the rule); returns what was removed. Never touches `final` itself, another
    target's temps, or a temp whose writer may still be running."""
    final = Path(final)
    parent = final.parent
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    tmp_prefix, file_prefix, old_prefix = f".{final.name}.tmp-", f".{final.name}.", f".{final.name}.old-"
    host = _host_tag()
    for e in entries:
        name = e.name
        if name.startswith(old_prefix):
            stale = True
        elif name.startswith(tmp_prefix) or (name.startswith(file_prefix) and name.endswith(".tmp")):
            rest = name[len(tmp_prefix):] if name.startswith(tmp_prefix) else name[len(file_prefix):-len(".tmp")]
            m = _TAGGED.match(rest)
            if m is None and not _UNNAMED.match(rest):
                continue  # another target's temp (e.g. "<name>.json"'s beside "<name>")
            try:
                age = now - e.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if m is None:
                stale = age > STALE_UNNAMED_AFTER_S
            elif m["host"] != host:  # another machine sharing this folder: only its age tells
                stale = age > STALE_AFTER_S
            elif int(m["pid"]) == os.getpid():  # this process (another thread) is writing it
                stale = False
            else:
                stale = not _pid_alive(int(m["pid"])) or age > STALE_AFTER_S
        else:
            continue
        if not stale:
            continue
        p = Path(e.path)
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------- reading


def read_json_object(path: Path, what: str | None = None) -> dict:
    """The JSON object in `path`; a FileFormatError naming `what` (default: the path) when
    the file is not JSON or holds something other than an object."""
    import json

    what = what or str(path)
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise FileFormatError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"{what} must hold a JSON object, got {type(data).__name__}")
    return data


def check_safetensors(path: str | os.PathLike[str], what: str | None = None) -> dict:
    """Check that `path` is a complete safetensors file, reading only its header: an 8-byte
    little-endian header length, a JSON header, then exactly the bytes the header's
    `data_offsets` cover. Returns the header; FileFormatError naming the file and saying
    what is wrong (truncated, not safetensors, corrupt header) otherwise. Cheap: no tensor
    is read, so a multi-GB file costs one small read."""
    import json

    path = Path(path)
    what = what or str(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FileFormatError(f"{what} is truncated or not a safetensors file: it has {size} bytes, fewer than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > 100 * 2**20:
            raise FileFormatError(f"{what} is not a safetensors file (or is corrupt): its header length field says {n} bytes")
        if 8 + n > size:
            raise FileFormatError(f"{what} is truncated: its header needs {8 + n} bytes, the file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError:
        raise FileFormatError(f"{what} is not a safetensors file (or is corrupt): its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{what} is corrupt: its safetensors header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            raise FileFormatError(f"{what} is corrupt: tensor {name!r} has no valid data_offsets in the header")
        end = max(end, offs[1])
    want = 8 + n + end
    if size < want:
        raise FileFormatError(f"{what} is truncated: its header describes {want} bytes of data, the file has {size} (an interrupted copy or download?)")
    if size > want:
        raise FileFormatError(f"{what} is corrupt: {size - want} bytes follow the last tensor its header describes")
    return header


# --------------------------------------------------------------------------- writing


def atomic_write_file(path: str | os.PathLike[str], write: Callable[[str], None], *, overwrite: bool = True) -> Path:
    """Run ``write(tmp)`` on a fresh temporary file beside ``path``, fsync it and move it
    into place; returns the path. The one atomic-write helper (`atomic_write_bytes`,
    `atomic_write_text` and the steering-vector files go through it).

    Readers see either the old file or the complete new one, never a partial write; on any
    error the temporary file is removed and ``path`` is left as it was. Parent folders are
    created. ``overwrite=False`` refuses with OutputExistsError when ``path`` exists,
    checked atomically (a hard link that fails if the name is taken), so two writers never
    replace each other's file. The file gets mode 0o666 reduced by the umask, as any
    ordinary file (mkstemp would give 0600).
    """
    from .errors import OutputExistsError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def exists() -> OutputExistsError:
        return OutputExistsError(f"{path} already exists; it is not replaced unless you ask for it (overwrite=True), or choose another name")

    if not overwrite and (path.exists() or path.is_symlink()):
        raise exists()
    clean_stale_temps(path)
    tmp = path.parent / f".{path.name}.{_temp_tag()}.tmp"
    # O_EXCL: never write through a file or link someone else put there
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise exists() from None
            except OSError:  # a file system without hard links: check, then rename
                if path.exists() or path.is_symlink():
                    raise exists() from None
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_file`); returns the path."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes takes bytes, got {type(data).__name__}")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write_file(path, write, overwrite=overwrite)


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

    Before anything is built, the temporaries of earlier writers of ``final_path`` that
    were killed are removed (:func:`clean_stale_temps`). Before the rename, every file
    and folder in the result gets the ordinary modes (:func:`file_mode`, :func:`dir_mode`),
    whatever mode the code that wrote them chose.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final)
    tmp = final.parent / f".{final.name}.tmp-{_temp_tag()}"
    os.mkdir(tmp, 0o700)
    try:
        yield tmp
        _normalise_modes(tmp)
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

"""What every tab shares: the per-process model registry (one lock per model), the
per-session state, readable errors, input parsing and safe file handling.

Isolation: the generation loop installs edits (steering) as forward hooks on the shared
transformers module for as long as a generation runs (also while a streaming generator is
suspended between tokens), and the sink capture swaps the attention function. So every use
of a model, from the first forward to the last token streamed, holds that model's lock
(`Registry.use`): requests on the same model run one after another, requests on different
models run in parallel (up to the queue's concurrency limit).

Files: a path typed into the UI must lie inside one of the folders the app was started
with (`allowed_dirs`) or its output folder; an uploaded file must come from Gradio's upload
folder and is refused above a size cap before it is parsed. Vectors and head files are read
only as safetensors / GGUF (never unpickled); paths a recipe folder's `latent_policy.json`
names are confined the same way. Everything the app writes goes into its own output folder
(`workbench-outputs` inside the first allowed folder, else a private temporary folder),
and an existing file or run folder there is replaced only when the request asks for it.

Errors: handlers raise the `workbench.errors` types; `handler` turns them into `gr.Error`
messages and keeps the original exception as the `gr.Error`'s `__cause__`.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import math
import os
import re
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gradio as gr
import torch

from workbench.errors import (
    InputError,
    MissingFileError,
    ModelNotFoundError,
    OutputExistsError,
    OutputNotWritableError,
    PathNotAllowedError,
    WorkbenchError,
)

log = logging.getLogger("workbench.app")

LOCAL_PATH = "local path…"
OUTPUT_SUBDIR = "workbench-outputs"
MiB = 1 << 20
DEFAULT_MAX_VECTOR_MB = 64  # a steering vector is d_model x layers floats: a 27B model's is ~1.3 MB
SEED_MAX = 2**63 - 1  # torch.manual_seed's range for a non-negative seed
DEFAULT_MAX_HEAD_MB = 2048  # a latent head is one decoder layer: a 27B model's is ~1.6 GB in float32
_EXPECTED = (WorkbenchError, ValueError, FileNotFoundError, FileExistsError, KeyError, LookupError, PermissionError,
             IsADirectoryError, NotADirectoryError, MemoryError, FloatingPointError)
_EXPECTED_ERRNO = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EFBIG}


# --------------------------------------------------------------------------- errors


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, torch.OutOfMemoryError):
        return f"out of memory: {err}"
    return str(err) or type(err).__name__


def to_gr_error(err: BaseException) -> gr.Error:
    """A readable UI message for `err`; unexpected errors are logged with their traceback."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, _EXPECTED) or isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, OSError) and err.errno in _EXPECTED_ERRNO
    ):
        return gr.Error(_message(err), print_exception=False)
    log.exception("unexpected error in a workbench app handler")
    return gr.Error(f"unexpected error ({type(err).__name__}: {_message(err)}); the server log has the traceback",
                    print_exception=False)


def handler(fn: Callable) -> Callable:
    """Turn any exception a handler raises into a `gr.Error` (shown in the UI; the app keeps
    serving), with the original exception as its `__cause__` (so a caller of the handler
    can still tell the error's class). Works for plain and generator (streaming) functions."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except GeneratorExit:
                raise
            except Exception as err:  # noqa: BLE001 - every error becomes a UI message
                raise to_gr_error(err) from err

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise to_gr_error(err) from err

    return wrapper


# --------------------------------------------------------------------------- registry


@dataclass
class ModelSlot:
    """One loaded model and the lock that serialises its use."""

    key: str
    bench: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


class Registry:
    """Models loaded once per process, keyed by registry name or resolved local path."""

    def __init__(self, device: str = "auto", dtype: str = "auto"):
        self.device = device
        self.dtype = dtype
        self._slots: dict[str, ModelSlot] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def loaded(self) -> list[str]:
        with self._guard:
            return list(self._slots)

    def add(self, key: str, bench: Any) -> ModelSlot:
        """Register an already loaded `Bench` under `key` (tests, notebooks)."""
        with self._guard:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = ModelSlot(key, bench)
            return slot

    def slot(self, key: str) -> ModelSlot:
        """The slot for `key`, loading the model on first use (one load per key even when
        several requests ask at once)."""
        with self._guard:
            if key in self._slots:
                return self._slots[key]
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._guard:
                if key in self._slots:
                    return self._slots[key]
            import workbench as wb

            bench = wb.load(key, device=self.device, dtype=self.dtype)
            return self.add(key, bench)

    @contextmanager
    def use(self, key: str) -> Iterator[Any]:
        """`with registry.use(name) as bench:` exclusive use of that model."""
        if not key:
            raise InputError("no model selected; choose one in the Model tab")
        slot = self.slot(key)
        with slot.lock:
            yield slot.bench

    def peek(self, key: str) -> Any:
        """The loaded bench without taking its lock: for reading `arch` facts only."""
        return self.slot(key).bench


# --------------------------------------------------------------------------- context


@dataclass
class AppContext:
    """What `build_ui(ctx)` of every tab gets.

    registry: the process-wide models; allowed_dirs: folders the UI may read from
    (resolved); out_dir: the app's own output folder, where every saved file and run
    folder goes (`workbench-outputs` inside the first allowed folder, else a private
    temporary folder; readable too). model / vector: per-session `gr.State`s shared by
    the tabs (the selected model key, the current `SteeringVector`), created inside the
    Blocks. max_vector_bytes / max_head_bytes: the largest steering vector / head file
    the app reads (refused before parsing)."""

    registry: Registry
    default_model: str
    allowed_dirs: tuple[Path, ...] = ()
    out_dir: Path | None = None
    model: Any = None
    vector: Any = None
    extras: dict = field(default_factory=dict)
    max_vector_bytes: int = DEFAULT_MAX_VECTOR_MB * MiB
    max_head_bytes: int = DEFAULT_MAX_HEAD_MB * MiB

    @property
    def readable_dirs(self) -> tuple[Path, ...]:
        """The allowed folders and the output folder: what typed paths may name."""
        dirs = list(self.allowed_dirs)
        if self.out_dir is not None and not any(_inside(self.out_dir, d) for d in dirs):
            dirs.append(self.out_dir)
        return tuple(dirs)

    @staticmethod
    def create(default_model: str, allowed_dirs: Sequence[str | os.PathLike] = (), registry: Registry | None = None,
               device: str = "auto", dtype: str = "auto", *, out_dir: str | os.PathLike | None = None,
               max_vector_mb: float = DEFAULT_MAX_VECTOR_MB, max_head_mb: float = DEFAULT_MAX_HEAD_MB) -> "AppContext":
        from workbench.errors import check_float

        dirs = []
        for d in allowed_dirs or ():
            p = Path(d).expanduser().resolve()
            if not p.is_dir():
                raise MissingFileError(f"allowed folder {os.fspath(d)!r} does not exist or is not a folder")
            dirs.append(p)
        vec_mb = check_float(max_vector_mb, "max_vector_mb (largest steering vector file, MiB)", low=0.0, low_open=True)
        head_mb = check_float(max_head_mb, "max_head_mb (largest head file, MiB)", low=0.0, low_open=True)
        out = _output_folder(dirs, out_dir)
        return AppContext(registry or Registry(device, dtype), default_model, tuple(dirs), out,
                          max_vector_bytes=int(vec_mb * MiB), max_head_bytes=int(head_mb * MiB))


def _output_folder(dirs: Sequence[Path], explicit: str | os.PathLike | None) -> Path:
    """The app's output folder: `explicit` (created), else `workbench-outputs` in the first
    allowed folder (created; a private temporary folder when that folder is read-only),
    else a private temporary folder. Never an allowed folder itself, so a saved file can
    never replace a model's own files."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputNotWritableError(f"output folder {os.fspath(explicit)!r} cannot be created: {e.strerror or e}") from None
        p = p.resolve()
        if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
            raise OutputNotWritableError(f"output folder {os.fspath(explicit)!r} is not a writable folder")
        return p
    if dirs:
        p = dirs[0] / OUTPUT_SUBDIR
        if p.exists() and not p.is_dir():
            raise OutputNotWritableError(f"{p} is a file; the app keeps its outputs in a folder of that name (move the file, or pass out_dir)")
        try:
            p.mkdir(exist_ok=True)
            if os.access(p, os.W_OK | os.X_OK):
                return p.resolve()
        except OSError:
            pass
        log.warning("cannot write %s; saving outputs in a private temporary folder instead", p)
    return Path(tempfile.mkdtemp(prefix="workbench-app-")).resolve()


# --------------------------------------------------------------------------- files


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _folders(dirs: Sequence[Path]) -> str:
    return ", ".join(map(str, dirs))


def allowed_path(ctx: AppContext, text: str, *, suffixes: Sequence[str] = (), must_exist: bool = True,
                 what: str = "file", allow_dir: bool = False) -> Path:
    """Resolve a path typed into the UI; refuse it unless it lies inside an allowed folder
    or the output folder (symlinks resolved first; refused before its existence is
    checked), has one of `suffixes`, and exists (when `must_exist`). A relative path is
    taken relative to the first allowed folder, else the output folder, whichever has it."""
    text = (text or "").strip() if isinstance(text, str) or text is None else text
    if not isinstance(text, str):
        raise InputError(f"{what} path must be text, got {text!r}")
    if not text:
        raise InputError(f"no {what} path given")
    readable = ctx.readable_dirs
    if not readable:
        raise PathNotAllowedError(
            f"reading {what}s from disk is off: start the app with --allow-dir FOLDER to choose the folders it may read"
        )
    p = Path(text).expanduser()
    if not p.is_absolute():
        bases = list(ctx.allowed_dirs[:1])
        if ctx.out_dir is not None and (".." not in p.parts or not bases):
            bases.append(ctx.out_dir)
        cands = [(b / p).resolve() for b in bases]
        # the first candidate inside the readable folders that exists; else the first one
        p = next((c for c in cands if any(_inside(c, d) for d in readable) and c.exists()), cands[0])
    else:
        p = p.resolve()
    if not any(_inside(p, d) for d in readable):
        raise PathNotAllowedError(f"{text!r} is outside the folders this app may read ({_folders(readable)})")
    if must_exist and not p.exists():
        raise MissingFileError(f"{what} {text!r} does not exist (looked in {_folders(readable)})")
    if p.is_dir() and not allow_dir:
        raise InputError(f"{text!r} is a folder; give a {what}")
    if suffixes and not p.is_dir() and not p.name.lower().endswith(tuple(suffixes)):
        raise InputError(f"{what} {p.name!r} must end in one of {', '.join(suffixes)}")
    return p


def upload_path(ctx: AppContext, file: Any, *, suffixes: Sequence[str], what: str = "file",
                max_bytes: int | None = None) -> Path:
    """The local path of an uploaded file (Gradio's upload folder) or of a file in an allowed
    folder or the output folder; anything else is refused (before its existence is
    checked). Only the suffixes given are accepted, and a file larger than `max_bytes`
    (default: the steering vector cap) is refused before anything parses it."""
    if file is None or file == "":
        raise InputError(f"no {what} uploaded")
    name = getattr(file, "name", None) or getattr(file, "path", None) or file
    if isinstance(file, dict):
        name = file.get("path") or file.get("name")
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
        raise InputError(f"the {what} upload must be a file, got {file!r:.80}")
    p = Path(os.fspath(name)).resolve()
    upload_dir = Path(gr.utils.get_upload_folder()).resolve()
    if not (_inside(p, upload_dir) or any(_inside(p, d) for d in ctx.readable_dirs)):
        raise PathNotAllowedError(f"{p.name!r} was not uploaded through the app and is not in an allowed folder")
    if not p.is_file():
        raise MissingFileError(f"uploaded {what} {p.name!r} is missing")
    if not p.name.lower().endswith(tuple(suffixes)):
        raise InputError(f"{what} {p.name!r} must be one of: {', '.join(suffixes)} (pickled files are never read)")
    cap = ctx.max_vector_bytes if max_bytes is None else max_bytes
    size = p.stat().st_size
    if size > cap:
        raise InputError(
            f"{what} {p.name!r} is {_size(size)}; this app reads {what}s of at most {_size(cap)} "
            "(the cap is set when the app is built: build_app(max_vector_mb=..., max_head_mb=...))"
        )
    return p


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\- ]{0,120}$")
_NAME_RULE = "a plain name (letters, digits, . _ - and spaces, starting with a letter or digit; no folders)"


def output_file(ctx: AppContext, name: str, suffix: str, *, overwrite: bool = False, what: str = "file") -> Path:
    """A file name typed into the UI -> a path inside the output folder (no folders, no
    traversal); `suffix` is added when missing. An existing file or folder of that name is
    refused (OutputExistsError) unless `overwrite`."""
    if name is not None and not isinstance(name, str):
        raise InputError(f"{what} name must be text, got {name!r}")
    raw = (name or "").strip()
    if not raw:
        raise InputError(f"no {what} name given; give {_NAME_RULE}")
    if "/" in raw or "\\" in raw or ".." in raw or raw.startswith("~"):
        raise PathNotAllowedError(f"{what} name {raw!r} must be {_NAME_RULE}; it is saved in the output folder")
    full = raw if raw.lower().endswith(suffix) else raw + suffix
    if not _SAFE_NAME.match(full):
        raise InputError(f"{what} name {raw!r} must be {_NAME_RULE}")
    if ctx.out_dir is None:
        raise OutputNotWritableError("this app has no output folder")
    p = ctx.out_dir / full
    if not overwrite and (p.exists() or p.is_symlink()):
        raise OutputExistsError(
            f"{what} {full!r} already exists in the output folder; tick 'overwrite' to replace it, or choose another name"
        )
    return p


# --------------------------------------------------------------------------- parsing


def _bounds(low: float | None, high: float | None, fmt: str = "g") -> str:
    lo = "-inf" if low is None else format(low, fmt)
    hi = "inf" if high is None else format(high, fmt)
    return f"[{lo}, {hi}]"


def parse_float(value: Any, what: str, *, low: float | None = None, high: float | None = None) -> float:
    """A number from a UI field (a number or its text); names the field and the range."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be a number, got {value!r}")
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    if (low is not None and x < low) or (high is not None and x > high):
        raise InputError(f"{what} must be in {_bounds(low, high)}, got {x:g}")
    return x


def parse_int(value: Any, what: str, *, low: int | None = None, high: int | None = None) -> int:
    """A whole number from a UI field (2.0 is 2; 2.5 and "abc" are refused, never truncated)."""
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        x = int(value)
    else:
        f = parse_float(value, what)
        if f != int(f):
            raise InputError(f"{what} must be a whole number, got {value!r}")
        x = int(f)
    if (low is not None and x < low) or (high is not None and x > high):
        lo = "" if low is None else low
        hi = "" if high is None else high
        raise InputError(f"{what} must be in {lo}..{hi}, got {x}")
    return x


def parse_layers(text: Any, n_layers: int, *, allow_all: bool = True) -> list[int] | None:
    """"all" (None), "14", "10-20", "3, 7, 12-14" -> sorted layer indices, each checked."""
    if isinstance(text, bool) or (isinstance(text, float) and not math.isfinite(text)):
        raise InputError(f"layers must be 'all', a layer number or a range like 10-20 (valid layers are 0..{n_layers - 1}), got {text!r}")
    if isinstance(text, (int, float)):
        text = str(int(text)) if float(text) == int(text) else str(text)
    s = str(text or "").strip().lower()
    if s in ("", "all", "*"):
        if allow_all:
            return None
        raise InputError(f"give a layer (0..{n_layers - 1})")
    out: set[int] = set()
    for part in re.split(r"[,\s]+", s):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)(?:\s*(?:-|\.\.|:)\s*(-?\d+))?", part)
        if not m:
            raise InputError(f"layers {text!r}: {part!r} is not a layer number or range like 10-20; valid layers are 0..{n_layers - 1}")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        for layer in (a, b):
            if not 0 <= layer < n_layers:
                raise InputError(f"layer {layer} is out of range; this model has layers 0..{n_layers - 1}")
        if b < a:
            raise InputError(f"layer range {part!r} runs backwards")
        out.update(range(a, b + 1))
    if not out:
        raise InputError(f"no layers in {text!r}; valid layers are 0..{n_layers - 1}")
    return sorted(out)


_PAIR_SEP = re.compile(r"\s*(?:\|\|\||\t|\s=>\s)\s*")


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """One pair per line, `positive ||| negative` (or tab-separated); blank lines and lines
    starting with # are skipped."""
    pairs = []
    for i, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = _PAIR_SEP.split(line.strip())
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise InputError(f"line {i} ({line.strip()[:60]!r}) is not a pair: write 'positive prompt ||| negative prompt'")
        pairs.append((parts[0].strip(), parts[1].strip()))
    if not pairs:
        raise InputError("no pairs given: paste one 'positive ||| negative' pair per line (at least 2), or choose a probe set")
    return pairs


def parse_lines(text: str, what: str = "prompt") -> list[str]:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"no {what} given; write one per line")
    return lines


def parse_int_list(text: str, what: str, *, low: int | None = None, high: int | None = None) -> list[int]:
    parts = [p for p in re.split(r"[,\s]+", str(text or "").strip()) if p]
    if not parts:
        raise InputError(f"no {what} given; write integers separated by commas")
    out = []
    for p in parts:
        if not re.fullmatch(r"-?\d+", p):
            raise InputError(f"{what}: {p!r} is not an integer; write integers separated by commas")
        v = int(p)
        if (low is not None and v < low) or (high is not None and v > high):
            raise InputError(f"{what}: {v} is out of range; each must be in {'' if low is None else low}..{'' if high is None else high}")
        out.append(v)
    return out


# --------------------------------------------------------------------------- display helpers


def md_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return "nan" if math.isnan(x) else f"{x:.4g}"
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def model_choices() -> list[str]:
    import workbench as wb

    return [n for n in wb.available_models() if "27b" not in n] + [LOCAL_PATH]


def resolve_model_key(ctx: AppContext, choice: str, path: str = "") -> str:
    """Dropdown value (+ path box) -> registry key: a registered name or a resolved local
    folder inside an allowed folder."""
    import workbench as wb

    choice = (choice or "").strip()
    if choice == LOCAL_PATH:
        return str(allowed_path(ctx, path, what="model folder", allow_dir=True))
    if choice in wb.available_models():
        return choice
    raise ModelNotFoundError(f"unknown model {choice!r}; choose one of {', '.join(model_choices())}")

"""What every tab shares: the per-process model registry (one lock per model), the
per-session state, readable errors, input parsing and safe file handling.

Isolation: the generation loop installs edits (steering) as forward hooks on the shared
transformers module for as long as a generation runs (also while a streaming generator is
suspended between tokens), and the sink capture swaps the attention function. So every use
of a model, from the first forward to the last token streamed, holds that model's lock
(`Registry.use`): requests on the same model run one after another, requests on different
models run in parallel (up to the queue's concurrency limit).

Files: a path typed into the UI must lie inside one of the folders the app was started
with (`allowed_dirs`); an uploaded file must come from Gradio's upload folder. Vectors and
head files are read only as safetensors / GGUF (never unpickled).
"""

from __future__ import annotations

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

log = logging.getLogger("workbench.app")

LOCAL_PATH = "local path…"
_EXPECTED = (ValueError, FileNotFoundError, KeyError, LookupError, PermissionError, IsADirectoryError, MemoryError)


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
    if isinstance(err, _EXPECTED) or isinstance(err, torch.OutOfMemoryError):
        return gr.Error(_message(err), print_exception=False)
    log.exception("unexpected error in a workbench app handler")
    return gr.Error(f"unexpected error ({type(err).__name__}: {_message(err)}); the server log has the traceback",
                    print_exception=False)


def handler(fn: Callable) -> Callable:
    """Turn any exception a handler raises into a `gr.Error` (shown in the UI; the app keeps
    serving). Works for plain functions and generator (streaming) functions alike."""
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
            raise ValueError("no model selected; choose one in the Model tab")
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

    registry: the process-wide models; allowed_dirs: folders the UI may read from and
    write to (resolved); out_dir: where saved files go (the first allowed folder, else a
    private temporary folder). model / vector: per-session `gr.State`s shared by the tabs
    (the selected model key, the current `SteeringVector`), created inside the Blocks."""

    registry: Registry
    default_model: str
    allowed_dirs: tuple[Path, ...] = ()
    out_dir: Path | None = None
    model: Any = None
    vector: Any = None
    extras: dict = field(default_factory=dict)

    @staticmethod
    def create(default_model: str, allowed_dirs: Sequence[str | os.PathLike] = (), registry: Registry | None = None,
               device: str = "auto", dtype: str = "auto") -> "AppContext":
        dirs = []
        for d in allowed_dirs or ():
            p = Path(d).expanduser().resolve()
            if not p.is_dir():
                raise ValueError(f"allowed folder {os.fspath(d)!r} does not exist or is not a folder")
            dirs.append(p)
        out = dirs[0] if dirs else Path(tempfile.mkdtemp(prefix="workbench-app-"))
        return AppContext(registry or Registry(device, dtype), default_model, tuple(dirs), out)


# --------------------------------------------------------------------------- files


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def allowed_path(ctx: AppContext, text: str, *, suffixes: Sequence[str] = (), must_exist: bool = True,
                 what: str = "file", allow_dir: bool = False) -> Path:
    """Resolve a path typed into the UI; refuse it unless it lies inside an allowed folder
    (symlinks resolved first), has one of `suffixes`, and exists (when `must_exist`).
    A relative path is taken relative to the first allowed folder."""
    text = (text or "").strip()
    if not text:
        raise ValueError(f"no {what} path given")
    if not ctx.allowed_dirs:
        raise ValueError(
            f"reading {what}s from disk is off: start the app with --allow-dir FOLDER to choose the folders it may read"
        )
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = ctx.allowed_dirs[0] / p
    p = p.resolve()
    if not any(_inside(p, d) for d in ctx.allowed_dirs):
        raise ValueError(f"{text!r} is outside the folders this app may read ({', '.join(map(str, ctx.allowed_dirs))})")
    if must_exist and not p.exists():
        raise FileNotFoundError(f"{what} {text!r} does not exist")
    if p.is_dir() and not allow_dir:
        raise ValueError(f"{text!r} is a folder; give a {what}")
    if suffixes and not p.is_dir() and not p.name.lower().endswith(tuple(suffixes)):
        raise ValueError(f"{what} {p.name!r} must end in one of {', '.join(suffixes)}")
    return p


def upload_path(ctx: AppContext, file: Any, *, suffixes: Sequence[str], what: str = "file") -> Path:
    """The local path of an uploaded file (Gradio's upload folder) or of a file in an allowed
    folder; anything else is refused. Only the suffixes given are accepted."""
    if file is None or file == "":
        raise ValueError(f"no {what} uploaded")
    name = getattr(file, "name", None) or getattr(file, "path", None) or file
    if isinstance(file, dict):
        name = file.get("path") or file.get("name")
    p = Path(os.fspath(name)).resolve()
    upload_dir = Path(gr.utils.get_upload_folder()).resolve()
    if not (_inside(p, upload_dir) or any(_inside(p, d) for d in ctx.allowed_dirs)):
        raise ValueError(f"{p.name!r} was not uploaded through the app and is not in an allowed folder")
    if not p.is_file():
        raise FileNotFoundError(f"uploaded {what} {p.name!r} is missing")
    if not p.name.lower().endswith(tuple(suffixes)):
        raise ValueError(f"{what} {p.name!r} must be one of: {', '.join(suffixes)} (pickled files are never read)")
    return p


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\- ]{0,120}$")


def output_file(ctx: AppContext, name: str, suffix: str) -> Path:
    """A file name typed into the UI -> a path inside the output folder (no folders, no
    traversal); `suffix` is added when missing."""
    name = (name or "").strip()
    if not name.lower().endswith(suffix):
        name += suffix
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(f"file name {name!r} must be a plain name (letters, digits, . _ - and spaces; no folders)")
    assert ctx.out_dir is not None
    return ctx.out_dir / name


# --------------------------------------------------------------------------- parsing


def parse_float(value: Any, what: str, *, low: float | None = None, high: float | None = None) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"{what} must be in [{low}, {high}], got {x:g}")
    return x


def parse_int(value: Any, what: str, *, low: int | None = None, high: int | None = None) -> int:
    x = parse_float(value, what)
    if x != int(x):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    x = int(x)
    if (low is not None and x < low) or (high is not None and x > high):
        lo = "" if low is None else low
        hi = "" if high is None else high
        raise ValueError(f"{what} must be in {lo}..{hi}, got {x}")
    return x


def parse_layers(text: Any, n_layers: int, *, allow_all: bool = True) -> list[int] | None:
    """"all" (None), "14", "10-20", "3, 7, 12-14" -> sorted layer indices, each checked."""
    if isinstance(text, (int, float)):
        text = str(int(text)) if float(text) == int(text) else str(text)
    s = str(text or "").strip().lower()
    if s in ("", "all", "*"):
        if allow_all:
            return None
        raise ValueError(f"give a layer (0..{n_layers - 1})")
    out: set[int] = set()
    for part in re.split(r"[,\s]+", s):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)(?:\s*(?:-|\.\.|:)\s*(-?\d+))?", part)
        if not m:
            raise ValueError(f"layers {text!r}: {part!r} is not a layer number or range like 10-20; valid layers are 0..{n_layers - 1}")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        for layer in (a, b):
            if not 0 <= layer < n_layers:
                raise ValueError(f"layer {layer} is out of range; this model has layers 0..{n_layers - 1}")
        if b < a:
            raise ValueError(f"layer range {part!r} runs backwards")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError(f"no layers in {text!r}; valid layers are 0..{n_layers - 1}")
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
            raise ValueError(f"line {i} ({line.strip()[:60]!r}) is not a pair: write 'positive prompt ||| negative prompt'")
        pairs.append((parts[0].strip(), parts[1].strip()))
    if not pairs:
        raise ValueError("no pairs given: paste one 'positive ||| negative' pair per line (at least 2), or choose a probe set")
    return pairs


def parse_lines(text: str, what: str = "prompt") -> list[str]:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"no {what} given; write one per line")
    return lines


def parse_int_list(text: str, what: str) -> list[int]:
    parts = [p for p in re.split(r"[,\s]+", str(text or "").strip()) if p]
    if not parts:
        raise ValueError(f"no {what} given; write integers separated by commas")
    out = []
    for p in parts:
        if not re.fullmatch(r"-?\d+", p):
            raise ValueError(f"{what}: {p!r} is not an integer")
        out.append(int(p))
    return out


# --------------------------------------------------------------------------- edits on some rows


@dataclass(frozen=True)
class RowEdit:
    """An edit that acts only on the batch rows in `rows` ([batch] bool): lets one batched
    generation carry an unsteered and a steered copy of a prompt side by side (both through
    the one loop, in lock step)."""

    inner: Any
    rows: torch.Tensor

    @property
    def layer(self) -> int:
        return self.inner.layer

    def __call__(self, hidden: torch.Tensor, phase: str) -> torch.Tensor:
        edited = self.inner(hidden, phase)
        if edited is hidden:
            return hidden
        m = self.rows.to(hidden.device)[:, None, None]
        return torch.where(m, edited, hidden)


def only_rows(edits: Sequence[Any], rows: Sequence[bool]) -> list[RowEdit]:
    mask = torch.as_tensor(list(rows), dtype=torch.bool)
    return [RowEdit(e, mask) for e in edits]


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
    raise ValueError(f"unknown model {choice!r}; choose one of {', '.join(model_choices())}")

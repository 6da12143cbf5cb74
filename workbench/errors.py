"""The workbench's own error types.

Every layer (core, CLI, app) raises these for input it refuses, so a caller can tell a bad
input from a bug: the command line reports any `WorkbenchError` (and the `OSError`s of
reading and writing files) in one line, the app shows its message, and a traceback means a
defect. Each message names the bad value and what would be valid.

Each class also derives from the built-in exception a Python user would expect
(`ValueError`, `FileNotFoundError`, ...), so `except ValueError` keeps working.
"""

from __future__ import annotations

import math
import os
from typing import Any


class WorkbenchError(Exception):
    """Base of every error the workbench raises on purpose."""


class InputError(WorkbenchError, ValueError):
    """An argument that is the wrong type, out of range, or not finite."""


class FileFormatError(WorkbenchError, ValueError):
    """A file that is not what it claims to be (truncated, corrupt, another kind, bad
    metadata). The message names the file."""


class ModelNotFoundError(WorkbenchError, FileNotFoundError):
    """A model name, folder or hub id that cannot be loaded (unknown name, empty folder,
    no tokenizer files, offline hub id)."""


class MissingFileError(WorkbenchError, FileNotFoundError):
    """A file or folder the input names that does not exist."""


class OutputExistsError(WorkbenchError, FileExistsError):
    """Writing would replace an existing file or folder, and overwriting was not asked for."""


class PathNotAllowedError(WorkbenchError, PermissionError):
    """A path outside the folders a caller (the app) may read or write."""


class OutputNotWritableError(WorkbenchError, PermissionError):
    """An output path that cannot be written (under a file, read-only, no space)."""


class NonFiniteError(WorkbenchError, FloatingPointError):
    """A model produced NaN or infinite values (a huge steering scale, NaN weights)."""


# --------------------------------------------------------------------------- checks


def _name(what: str, value: Any) -> str:
    return f"{what} must be {{}}, got {value!r}"


def check_int(value: Any, what: str, *, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int, refusing bools, non-integral floats and strings (no silent
    truncation: 1.5 is an error, 2.0 is 2), and values outside [low, high]."""
    if isinstance(value, bool) or value is None:
        raise InputError(_name(what, value).format("an integer"))
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise InputError(_name(what, value).format("an integer"))
        value = int(value)
    try:
        import numpy as np
        import torch

        if isinstance(value, (np.integer, torch.Tensor)) and getattr(value, "ndim", 0) == 0:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                raise InputError(_name(what, value).format("an integer"))
            value = int(value)
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(value, int):
        raise InputError(_name(what, value).format("an integer"))
    _range(value, what, low, high)
    return value


def check_float(value: Any, what: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """`value` as a finite float in [low, high] ((low, high] with `low_open`); bools,
    strings, NaN and infinities are refused."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        raise InputError(_name(what, value).format("a number"))
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(_name(what, value).format("a number")) from None
    if not math.isfinite(f):
        raise InputError(_name(what, value).format("a finite number"))
    if low_open and low is not None and f <= low:
        raise InputError(f"{what} must be greater than {low:g}, got {value!r}")
    _range(f, what, None if low_open else low, high)
    return f


def _range(v: float, what: str, low: float | None, high: float | None) -> None:
    if low is not None and v < low or high is not None and v > high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise InputError(f"{what} must be in [{lo}, {hi}], got {v!r}")


def check_choice(value: Any, what: str, choices: Any) -> Any:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_writable_target(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse, before any work, an output path that cannot be written: one whose parent is
    a file, or that lies on a read-only place. Creates nothing."""
    p = os.path.abspath(os.fspath(path))
    parent = p
    while True:
        parent = os.path.dirname(parent)
        if os.path.exists(parent):
            break
        if parent == os.path.dirname(parent):
            break
    if not os.path.isdir(parent):
        raise OutputNotWritableError(f"{what} {os.fspath(path)!r} cannot be written: {parent!r} is a file, not a folder")
    if os.path.exists(p) and not os.path.isdir(p) and not os.access(p, os.W_OK):
        raise OutputNotWritableError(f"{what} {os.fspath(path)!r} cannot be written (permission denied)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"{what} {os.fspath(path)!r} cannot be written: no write permission in {parent!r}")

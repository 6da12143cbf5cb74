"""`workbench` command line (also `python -m workbench.cli`).

Each command group lives in `workbench/commands/<name>.py` with `register(subparsers)`;
this file only assembles them, so a new capability adds a module, not a branch here.

Errors: input the workbench refuses (every `WorkbenchError`, and a `ValueError` or
message-only `OSError` raised by the workbench's own code), running out of memory, and the
file system's refusals (disk full, permission denied, read-only, is / is not a folder, no
such file) are reported in one line, `workbench <command>: error: <message>`, with exit
code 2. Anything else is a defect and keeps its traceback.

Output paths (`--out`, `--html`, `--plot`, `--save-best`) are checked before a command
does any work, so an output under a file, in a folder without write permission or on a
read-only disk is refused before a model is loaded.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys

from . import commands

# errno values of OSErrors that are the user's file system talking, not a defect
FILE_ERRNOS = frozenset(
    getattr(errno, n)
    for n in ("ENOSPC", "EDQUOT", "EFBIG", "EACCES", "EPERM", "EROFS", "EISDIR", "ENOTDIR", "ENOENT", "EEXIST",
              "ENAMETOOLONG", "ELOOP", "ENOTEMPTY", "EXDEV", "EBUSY", "ETXTBSY", "EIO")
    if hasattr(errno, n)
)  # fmt: skip

# argument names that are output paths, and (command, argument) pairs that name a folder
OUTPUT_ARGS = ("out", "html", "plot", "save_best")
OUTPUT_FOLDERS = frozenset({("latent", "out"), ("train", "out")})

_PACKAGE_DIRS = tuple(
    d + os.sep
    for d in {
        os.path.dirname(os.path.dirname(os.path.abspath(commands.__file__))),  # workbench/
        os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(commands.__file__)))), "probes"),
        os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(commands.__file__)))), "apps"),
    }
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Latent Workbench: steering vectors, attention sinks and latent reasoning, offline on CPU "
        "with the embedded SmolLM2-135M-Instruct, and on GPU with real Qwen3.5 checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        mod.register(sub)
    return parser


def _raised_by_us(e: BaseException) -> bool:
    """True when the innermost frame of `e`'s traceback is in the workbench's own code
    (workbench/, probes/, apps/): a refusal the code meant, not an error deep inside a
    library."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIRS)


def _os_message(e: OSError) -> str:
    if e.strerror is None:
        return str(e)
    msg = e.strerror
    if e.filename is not None:
        msg += f": {os.fsdecode(e.filename)!r}"
    if getattr(e, "filename2", None) is not None:
        msg += f" -> {os.fsdecode(e.filename2)!r}"
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        msg += " (outputs are written atomically, so no half-written file replaced one; free some space and run it again)"
    return msg


def user_error(e: BaseException) -> str | None:
    """The one-line message for an error that is the user's to fix, or None for a defect
    (which keeps its traceback)."""
    from .errors import WorkbenchError

    if isinstance(e, WorkbenchError):
        text = str(e)
    elif isinstance(e, OSError) and e.errno in FILE_ERRNOS:
        text = _os_message(e)
    elif isinstance(e, OSError) and e.errno is None and _raised_by_us(e):
        text = str(e)
    elif isinstance(e, MemoryError):  # workbench.memory's out-of-memory message (torch's CUDA OOM is a RuntimeError)
        text = str(e) or "out of memory"
    elif isinstance(e, ValueError) and _raised_by_us(e):
        text = str(e)
    else:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or type(e).__name__


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse unwritable output paths before any work (see the module doc)."""
    from .errors import OutputNotWritableError, check_writable_target

    for name in OUTPUT_ARGS:
        value = getattr(args, name, None)
        if not value:
            continue
        flag = "--" + name.replace("_", "-")
        check_writable_target(value, f"{flag}")
        folder = (args.command, name) in OUTPUT_FOLDERS
        if folder and os.path.isfile(value):
            raise OutputNotWritableError(f"{flag} {value!r} is a file; this command writes a folder there")
        if not folder and os.path.isdir(value):
            raise OutputNotWritableError(f"{flag} {value!r} is a folder; give the path of the file to write")


def command_name(args: argparse.Namespace) -> str:
    parts = [args.command]
    for attr in ("latent_cmd", "steer_command", "prefix_command", "bench", "recipe"):
        v = getattr(args, attr, None)
        if isinstance(v, str):
            parts.append(v)
            break
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        check_outputs(args)
        return int(args.func(args) or 0)
    except Exception as e:  # noqa: BLE001 - a defect is re-raised below with its traceback
        msg = user_error(e)
        if msg is None:
            raise
        print(f"workbench {command_name(args)}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

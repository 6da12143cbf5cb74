"""The harness of the bad-input suite (`tests/test_bad_inputs.py`).

A case is one bad input: a callable that must raise, the exact error class it must raise
(not a subclass, not a parent: `type(err) is error`), and substrings its message must
contain, typically the bad value and what would be valid. `no_new_files` folders must be
unchanged afterwards (nothing half-written when input is rejected).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


@dataclass
class Case:
    id: str
    call: Callable[..., Any]  # called with the fixture values the table's test passes
    error: type[BaseException]
    names: Sequence[str] = ()  # each must appear in str(error), case-insensitively
    no_new_files: bool = True  # the test's output folder stays as it was


def snapshot(folder: Path) -> dict[str, int]:
    """Every file and folder under `folder`, hidden ones included, with its size."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            p = Path(root) / n
            out[str(p.relative_to(folder))] = p.stat().st_size if p.is_file() else -1
    return out


def check(case: Case, *args: Any, out_dir: Path | None = None) -> BaseException:
    before = snapshot(out_dir) if out_dir is not None and case.no_new_files else None
    try:
        case.call(*args)
    except BaseException as e:  # noqa: BLE001 - the class is checked exactly below
        err = e
    else:
        raise AssertionError(f"[{case.id}] no error raised (expected {case.error.__name__})")
    if type(err) is not case.error:
        raise AssertionError(f"[{case.id}] raised {type(err).__name__}: {err} (expected {case.error.__name__})") from err
    msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    missing = [n for n in case.names if n.lower() not in msg.lower()]
    if missing:
        raise AssertionError(f"[{case.id}] message {msg!r} does not name {missing}")
    if before is not None:
        after = snapshot(out_dir)
        assert after == before, f"[{case.id}] files changed although the input was refused: {sorted(set(after) ^ set(before))}"
    return err


def ids(cases: Sequence[Case]) -> list[str]:
    return [c.id for c in cases]


@dataclass
class Table:
    """Cases of one capability; `min_cases` is the issue's floor."""

    name: str
    cases: list[Case] = field(default_factory=list)
    min_cases: int = 10

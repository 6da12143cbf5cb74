"""Lazy package attributes (PEP 562), shared by the packages that export names without
importing torch/transformers/nnsight at `import` time."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str], submodules: set[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`: `exports` maps a public name to the
    submodule (relative to the package) that defines it; `submodules` are importable as
    attributes. A resolved name is cached in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        elif name in submodules:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        sys.modules[package].__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(submodules))

    return __getattr__, __dir__

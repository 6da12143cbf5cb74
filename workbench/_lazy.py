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


def callable_module(module_name: str, fn_name: str) -> None:
    """Make module `module_name` callable as its function `fn_name`.

    For a public function that shares its name with the submodule defining it
    (`workbench.generate`, `workbench.train.bake`): importing the submodule makes Python
    bind the module as the package attribute, shadowing the function. A callable module
    keeps `package.fn(...)` working whichever happened first."""
    mod = sys.modules[module_name]

    class _CallableModule(type(mod)):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, fn_name)(*args, **kwargs)

    _CallableModule.__name__ = f"CallableModule[{fn_name}]"
    mod.__class__ = _CallableModule

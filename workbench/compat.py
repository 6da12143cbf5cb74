"""Names that differ between the transformers versions `pyproject.toml` admits.

transformers 5.24 renamed the cache argument of every model, decoder block and attention
module from `past_key_values=` to `cache=` (the old name still works through a deprecation
shim until 5.40, with a warning per call) and the output field from `.past_key_values` to
`.cache`. The workbench calls blocks directly (the fast decode path, the latent head), so it
asks the signature which name a module takes instead of guessing from a version number.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

CACHE_NAMES = ("cache", "past_key_values")  # newest first


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(fn: Callable) -> str | None:
    try:
        params = inspect.signature(fn).parameters  # follows the deprecation decorator's __wrapped__
    except (TypeError, ValueError):
        return None
    return next((n for n in CACHE_NAMES if n in params), None)


def cache_kwarg(module_or_fn: Any) -> str | None:
    """The keyword `module_or_fn` (a module, its class, or a function) takes its cache
    under: "cache" (transformers >= 5.24), "past_key_values" (older), or None."""
    fn = module_or_fn
    if not inspect.isfunction(fn) and not inspect.ismethod(fn):
        cls = fn if isinstance(fn, type) else type(fn)
        fn = cls.forward
    return _cache_kwarg_of(fn)


def with_cache(module: Any, cache: Any) -> dict[str, Any]:
    """`{name: cache}` for calling `module` with a cache under the keyword it takes."""
    name = cache_kwarg(module)
    if name is None:
        raise TypeError(f"{type(module).__name__}.forward takes no cache argument ({' or '.join(CACHE_NAMES)})")
    return {name: cache}


def output_cache(out: Any) -> Any:
    """The cache a transformers forward returned (`.cache`, or `.past_key_values` before 5.24)."""
    fields = getattr(type(out), "__dataclass_fields__", None) or {}
    for name in CACHE_NAMES:
        if name in fields:
            return getattr(out, name)
    raise TypeError(f"{type(out).__name__} carries no cache ({' or '.join(CACHE_NAMES)})")

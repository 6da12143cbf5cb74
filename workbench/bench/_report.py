"""Shared benchmark plumbing: environment stamp, interleaved timing, table printing."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch


def environment() -> dict:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }
    try:
        import nnsight

        env["nnsight"] = getattr(nnsight, "__version__", "?")
    except Exception:  # pragma: no cover - nnsight is a hard dependency
        pass
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each callable `repeats` times, interleaving them round by round so drift in the
    machine's speed hits every variant alike. Returns seconds per call, per variant."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def print_report(result: dict) -> None:
    print(f"== {result.get('benchmark', 'benchmark')} ==")
    env = result.get("environment", {})
    if env:
        print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    for row in result.get("rows", []):
        print("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
    for k, v in result.get("summary", {}).items():
        print(f"{k}: {_fmt(v)}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)

"""Sink inspection (chunked, bounded memory) vs capturing full attention for every layer: peak memory and time."""

from __future__ import annotations

import gc
import time

import torch

from ._report import environment, median


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=1024, help="prompt length in tokens (default 1024)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak(device: torch.device) -> bool:
    """Reset the peak-memory counter: CUDA allocator stats, or the process's peak RSS
    (VmHWM) through /proc/self/clear_refs (Linux)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # hand freed heap pages back to the OS so the RSS baseline holds no reusable slack
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_since_reset(device: torch.device, before: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated(device) - before)
    hwm = _proc_status("VmHWM")
    return float("nan") if hwm is None else float(hwm - before)


def _current(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return int(_proc_status("VmRSS") or 0)


def run(args) -> dict:
    from ..models import load
    from ..sinks import attention_patterns, full_attention_bytes, inspect

    bench = load(args.model, device=args.device)
    a = bench.arch
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(a.vocab_size, 30000), (args.tokens,), generator=g).tolist()
    variants = {
        "sinks_inspect_chunked": lambda: inspect(bench, [ids]),
        "full_attention_all_layers": lambda: attention_patterns(bench, ids),
    }
    for fn in variants.values():  # warm-up (allocator, lazy imports)
        fn()
        gc.collect()
    peaks: dict[str, list[float]] = {k: [] for k in variants}
    times: dict[str, list[float]] = {k: [] for k in variants}
    can_peak = True
    for _ in range(args.repeats):
        for name, fn in variants.items():
            can_peak &= _reset_peak(bench.device)
            before = _current(bench.device)
            t = time.perf_counter()
            out = fn()
            if bench.device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
            peaks[name].append(_peak_since_reset(bench.device, before) if can_peak else float("nan"))
            del out
            gc.collect()
    rows = [
        {
            "variant": k,
            "median_s": median(times[k]),
            "peak_extra_MiB": median(peaks[k]) / 2**20,
        }
        for k in variants
    ]
    base, full = rows[0], rows[1]
    return {
        "benchmark": "sinks",
        "environment": environment(),
        "config": {
            "model": args.model,
            "tokens": args.tokens,
            "repeats": args.repeats,
            "attention_layers": len(a.attention_layers),
            "heads": a.n_heads,
            "memory_measure": "CUDA max_memory_allocated" if bench.device.type == "cuda" else "peak RSS (VmHWM after clear_refs) minus RSS before",
        },
        "rows": rows,
        "summary": {
            "full_attention_tensor_MiB": full_attention_bytes(bench, args.tokens) / 2**20,
            "peak_memory_ratio_full_vs_inspect": full["peak_extra_MiB"] / base["peak_extra_MiB"] if base["peak_extra_MiB"] > 0 else float("nan"),
            "time_ratio_full_vs_inspect": full["median_s"] / base["median_s"],
        },
    }

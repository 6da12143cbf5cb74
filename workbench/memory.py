"""Free memory and the one out-of-memory message: what is needed against what is free."""

from __future__ import annotations

import os

import torch


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device` (CUDA: free device memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**62


def weight_bytes(module: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of `module`'s parameters (tied ones once), in `dtype` or as stored; works on
    the meta device, so a model's need can be counted before it exists."""
    return sum(p.numel() * (dtype.itemsize if dtype is not None else p.element_size()) for p in module.parameters())


def size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def out_of_memory(what: str, need: float, device: torch.device, hint: str = "") -> MemoryError:
    free = available_memory(device)
    return MemoryError(f"{what} needs about {size(need)}, but only {size(free)} is free on {device}" + (f"; {hint}" if hint else ""))


def check_fits(what: str, need: float, device: torch.device, hint: str = "") -> None:
    """Raise `out_of_memory` when `need` bytes exceed what is free on `device` (device memory
    on CUDA, available host memory on the CPU), before anything is allocated."""
    if device.type in ("cuda", "cpu") and need > available_memory(device):
        raise out_of_memory(what, need, device, hint)

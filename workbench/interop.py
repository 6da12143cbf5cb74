"""TransformerLens interop: a `TransformerBridge` over the workbench model's own weights.

`TransformerBridge.boot_transformers(..., hf_model=model)` rewires the module tree it is
given (it swaps decoder blocks for its bridge components) and switches it to eager
attention. Handing it `bench.hf` itself would change the model every other part of the
workbench uses, so the bridge gets a *structural* copy of the module tree whose parameters
and buffers are the very same tensors (no weight is copied, an in-place weight update is
seen by both), and `bench.hf` stays untouched. Nothing is downloaded: the config comes from
the model and the tokenizer is the bench's.
"""

from __future__ import annotations

import copy
from typing import Any


def shared_weight_copy(module: Any) -> Any:
    """A deep copy of `module`'s structure whose parameters and buffers are the original
    tensors (shared storage)."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = p
    for b in module.buffers():
        memo[id(b)] = b
    return copy.deepcopy(module, memo)


def transformer_lens_bridge(bench: Any, *, model_name: str | None = None) -> Any:
    """A TransformerLens `TransformerBridge` over the same weights as `bench.hf` (eager
    attention; raw HF numerics, i.e. no LayerNorm folding). Use `bridge.run_with_cache(ids)`
    with token ids from `bench.tokenizer` (the bridge's `to_tokens` may add a BOS token the
    workbench does not). `bench.hf` is not modified."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ValueError("TransformerLens interop needs the transformer-lens package (>= 3)") from e
    hf_copy = shared_weight_copy(bench.hf)
    try:
        return TransformerBridge.boot_transformers(
            model_name or getattr(hf_copy.config, "name_or_path", None) or bench.name,
            hf_model=hf_copy,
            tokenizer=bench.tokenizer,
            device=str(bench.device),
            dtype=bench.dtype,
        )
    except (KeyError, NotImplementedError) as e:
        raise ValueError(
            f"TransformerLens has no bridge for {type(bench.hf).__name__} ({bench.arch.family}): {e}"
        ) from e

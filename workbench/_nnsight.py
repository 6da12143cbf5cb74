"""Where a loaded model is wrapped for nnsight (nnsight patches process-wide hooks on import).

Interpretability code goes through `workbench.trace` or `wrap()` here. The other modules
that import nnsight do so for their own integrations only, lazily: `remote.py` (NDIF
remote execution), `vllm_steer.py` (nnsight's vLLM engine) and the bench report (its
version). nnsight >= 0.8 deprecates `LanguageModel` in favour of `TransformersModel` with a
task, which is what we wrap an already-loaded transformers model in.
"""

from __future__ import annotations

from typing import Any

import torch


def wrap(hf: torch.nn.Module, tokenizer: Any):
    """Wrap an already-loaded transformers causal LM for nnsight traces.

    The model stays where it is. nnsight builds a transformers pipeline around it, and a
    pipeline given no device picks device 0 and moves the model there: a model on the
    meta device (shapes only) cannot be moved and raised, and a CPU model on a machine with
    a GPU would have been moved to the GPU. So the pipeline is told the model's own device;
    a model spread by accelerate (`hf_device_map`) is placed already and gets none (the
    pipeline refuses a device then)."""
    from nnsight.modeling.transformers import TransformersModel

    kwargs: dict[str, Any] = {}
    if getattr(hf, "hf_device_map", None) is None:
        kwargs["device"] = hf.get_input_embeddings().weight.device
    return TransformersModel(hf, task="text-generation", tokenizer=tokenizer, **kwargs)

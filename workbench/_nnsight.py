"""The one module that imports nnsight (it patches process-wide hooks on import).

Everything else goes through `workbench.trace` or `wrap()` here; nothing else imports
nnsight. nnsight >= 0.8 deprecates `LanguageModel` in favour of `TransformersModel` with a
task, which is what we wrap an already-loaded transformers model in.
"""

from __future__ import annotations

from typing import Any

import torch


def wrap(hf: torch.nn.Module, tokenizer: Any):
    """Wrap an already-loaded transformers causal LM for nnsight traces."""
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(hf, task="text-generation", tokenizer=tokenizer)

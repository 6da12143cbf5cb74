"""Latent Workbench: steering vectors, attention sinks and latent reasoning on Qwen3.5
(hybrid Gated DeltaNet / full attention) and Llama-style models, through nnsight.

    import workbench as wb
    bench = wb.load()                       # SmolLM2-135M-Instruct, embedded, offline
    acts = wb.capture(bench, ["Hello"], layers=[10, 20])
    print(wb.generate(bench, "What is the capital of France?"))

Names are imported lazily: `import workbench` does no work and does not import torch,
transformers or nnsight until a name is used.
"""

from __future__ import annotations

from ._lazy import lazy_exports


__version__ = "0.1.0"

_EXPORTS = {
    "load": "models",
    "Bench": "models",
    "available_models": "models",
    "DEFAULT_MODEL": "models",
    "ArchInfo": "arch",
    "capture": "trace",
    "run_with_edits": "trace",
    "Activations": "trace",
    "generate": "generate",
    "generate_stream": "generate",
    "generate_full": "generate",
    "logit_lens": "lens",
    "LensResult": "lens",
    "AddVector": "edits",
    "Ablate": "edits",
    "apply_edits": "edits",
    "SteeringVector": "steering.vector",
    "RandomPrefix": "prefix",
    "transformer_lens_bridge": "interop",
}
_SUBMODULES = {"steering", "prefix", "sinks", "latent", "train", "tasks", "viz", "lens", "edits", "tokenizers", "trace", "models", "arch", "generate", "bench", "evaluate", "interop", "inputs", "remote"}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, set(_SUBMODULES))

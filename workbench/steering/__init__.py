"""Steering vectors: contrastive extraction, quality metrics, steered generation, files.

    from workbench import steering as st
    vec = st.extract(bench, "sentiment", layers=[14], method=st.mean_diff())
    sw = st.sweep(bench, "sentiment")            # every layer, one batched pass
    wb.generate(bench, "Tell me about your day.", steer=[vec.steer(scale=4.0)])
    print(st.steer_report(bench, vec.steer(4.0)).summary())

Names load lazily, except `extract` and `sweep`: the function `extract` shares its name
with the submodule `extract`, and importing that submodule would rebind the package
attribute to the module, so both are bound here once (this imports torch, never nnsight).
"""

from __future__ import annotations

from .._lazy import lazy_exports


_EXPORTS = {
    # extraction
    "extract": "extract",
    "sweep": "extract",
    "capture_pairs": "extract",
    "resolve_pairs": "extract",
    "pairs_from_lists": "extract",
    "LayerSweep": "extract",
    "PairList": "extract",
    # methods
    "Method": "methods",
    "mean_diff": "methods",
    "pca": "methods",
    "logistic": "methods",
    "get_method": "methods",
    "METHODS": "methods",
    # metrics
    "magnitude": "metrics",
    "cosine_consistency": "metrics",
    "probe_accuracy": "metrics",
    "projection_gap": "metrics",
    "kl_divergence": "metrics",
    "split_pairs": "metrics",
    "layer_quality": "metrics",
    "LayerQuality": "metrics",
    "SweepResult": "metrics",
    # vectors
    "SteeringVector": "vector",
    "Steer": "vector",
    "creation_metadata": "vector",
    # application
    "check_compatible": "apply",
    "load_vector": "apply",
    "as_edits": "apply",
    "steering": "apply",
    "next_token_logits": "apply",
    "concept_token_ids": "apply",
    "concept_logprob": "apply",
    "steer_report": "apply",
    "side_effect_kl": "apply",
    "SteerReport": "apply",
    "steered_generate": "apply",
    "SteeredRun": "apply",
    "compare_stream": "apply",
    "NEUTRAL_PROMPTS": "apply",
}
from .extract import extract, sweep  # noqa: E402  (see module doc)

_SUBMODULES = {"extract", "methods", "metrics", "vector", "apply"}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, set(_SUBMODULES))

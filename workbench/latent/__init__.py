"""Latent reasoning: four latent loops on the one generation loop, and what each latent
step holds.

    from workbench import latent
    trace = latent.run(bench, "What is 3 + 4 * 2?", latent.Coconut(steps=6))
    print(trace.table(bench.tokenizer))

Policies: `Coconut(steps, begin, end, stop)`, `ProjectionHead.load(path)`,
`LatentHead.load(path, think_close_token_id=..., max_internal_tokens=..., chunk_size=...)`,
`SoftThinking(max_steps, temperature, top_k, top_p, min_p, cold_entropy, cold_patience)`,
`PauseTokens.load(path)`; `load_policy(folder)` reads what a training recipe saved.
Readouts: `workbench.latent.readout`; evaluation: `workbench.latent.eval`.
"""

from .engine import LatentStep, LatentTrace, LatentUpdate, Superposition, fed_embeddings, run, run_stream
from .policies import Coconut, LatentHead, PauseTokens, ProjectionHead, SoftThinking, load_policy
from .latent_sft import LatentSFT

__all__ = [
    "run",
    "run_stream",
    "LatentUpdate",
    "LatentTrace",
    "LatentStep",
    "Superposition",
    "fed_embeddings",
    "Coconut",
    "ProjectionHead",
    "LatentHead",
    "SoftThinking",
    "PauseTokens",
    "LatentSFT",
    "load_policy",
]

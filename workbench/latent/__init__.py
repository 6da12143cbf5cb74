"""Latent reasoning: four latent loops on the one generation loop, and what each latent
step holds.

    from workbench import latent
    trace = latent.run(bench, "What is 3 + 4 * 2?", latent.Coconut(steps=6))
    print(trace.table(bench.tokenizer))

Policies: `Coconut(steps, begin, end, stop)`, `ProjectionHead.load(path)`,
`LatentHead.load(path, think_close_token_id=..., max_internal_tokens=..., chunk_size=...)`,
`SoftThinking(max_steps, temperature, top_k, top_p, min_p, cold_entropy, cold_patience)`.
Readouts: `workbench.latent.readout`; evaluation: `workbench.latent.eval`.
"""

from .engine import LatentStep, LatentTrace, Superposition, fed_embeddings, run
from .policies import Coconut, LatentHead, ProjectionHead, SoftThinking

__all__ = [
    "run",
    "LatentTrace",
    "LatentStep",
    "Superposition",
    "fed_embeddings",
    "Coconut",
    "ProjectionHead",
    "LatentHead",
    "SoftThinking",
]

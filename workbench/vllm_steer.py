"""Batched steered generation on a vLLM engine, through nnsight's vLLM integration.

For throughput on many prompts: vLLM schedules and batches the requests itself (paged KV
cache, continuous batching), and the steering vectors ride along as an nnsight block
registered on the engine once (`VLLM.edit()`), which then runs on every forward of every
request until it is cleared.

Limits, from how vLLM and nnsight work:

- **A CUDA GPU and the `vllm` package.** Neither is a dependency of the workbench; where vLLM
  is not installed, `available()` says so and `steered_generate` raises a clear error (the
  tests skip).
- **Eager mode.** Hooks cannot fire inside vLLM's captured CUDA graphs, so nnsight builds the
  engine with `enforce_eager=True`: decode is slower per token than vLLM's graph mode, and
  the batching is where the speed comes from.
- **No in-place edits.** A vLLM decoder block returns `(hidden, residual)` whose sum is the
  residual stream, with buffers the engine reuses; the block's output is replaced by
  `(hidden + scale * v, residual)`, a new tensor, never written into.
- **Additive steering only.** `AddVector` edits (what `SteeringVector.edits()` gives) apply
  on every token, prompt and generated ("where" other than "all" is refused), and no
  ablation: the registered block has no per-request phase to tell prompt from decode.
- **Prefix caching off** (nnsight's default): a cached prefix would skip the forward, and
  with it the steering.
- Latent loops and the UI's live readouts need the workbench's own loop (`generate_stream`),
  which feeds continuous inputs and reads every step; vLLM takes token prompts only.
"""

from __future__ import annotations

from typing import Any, Sequence


def available() -> str | None:
    """None when vLLM and nnsight's vLLM integration import, else why not."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # not installed, or no CUDA build
        return f"vLLM is not installed or does not import ({type(e).__name__}: {e}); install it on a CUDA machine (pip install vllm)"
    try:
        from nnsight.modeling.vllm import VLLM  # noqa: F401
    except Exception as e:
        return f"nnsight's vLLM integration does not import ({type(e).__name__}: {e})"
    return None


def additive_edits(steer: Any) -> list[tuple[int, Any]]:
    """(layer, scale * vector) per edit of `steer` (SteeringVector(s) or AddVector edits);
    anything else is refused with the reason."""
    from .edits import AddVector
    from .generate import edits_from_steer

    out = []
    for e in edits_from_steer(steer):
        if not isinstance(e, AddVector):
            raise ValueError(f"vLLM steering takes additive vectors only; got {type(e).__name__} at layer {getattr(e, 'layer', '?')}")
        if e.where != "all":
            raise ValueError(
                f"vLLM steering applies on every token; AddVector at layer {e.layer} has where={e.where!r} "
                "(use where='all', or the workbench's own loop for phase-specific edits)"
            )
        out.append((int(e.layer), float(e.scale) * e.vector.float()))
    if not out:
        raise ValueError("no steering vectors given")
    return out


def engine(model: str, **engine_kwargs: Any):
    """An nnsight `VLLM` engine for `model` (a hub id or local path), dispatched now."""
    why = available()
    if why is not None:
        raise RuntimeError(why)
    from nnsight.modeling.vllm import VLLM

    engine_kwargs.setdefault("trust_remote_code", False)
    return VLLM(model, dispatch=True, **engine_kwargs)


def steered_generate(
    model: Any,
    prompts: Sequence[str],
    steer: Any,
    *,
    max_tokens: int = 64,
    temperature: float = 0.0,
    **engine_kwargs: Any,
) -> list[str]:
    """Generate a completion per prompt with the steering vectors added to the residual
    stream after their blocks, on every token; vLLM batches the prompts. `model` is a hub
    id / path (an engine is built) or an engine from `engine()`. Returns the texts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("no prompts given")
    adds = additive_edits(steer)
    llm = engine(model, **engine_kwargs) if isinstance(model, str) else model
    layers = llm.model.layers
    n = len(layers)
    for layer, v in adds:
        if not 0 <= layer < n:
            raise ValueError(f"steering layer {layer} is out of range; this model has layers 0..{n - 1}")
    from vllm import SamplingParams

    with llm.edit() as (tracer, handle):
        for _ in tracer.all():
            for layer, v in adds:
                out = layers[layer].output
                if isinstance(out, tuple):  # (hidden, residual): their sum is the stream
                    layers[layer].output = (out[0] + v.to(device=out[0].device, dtype=out[0].dtype), *out[1:])
                else:
                    layers[layer].output = out + v.to(device=out.device, dtype=out.dtype)
    try:
        results = llm.vllm_entrypoint.generate(list(prompts), SamplingParams(max_tokens=max_tokens, temperature=temperature))
    finally:
        handle.clear()
    return [r.outputs[0].text for r in results]

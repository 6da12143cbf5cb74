"""Past one machine: nnsight remote execution on NDIF.

    bench = workbench.remote.ndif("meta-llama/Llama-3.1-70B")     # config + tokenizer only
    acts = wb.capture(bench, prompts, layers=[40], remote=True)       # runs on NDIF
    out = wb.trace.run_with_edits(bench, prompts, [vec.steer(4.0)], remote=True)

`capture`, `trace.trace_batch` and `trace.run_with_edits` (and so steering extraction and
steered forwards built on them) take `remote=`: False (here), True (NDIF, for the models it
hosts; needs network and an API key: `api_key=` or nnsight's `CONFIG.API.APIKEY`) or
"local" (nnsight's serverless dry run: the request is serialized and deserialized as for
NDIF and then run here; the tests check it gives exactly the local numbers, edits
included). The generation loop runs its own cached forwards with hooks and is local-only:
for remote generation use nnsight's `model.generate(..., remote=True)` directly on
`bench.model`.
"""

from __future__ import annotations

from typing import Any


def ndif(repo_id: str, *, api_key: str | None = None, trust_remote_code: bool = False) -> Any:
    """A `Bench` for a model hosted on NDIF: the nnsight model is built on the meta device
    from the hub config (no weights are downloaded), with its tokenizer; every trace must
    pass `remote=True`. Offline, fails with a message saying so."""
    from nnsight.modeling.transformers import TransformersModel

    from .arch import arch_info
    from .models import Bench

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"NDIF models are named by hub id (owner/name), got {repo_id!r}")
    if api_key:
        from nnsight import CONFIG

        CONFIG.API.APIKEY = api_key
    try:
        lm = TransformersModel(repo_id, task="text-generation", trust_remote_code=trust_remote_code)
    except Exception as e:  # offline, unknown repo, gated repo: one readable message
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"could not read the config of {repo_id!r} from the hub ({type(e).__name__}: {first}); "
            "NDIF remote execution needs network access to the hub and to NDIF"
        ) from e
    hf = lm._module if hasattr(lm, "_module") else lm._model
    tok = lm.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return Bench(name=repo_id, model=lm, hf=hf, tokenizer=tok, arch=arch_info(hf), source=f"ndif:{repo_id}")


__all__ = ["ndif"]

"""What a latent step holds, read off against the vocabulary.

* `superposition`: non-negative weights over token embeddings that reconstruct a latent
  vector (NNLS over its `n_candidates` cosine-nearest token embeddings), with the relative
  reconstruction error and the effective number of tokens exp(H(w / sum w)).
* `decompose_steps`: fills nearest tokens + superposition into each `LatentStep`.
* `logit_lens_steps`: the per-layer logit lens at each latent step (one uncached forward
  over the fed input-embedding sequence; equal to the cached run by the loop's invariant).
* `trajectory`: PCA (scikit-learn) of the latent steps' hidden states together with the
  hidden states of an explicit chain-of-thought run of the same prompt.
* `global_parallelism`: Latent-SFT's effective global parallelism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..inputs import check_integer, check_number
from .engine import LatentStep, LatentTrace, Superposition, fed_embeddings


def effective_count(weights: Tensor) -> float:
    """exp(entropy) of the normalised non-negative `weights` (1 for a single token)."""
    w = weights.double().clamp_min(0)
    s = float(w.sum())
    if s <= 0:
        return 0.0
    p = w / s
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))


@torch.no_grad()
def superposition(bench: Any, vectors: Tensor, n_candidates: int = 64, keep: int = 16) -> list[Superposition]:
    """For each vector [n, d]: NNLS weights over its `n_candidates` cosine-nearest token
    embeddings (min ||v - E_c^T w||, w >= 0); keeps the `keep` largest weights."""
    from scipy.optimize import nnls

    n_candidates = check_integer(n_candidates, "n_candidates", low=1)
    keep = check_integer(keep, "keep", low=1)
    d = bench.arch.d_model
    if not isinstance(vectors, Tensor) or not vectors.is_floating_point() or vectors.ndim != 2 or vectors.shape[-1] != d:
        got = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise InputError(f"vectors must be a float tensor [n, {d}], got {got}")
    if not bool(torch.isfinite(vectors).all()):
        raise InputError("vectors contain NaN/inf; a superposition needs finite vectors")
    W = bench.hf.get_input_embeddings().weight.detach().float()
    v = vectors.to(W.device).float()
    cos = torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(W, dim=-1).T
    cand = cos.topk(min(n_candidates, W.shape[0]), dim=-1).indices
    out = []
    for i in range(v.shape[0]):
        A = W[cand[i]].double().cpu().numpy().T  # [d, n]
        b = v[i].double().cpu().numpy()
        w, resid = nnls(A, b, maxiter=50 * A.shape[1])
        vn = float(np.linalg.norm(b))
        order = np.argsort(-w)
        nz = order[w[order] > 0][:keep]
        wt = torch.as_tensor(w)
        out.append(
            Superposition(
                ids=cand[i].cpu()[torch.as_tensor(nz, dtype=torch.long)],
                weights=torch.as_tensor(w[nz], dtype=torch.float32),
                rel_error=float(resid / vn) if vn > 0 else 0.0,
                n_eff=effective_count(wt),
            )
        )
    return out


@torch.no_grad()
def decompose_steps(bench: Any, steps: list[LatentStep], k: int = 10, n_candidates: int = 64) -> None:
    """Fill `nearest_ids/cos` and `superposition` of every step in place."""
    k = check_integer(k, "k", low=1)
    if not steps:
        return
    from ..lens import nearest_tokens

    V = torch.stack([s.latent for s in steps])
    ids, cos = nearest_tokens(bench, V, k)
    sups = superposition(bench, V, n_candidates=n_candidates, keep=k)
    for s, i, c, sp in zip(steps, ids, cos, sups):
        s.nearest_ids, s.nearest_cos, s.superposition = i, c, sp


@dataclass
class StepLens:
    """layers: [L]; top_ids / top_probs: [n_steps, L, k]; entropy: [n_steps, L]."""

    layers: list[int]
    top_ids: Tensor
    top_probs: Tensor
    entropy: Tensor


@torch.no_grad()
def logit_lens_steps(bench: Any, trace: LatentTrace, k: int = 5) -> StepLens:
    """Per-layer logit lens at each latent step's state (the position whose hidden the
    latent was computed from)."""
    from ..generate import base_model
    from ..lens import decode_residual, entropy

    from ..arch import decoder_layers

    if not isinstance(trace, LatentTrace):
        raise InputError(f"trace must be a LatentTrace (from latent.run), got {type(trace).__name__}")
    k = check_integer(k, "k", low=1, high=int(bench.hf.get_input_embeddings().weight.shape[0]))
    seq = fed_embeddings(bench, trace, upto=len(trace.fed))[None]
    outs: list[Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o).detach()))
        for layer in decoder_layers(bench.hf)
    ]
    try:
        base_model(bench.hf)(inputs_embeds=seq, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    P = len(trace.prompt_ids)
    pos = [P - 1 + s.loop_step for s in trace.steps]
    L = len(outs)
    tops_i, tops_p, ents = [], [], []
    for p in pos:
        logits = decode_residual(bench, torch.stack([outs[l][0, p] for l in range(L)]))
        probs = torch.softmax(logits, -1)
        t = probs.topk(k, -1)
        tops_i.append(t.indices.cpu())
        tops_p.append(t.values.cpu())
        ents.append(entropy(logits).cpu())
    if not pos:
        return StepLens(list(range(L)), torch.zeros(0, L, k, dtype=torch.long), torch.zeros(0, L, k), torch.zeros(0, L))
    return StepLens(list(range(L)), torch.stack(tops_i), torch.stack(tops_p), torch.stack(ents))


@dataclass
class Trajectory:
    """PCA of latent-step hidden states and explicit-CoT hidden states in one space.

    latent: [n_latent, 2]; cot: [n_cot, 2]; explained: [2] variance ratio;
    cot_tokens: the decoded CoT token per point; latent_labels: top next token per step."""

    latent: np.ndarray
    cot: np.ndarray
    explained: np.ndarray
    cot_tokens: list[str]
    latent_labels: list[str]


@torch.no_grad()
def cot_hiddens(bench: Any, prompt: str | list[int], max_new_tokens: int = 64, **kwargs) -> tuple[Tensor, list[int]]:
    """Hidden states [n, d] (after the final norm, the state each token was chosen from)
    and the token ids of an explicit chain-of-thought greedy run of `prompt`."""
    from ..generate import generate_stream

    from .policies import stop_ids, token_id

    enable = kwargs.pop("enable_thinking", True if token_id(bench.tokenizer, "</think>") is not None else None)
    kwargs.setdefault("stop_ids", stop_ids(bench))
    rows = [prompt] if isinstance(prompt, list) else prompt
    hs, ids = [], []
    for st in generate_stream(bench, rows, max_new_tokens=max_new_tokens, keep_hidden=True, enable_thinking=enable, **kwargs):
        if int(st.tokens[0]) >= 0:
            hs.append(st.hidden[0].float().cpu())
            ids.append(int(st.tokens[0]))
    return torch.stack(hs), ids


def trajectory(bench: Any, trace: LatentTrace, cot: tuple[Tensor, list[int]], n_components: int = 2) -> Trajectory:
    """Fit PCA on the latent steps' hidden states and the CoT run's hidden states together."""
    from sklearn.decomposition import PCA

    n_components = check_integer(n_components, "n_components", low=1)
    lat = torch.stack([s.hidden for s in trace.steps]) if trace.steps else torch.zeros(0, cot[0].shape[-1])
    X = torch.cat([lat, cot[0]]).numpy()
    if X.shape[0] < n_components:
        raise InputError(f"need at least {n_components} points for PCA, got {X.shape[0]}")
    pca = PCA(n_components=n_components).fit(X)
    Z = pca.transform(X)
    tok = bench.tokenizer
    return Trajectory(
        latent=Z[: lat.shape[0]],
        cot=Z[lat.shape[0] :],
        explained=pca.explained_variance_ratio_,
        cot_tokens=[tok.decode([t]) for t in cot[1]],
        latent_labels=[tok.decode([int(s.top_ids[0])]) for s in trace.steps],
    )


@dataclass
class Parallelism:
    """Latent-SFT effective global parallelism.

    scores: [n_paths] path scores; n_eff = exp(H(softmax(scores / tau))); n_eff_random: the
    same for random matching (the latent steps' distributions with the vocabulary randomly
    permuted, mean over `n_random` draws); normalised = n_eff / n_eff_random."""

    scores: Tensor
    n_eff: float
    n_eff_random: float
    normalised: float


def _path_scores(logq: Tensor, paths: list[Tensor]) -> Tensor:
    # score of a path: mean over its tokens of the best log-probability any latent step gives it
    best = logq.max(dim=0).values  # [V]
    return torch.stack([best[p].mean() for p in paths])


def _n_eff(scores: Tensor, tau: float) -> float:
    p = torch.softmax(scores.double() / tau, -1)
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


@torch.no_grad()
def global_parallelism(
    bench: Any, trace: LatentTrace, paths: Sequence[str], tau: float = 1.0, n_random: int = 32, seed: int = 0
) -> Parallelism:
    """Score each explicit reasoning path (text) against the latent steps' vocabulary
    distributions (the model's next-token distribution at each step) and report
    N_eff = exp(H(softmax(scores / tau))), normalised by random matching."""
    if not trace.steps:
        raise InputError("the trace has no latent steps to score paths against")
    if isinstance(paths, str) or not hasattr(paths, "__iter__"):
        raise InputError(f"paths must be a list of reasoning-path strings, got {type(paths).__name__}")
    paths = list(paths)
    if len(paths) < 2:
        raise InputError(f"need at least 2 reasoning paths, got {len(paths)}")
    for i, p in enumerate(paths):
        if not isinstance(p, str):
            raise InputError(f"reasoning path {i} must be a string, got {type(p).__name__}")
    tau = check_number(tau, "tau", "a finite number > 0", low=0.0, low_open=True)
    n_random = check_integer(n_random, "n_random", low=1)
    from ..generate import check_seed

    seed = check_seed(seed, allow_none=False)
    head = bench.hf.get_output_embeddings()
    p0 = next(head.parameters())
    H = torch.stack([s.hidden for s in trace.steps]).to(device=p0.device, dtype=p0.dtype)
    logq = torch.log_softmax(head(H).float(), -1).cpu()  # [n_steps, V]
    toks = []
    for i, text in enumerate(paths):
        ids = bench.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise InputError(f"reasoning path {i} is empty")
        toks.append(torch.as_tensor(ids))
    scores = _path_scores(logq, toks)
    n_eff = _n_eff(scores, tau)
    g = torch.Generator().manual_seed(seed)
    rand = [_n_eff(_path_scores(logq[:, torch.randperm(logq.shape[1], generator=g)], toks), tau) for _ in range(n_random)]
    n_rand = float(np.mean(rand))
    return Parallelism(scores=scores, n_eff=n_eff, n_eff_random=n_rand, normalised=n_eff / n_rand)

"""What a latent step holds, read off against the vocabulary.

* `superposition`: non-negative weights over token embeddings that reconstruct a latent
  vector (NNLS over its `n_candidates` cosine-nearest token embeddings), with the relative
  reconstruction error and the effective number of tokens exp(H(w / sum w)).
* `decompose_steps`: fills nearest tokens + superposition into each `LatentStep`.
* `logit_lens_steps`: the per-layer logit lens at each latent step (one uncached forward
  over the fed input-embedding sequence; equal to the cached run by the loop's invariant).
* `trajectory`: PCA (scikit-learn) of the latent steps' hidden states together with the
  hidden states of an explicit chain-of-thought run of the same prompt.
* `global_parallelism`: Latent-SFT's effective global parallelism (the original's
  parallelism.py; the pure math in `parallelism_from_tensors`), with the model's own hidden
  states standing in for Latent-SFT's latent encoder.
* `compression_rates`: explicit chain tokens per latent step, plain and coverage-weighted
  (not Latent-SFT's effective compression rate, whose definition is not in its code).
* `path_likelihood_spread`: an order-free spread of path likelihoods (not Latent-SFT's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

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
    keep = max([k] + [len(s.mixture_ids) for s in steps if s.mixture_ids is not None])  # room for a known mixture
    sups = superposition(bench, V, n_candidates=n_candidates, keep=keep)
    for s, i, c, sp in zip(steps, ids, cos, sups):
        s.nearest_ids, s.nearest_cos, s.superposition = i, c, sp
        if s.mixture_ids is not None:
            sp.truth_recall, sp.truth_l1 = mixture_agreement(sp, s.mixture_ids, s.mixture_weights)


def mixture_agreement(fit: Superposition, ids: Tensor, weights: Tensor) -> tuple[float, float]:
    """(recall, L1) of an NNLS fit against a known mixture sum_j weights_j e_{ids_j}:
    recall = share of the mixture's tokens (weight > 0) the fit gives weight; L1 =
    sum over the union of |w_fit - w_true| (raw fit weights, not normalised)."""
    true = {int(t): float(w) for t, w in zip(ids.tolist(), weights.tolist()) if w > 0}
    got = {int(t): float(w) for t, w in zip(fit.ids.tolist(), fit.weights.tolist())}
    if not true:
        return float("nan"), float("nan")
    recall = sum(1 for t in true if got.get(t, 0.0) > 0) / len(true)
    l1 = sum(abs(got.get(t, 0.0) - true.get(t, 0.0)) for t in set(true) | set(got))
    return recall, l1


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
def cot_stream(
    bench: Any, prompt: str | list[int], max_new_tokens: int = 64, *, decode: bool = True, **kwargs
) -> Iterator[tuple[list[Tensor], list[int], str]]:
    """The explicit chain-of-thought greedy run of `prompt` (thinking on where the model has
    `</think>`), token by token: after each visible token, (hidden states so far [d] each,
    after the final norm: the state the token was chosen from; token ids so far; the text so
    far without end-of-turn tokens, "" with `decode=False`). The web app streams it;
    `cot_hiddens` keeps the end (without decoding)."""
    from ..generate import generate_stream

    from .policies import stop_ids, token_id

    enable = kwargs.pop("enable_thinking", True if token_id(bench.tokenizer, "</think>") is not None else None)
    stops = kwargs.setdefault("stop_ids", stop_ids(bench))
    rows = [prompt] if isinstance(prompt, list) else prompt
    hs: list[Tensor] = []
    ids: list[int] = []
    for st in generate_stream(bench, rows, max_new_tokens=max_new_tokens, keep_hidden=True, enable_thinking=enable, **kwargs):
        if int(st.tokens[0]) >= 0:
            hs.append(st.hidden[0].float().cpu())
            ids.append(int(st.tokens[0]))
            yield hs, ids, bench.tokenizer.decode([i for i in ids if i not in stops]) if decode else ""


def cot_hiddens(bench: Any, prompt: str | list[int], max_new_tokens: int = 64, **kwargs) -> tuple[Tensor, list[int]]:
    """Hidden states [n, d] (after the final norm, the state each token was chosen from)
    and the token ids of an explicit chain-of-thought greedy run of `prompt` (`cot_stream`
    to its end)."""
    hs: list[Tensor] = []
    ids: list[int] = []
    for hs, ids, _ in cot_stream(bench, prompt, max_new_tokens, decode=False, **kwargs):
        pass
    if not hs:
        raise InputError("the chain-of-thought run produced no token (max_new_tokens must be >= 1)")
    return torch.stack(hs), list(ids)


def trajectory(bench: Any, trace: LatentTrace, cot: tuple[Tensor | Sequence[Tensor], list[int]], n_components: int = 2) -> Trajectory:
    """Fit PCA on the latent steps' hidden states and the CoT run's hidden states together
    (`cot`: what `cot_hiddens` returns, or `cot_stream`'s list of states and ids)."""
    from sklearn.decomposition import PCA

    n_components = check_integer(n_components, "n_components", low=1)
    if not isinstance(cot[0], Tensor):
        if not cot[0]:
            raise InputError("the chain-of-thought run has no hidden states to place beside the latent steps")
        cot = (torch.stack(list(cot[0])), cot[1])
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
class GlobalParallelism:
    """Latent-SFT's effective global parallelism of one latent trace against M reference paths.

    n_eff: exp(H(softmax(scores / tau))) over the paths; n_eff_random: the same statistic
    under random no-repeat matching (mean over `n_random` trials); normalised: n_eff /
    max(eps, n_eff_random) (the original's `final_score`). scores: [M] matched path scores
    s_m = (1/T) sum_t log(mass_t + eps); random_scores: [n_random, M] the path scores of
    each random trial; matching: per path, matching[m][t] = the segment latent step t was
    matched to; spans: per path, the T [start, end) token spans of its segments;
    n_steps: T, the latent steps; paths: indices (into the caller's list) of the paths
    scored, after de-duplication; zero_mass: the share of matched (path, step) terms whose
    segment has no token in the step's top-k (each such term is log(eps); when it is 1 every
    path scores the same floor, N_eff = M and normalised = 1: no evidence either way);
    settings: every parameter the numbers depend on."""

    n_eff: float
    n_eff_random: float
    normalised: float
    scores: Tensor
    random_scores: Tensor
    matching: list[list[int]]
    spans: list[list[tuple[int, int]]]
    n_steps: int
    paths: list[int]
    zero_mass: float
    settings: dict


def segment_spans(length: int, n_segments: int) -> list[tuple[int, int]]:
    """Latent-SFT's segmentation of a path of `length` tokens into `n_segments` contiguous
    spans: segment t is [floor(t L / T), floor((t + 1) L / T)) (sizes differ by at most one,
    the longer ones last)."""
    length = check_integer(length, "length", low=0)
    n_segments = check_integer(n_segments, "n_segments", low=1)
    return [((t * length) // n_segments, ((t + 1) * length) // n_segments) for t in range(n_segments)]


def latent_distances(candidates: Tensor, references: Tensor, metric: str = "cosine", eps: float = 1e-12) -> Tensor:
    """[T, T'] distances between candidate latents [T, d] and reference latents [T', d]:
    1 - cosine (norms clamped at eps), or Euclidean for metric "l2" (as the original)."""
    cand, ref = candidates.double(), references.double()
    if metric == "cosine":
        cand = cand / cand.norm(dim=-1, keepdim=True).clamp_min(eps)
        ref = ref / ref.norm(dim=-1, keepdim=True).clamp_min(eps)
        return 1.0 - cand @ ref.T
    if metric == "l2":
        return torch.cdist(cand, ref)
    raise InputError(f"distance must be 'cosine' or 'l2', got {metric!r}")


def greedy_matching(distances: Tensor) -> list[int]:
    """Latent-SFT's matching rule: latent steps in order t = 0, 1, ..., each takes the
    closest segment no earlier step took (ties: the lowest segment index). Greedy in step
    order, not a minimum-cost assignment."""
    if not isinstance(distances, Tensor) or distances.ndim != 2:
        raise InputError(f"distances must be a 2-D tensor [steps, segments], got {getattr(distances, 'shape', type(distances).__name__)}")
    used: set[int] = set()
    out = []
    for row in distances.double().tolist():
        best, best_d = -1, None
        for s, d in enumerate(row):
            if s not in used and (best_d is None or d < best_d):
                best, best_d = s, d
        if best >= 0:
            used.add(best)
        out.append(best)
    return out


def _matched_score(probs: Tensor, top: Tensor, assignment: list[int], segments: list[Tensor], eps: float, zeros: list | None = None) -> float:
    # s = (1/T) sum_t log(mass_t + eps); mass_t = the probability step t gives the tokens of
    # its matched segment that are in its top-k, summed over the segment's token list (a
    # token repeated in the segment counts each time, as in the original's index_select)
    total = 0.0
    for t, s in enumerate(assignment):
        if s < 0 or s >= len(segments) or segments[s].numel() == 0:
            total += math.log(eps)
            continue
        ids = segments[s]
        keep = top[t, ids]
        mass = float(probs[t, ids][keep].sum()) if bool(keep.any()) else 0.0
        if zeros is not None:
            zeros.append(mass == 0.0)
        total += math.log(mass + eps)
    return total / float(max(1, len(assignment)))


def _posterior_n_eff(scores: Sequence[float] | Tensor, tau: float, eps: float) -> float:
    # the original's neff_from_scores: softmax(scores / max(1e-8, tau)), then
    # exp(-sum p log(p + eps))
    x = torch.as_tensor(scores, dtype=torch.float64) / max(1e-8, tau)
    e = torch.exp(x - x.max())
    p = e / e.sum().clamp_min(eps)
    return math.exp(-float((p * torch.log(p + eps)).sum()))


def parallelism_from_tensors(
    latents: Tensor,
    probs: Tensor,
    paths: Sequence[Sequence[int]],
    segment_latents: Sequence[Tensor],
    *,
    topk: int = 100,
    tau: float = 1.0,
    n_random: int = 64,
    seed: int = 0,
    distance: str = "cosine",
    eps: float = 1e-12,
) -> GlobalParallelism:
    """Latent-SFT's effective global parallelism (`compute_sample_parallelism_score` of the
    original parallelism.py) from tensors.

    latents: [T, d] the latent steps' vectors; probs: [T, V] each step's distribution over
    the vocabulary (rows >= 0 summing to 1; renormalised); paths: M >= 2 token-id lists, each
    at least T long; segment_latents: M tensors [T, d], row s the representation of segment
    s of that path, segment s being `segment_spans(len(path), T)[s]`.

    Per path: distances between the T step latents and the T segment latents, the greedy
    step-order matching, the score s_m = (1/T) sum_t log(sum of p_t over the matched
    segment's tokens in top-`topk`(p_t) + eps); N_eff = exp(H(softmax(s / tau))). The null
    repeats the scoring with a random permutation as the matching (`n_random` trials; one
    torch generator seeded with `seed`, drawn path by path, trial by trial, as in the
    original); the result is N_eff / mean of the trials' N_eff."""
    if not isinstance(latents, Tensor) or latents.ndim != 2 or not latents.is_floating_point():
        raise InputError(f"latents must be a float tensor [T, d], got {getattr(latents, 'shape', type(latents).__name__)}")
    T, d = latents.shape
    if T == 0:
        raise InputError("there are no latent steps (T = 0); the parallelism needs at least 1 latent step")
    if not isinstance(probs, Tensor) or probs.ndim != 2 or probs.shape[0] != T or not probs.is_floating_point():
        raise InputError(f"probs must be a float tensor [{T}, V] (one distribution per latent step), got {getattr(probs, 'shape', type(probs).__name__)}")
    for name, x in (("latents", latents), ("probs", probs)):
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"{name} contain NaN/inf; the parallelism needs finite values")
    P = probs.double()
    sums = P.sum(-1)
    if bool((P < 0).any()) or bool(((sums - 1).abs() > 2e-2).any()):
        raise InputError("probs must be probability rows (>= 0, each summing to 1); pass softmax(logits)")
    P = P / sums[:, None]
    V = P.shape[1]
    if isinstance(paths, (str, Tensor)) or not hasattr(paths, "__iter__"):
        raise InputError(f"paths must be a list of token-id lists, got {type(paths).__name__}")
    paths = [list(p) for p in paths]
    if len(paths) < 2:
        raise InputError(f"need at least 2 reasoning paths, got {len(paths)}")
    segment_latents = list(segment_latents)
    if len(segment_latents) != len(paths):
        raise InputError(f"segment_latents must hold one [T, d] tensor per path ({len(paths)}), got {len(segment_latents)}")
    topk = check_integer(topk, "topk", low=1)
    tau = check_number(tau, "tau", "a finite number > 0", low=0.0, low_open=True)
    n_random = check_integer(n_random, "n_random", low=1)
    from ..generate import check_seed

    seed = check_seed(seed, allow_none=False)
    if distance not in ("cosine", "l2"):
        raise InputError(f"distance must be 'cosine' or 'l2', got {distance!r}")
    eps = check_number(eps, "eps", "a finite number > 0", low=0.0, low_open=True)
    for m, (ids, ref) in enumerate(zip(paths, segment_latents)):
        if not ids:
            raise InputError(f"reasoning path {m} is empty; every path needs at least T = {T} tokens")
        if len(ids) < T:
            raise InputError(f"reasoning path {m} has {len(ids)} tokens, fewer than the T = {T} latent steps; every path needs at least {T}")
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= int(i) < V for i in ids):
            raise InputError(f"reasoning path {m} must hold token ids in [0, {V}), got {ids[:8]}...")
        if not isinstance(ref, Tensor) or tuple(ref.shape) != (T, d) or not bool(torch.isfinite(ref).all()):
            raise InputError(f"segment_latents[{m}] must be a finite tensor [{T}, {d}], got {getattr(ref, 'shape', type(ref).__name__)}")
    k = min(topk, V)
    top = torch.zeros_like(P, dtype=torch.bool)
    top.scatter_(1, P.topk(k, dim=-1).indices, True)
    g = torch.Generator().manual_seed(seed)
    scores, rand, matching, spans, zeros = [], [[] for _ in range(n_random)], [], [], []
    for ids, ref in zip(paths, segment_latents):
        sp = segment_spans(len(ids), T)
        ids_t = torch.as_tensor([int(i) for i in ids], dtype=torch.long)
        segs = [ids_t[a:b] for a, b in sp]
        assign = greedy_matching(latent_distances(latents, ref, distance, eps))
        scores.append(_matched_score(P, top, assign, segs, eps, zeros))
        matching.append(assign)
        spans.append(sp)
        for trial in range(n_random):
            perm = torch.randperm(T, generator=g).tolist()
            rand[trial].append(_matched_score(P, top, perm, segs, eps))
    n_eff = _posterior_n_eff(scores, tau, eps)
    n_rand = float(np.mean([_posterior_n_eff(r, tau, eps) for r in rand]))
    return GlobalParallelism(
        n_eff=n_eff,
        n_eff_random=n_rand,
        normalised=n_eff / max(eps, n_rand),
        scores=torch.tensor(scores, dtype=torch.float64),
        random_scores=torch.tensor(rand, dtype=torch.float64),
        matching=matching,
        spans=spans,
        n_steps=T,
        paths=list(range(len(paths))),
        zero_mass=float(np.mean(zeros)),
        settings=dict(topk=topk, tau=tau, n_random=n_random, seed=seed, distance=distance, eps=eps),
    )


def _normalize_text(text: str) -> str:
    # the original's normalize_text, used to drop duplicate reference paths
    return " ".join(text.strip().split()).casefold()


def _check_trace(trace: Any) -> LatentTrace:
    if not isinstance(trace, LatentTrace):
        raise InputError(f"trace must be a LatentTrace (from latent.run), got {type(trace).__name__}")
    if not trace.steps:
        raise InputError("the trace has no latent steps (T = 0); it needs at least 1 to score paths against")
    return trace


def _check_paths(paths: Any) -> list[str]:
    if isinstance(paths, str) or not hasattr(paths, "__iter__"):
        raise InputError(f"paths must be a list of reasoning-path strings, got {type(paths).__name__}")
    paths = list(paths)
    for i, p in enumerate(paths):
        if not isinstance(p, str):
            raise InputError(f"reasoning path {i} must be a string, got {type(p).__name__}")
    return paths


def _step_probs(bench: Any, trace: LatentTrace) -> Tensor:
    """[T, V] float64: softmax of the unembedding of each step's hidden state (after the
    final norm): the model's full next-token distribution at that step."""
    head = bench.hf.get_output_embeddings()
    p0 = next(head.parameters())
    H = torch.stack([s.hidden for s in trace.steps]).to(device=p0.device, dtype=p0.dtype)
    return torch.softmax(head(H).double(), -1).cpu()


@torch.no_grad()
def path_hiddens(bench: Any, prompt_ids: Sequence[int], path_ids: Sequence[int]) -> Tensor:
    """[len(path), d]: the model's last hidden states (after the final norm) that each
    path token is predicted from, over one forward of prompt + path: row j is the state at
    position len(prompt) - 1 + j (so row 0 is the prompt's last state, which is also the
    state the first latent step was computed from)."""
    from ..generate import base_model

    p0 = next(bench.hf.parameters())
    ids = torch.as_tensor([list(prompt_ids) + list(path_ids)], dtype=torch.long, device=p0.device)
    h = base_model(bench.hf)(input_ids=ids, use_cache=False).last_hidden_state[0].float().cpu()
    P = len(prompt_ids)
    return h[P - 1 : P - 1 + len(path_ids)]


@torch.no_grad()
def global_parallelism(
    bench: Any,
    trace: LatentTrace,
    paths: Sequence[str],
    tau: float = 1.0,
    topk: int = 100,
    n_random: int = 64,
    seed: int = 0,
    distance: str = "cosine",
    dedupe: bool = True,
) -> GlobalParallelism:
    """Latent-SFT's effective global parallelism of a latent trace against explicit
    reasoning paths (texts), computed by `parallelism_from_tensors` as the original
    parallelism.py does, with the model's own states standing in for the latent encoder:

    * step latents: each latent step's hidden state (`LatentStep.hidden`, after the final
      norm; T = the trace's latent steps);
    * step distributions: softmax of the unembedding of that hidden state (the model's
      full next-token distribution at the step);
    * segment latents (the original reads them off its Latent Token Encoder): each path,
      tokenised without special tokens, is appended to the trace's prompt ids and read in
      one forward (`path_hiddens`); each of its T segments (`segment_spans`) is the mean of
      the states its tokens are predicted from.

    Paths that are equal after whitespace/case normalisation are scored once
    (`dedupe`, as the original's collect_explicit_paths); at least 2 distinct paths, each
    of at least T tokens, are needed. Defaults are the original's: topk 100, tau 1,
    64 random trials, seed 0, cosine distance, eps 1e-12."""
    trace = _check_trace(trace)
    paths = _check_paths(paths)
    from ..inputs import check_bool

    check_bool(dedupe, "dedupe")
    kept, seen = [], set()
    for i, p in enumerate(paths):
        key = _normalize_text(p)
        if dedupe and key in seen:
            continue
        seen.add(key)
        kept.append(i)
    if len(kept) < 2:
        raise InputError(
            f"need at least 2 {'distinct ' if dedupe else ''}reasoning paths"
            f"{' (after whitespace/case normalisation)' if dedupe else ''}, got {len(kept)}"
        )
    T = len(trace.steps)
    ids, refs = [], []
    for i in kept:
        t = bench.tokenizer.encode(paths[i], add_special_tokens=False)
        if not t:
            raise InputError(f"reasoning path {i} is empty; every path needs at least T = {T} tokens")
        if len(t) < T:
            raise InputError(f"reasoning path {i} has {len(t)} tokens, fewer than the T = {T} latent steps; every path needs at least {T}")
        h = path_hiddens(bench, trace.prompt_ids, t)
        refs.append(torch.stack([h[a:b].mean(0) for a, b in segment_spans(len(t), T)]))
        ids.append(t)
    lat = torch.stack([s.hidden for s in trace.steps]).float()
    out = parallelism_from_tensors(lat, _step_probs(bench, trace), ids, refs, topk=topk, tau=tau, n_random=n_random, seed=seed, distance=distance)
    out.paths = kept
    out.settings.update(
        dedupe=dedupe,
        step_latents="LatentStep.hidden (last hidden state after the final norm)",
        step_probs="softmax(lm_head(LatentStep.hidden))",
        segment_latents="mean of the model's hidden states predicting the segment's tokens, path read after the trace's prompt",
    )
    return out


@dataclass
class CompressionRates:
    """How much explicit chain one latent trace stands for. Not Latent-SFT's "effective
    compression rate" (ECR@K): its exact definition is not in the released code.

    n_tokens: explicit chain tokens N; n_steps: latent steps T; plain_rate: N / T;
    covered: the most chain tokens that can be assigned, in chain order, to latent steps in
    non-decreasing step order with each token in its step's top-k; coverage_rate: covered / T
    (a coverage-weighted rate); coverage: covered / N; k: the top-k used."""

    n_tokens: int
    n_steps: int
    plain_rate: float
    covered: int
    coverage_rate: float
    coverage: float
    k: int


def _ordered_coverage(top: Tensor, ids: Sequence[int]) -> int:
    # dp[t]: the most tokens so far assigned to steps <= t (non-decreasing steps, in order)
    T = top.shape[0]
    dp = [0] * T
    for v in ids:
        col = top[:, v].tolist()
        new, best = [0] * T, 0
        for t in range(T):
            best = max(best, dp[t] + (1 if col[t] else 0))
            new[t] = max(dp[t], best)
        dp = new
    return dp[-1] if T else 0


def compression_rates_from_probs(probs: Tensor, chain_ids: Sequence[int], k: int = 10) -> CompressionRates:
    """`CompressionRates` of T step distributions probs [T, V] against one explicit chain
    (token ids)."""
    if not isinstance(probs, Tensor) or probs.ndim != 2 or not probs.is_floating_point():
        raise InputError(f"probs must be a float tensor [T, V], got {getattr(probs, 'shape', type(probs).__name__)}")
    T, V = probs.shape
    if T == 0:
        raise InputError("there are no latent steps (T = 0); a compression rate needs at least 1")
    if not bool(torch.isfinite(probs).all()):
        raise InputError("probs contain NaN/inf; a compression rate needs finite values")
    if isinstance(chain_ids, (str, Tensor)) or not hasattr(chain_ids, "__iter__"):
        raise InputError(f"chain_ids must be a list of token ids, got {type(chain_ids).__name__}")
    chain_ids = list(chain_ids)
    if not chain_ids:
        raise InputError("the explicit chain is empty; it needs at least 1 token")
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= int(i) < V for i in chain_ids):
        raise InputError(f"chain_ids must be token ids in [0, {V}), got {chain_ids[:8]}...")
    k = check_integer(k, "k", low=1, high=V)
    top = torch.zeros(T, V, dtype=torch.bool)
    top.scatter_(1, probs.double().cpu().topk(k, dim=-1).indices, True)
    covered = _ordered_coverage(top, [int(i) for i in chain_ids])
    N = len(chain_ids)
    return CompressionRates(n_tokens=N, n_steps=T, plain_rate=N / T, covered=covered, coverage_rate=covered / T, coverage=covered / N, k=k)


@torch.no_grad()
def compression_rates(bench: Any, trace: LatentTrace, chain: str | Sequence[int], k: int = 10) -> CompressionRates:
    """Plain and coverage-weighted compression rates of a latent trace against one explicit
    chain (text, tokenised without special tokens, or token ids); the step distributions are
    the model's full next-token distributions at the latent steps."""
    trace = _check_trace(trace)
    if isinstance(chain, str):
        ids = bench.tokenizer.encode(chain, add_special_tokens=False)
        if not ids:
            raise InputError("the explicit chain is empty; it needs at least 1 token")
    else:
        ids = chain
    return compression_rates_from_probs(_step_probs(bench, trace), ids, k=k)


@dataclass
class PathLikelihoodSpread:
    """`path_likelihood_spread`'s result (not Latent-SFT's parallelism).

    scores: [n_paths]; n_eff = exp(H(softmax(scores / tau))); n_eff_random: the same with
    the vocabulary randomly permuted in the steps' distributions (mean over `n_random`
    draws); normalised = n_eff / n_eff_random."""

    scores: Tensor
    n_eff: float
    n_eff_random: float
    normalised: float


def _best_step_scores(logq: Tensor, paths: list[Tensor]) -> Tensor:
    # score of a path: mean over its tokens of the best log-probability any latent step gives it
    best = logq.max(dim=0).values  # [V]
    return torch.stack([best[p].mean() for p in paths])


def _softmax_n_eff(scores: Tensor, tau: float) -> float:
    p = torch.softmax(scores.double() / tau, -1)
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


@torch.no_grad()
def path_likelihood_spread(
    bench: Any, trace: LatentTrace, paths: Sequence[str], tau: float = 1.0, n_random: int = 32, seed: int = 0
) -> PathLikelihoodSpread:
    """How evenly the latent steps' next-token distributions support several paths (texts),
    order-free: a path's score is the mean over its tokens of the best log-probability any
    step gives that token; n_eff = exp(H(softmax(scores / tau))), against the vocabulary-
    permuted null. NOT Latent-SFT's effective global parallelism (no segments, no matching;
    on an untrained model it sits at the null): use `global_parallelism` for that."""
    trace = _check_trace(trace)
    paths = _check_paths(paths)
    if len(paths) < 2:
        raise InputError(f"need at least 2 reasoning paths, got {len(paths)}")
    tau = check_number(tau, "tau", "a finite number > 0", low=0.0, low_open=True)
    n_random = check_integer(n_random, "n_random", low=1)
    from ..generate import check_seed

    seed = check_seed(seed, allow_none=False)
    logq = torch.log(_step_probs(bench, trace).clamp_min(1e-300)).float()  # [n_steps, V]
    toks = []
    for i, text in enumerate(paths):
        ids = bench.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise InputError(f"reasoning path {i} is empty")
        toks.append(torch.as_tensor(ids))
    scores = _best_step_scores(logq, toks)
    n_eff = _softmax_n_eff(scores, tau)
    g = torch.Generator().manual_seed(seed)
    rand = [_softmax_n_eff(_best_step_scores(logq[:, torch.randperm(logq.shape[1], generator=g)], toks), tau) for _ in range(n_random)]
    n_rand = float(np.mean(rand))
    return PathLikelihoodSpread(scores=scores, n_eff=n_eff, n_eff_random=n_rand, normalised=n_eff / n_rand)

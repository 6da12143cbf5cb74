"""`latent.run`: drive the one generation loop with a latent policy and record what each
latent step holds (`LatentTrace`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from ..errors import InputError
from ..generate import _rows, generate_stream
from ..inputs import check_bool, check_integer
from .policies import THINK_CLOSE, stop_ids, token_id


@dataclass
class Superposition:
    """Non-negative weights over token embeddings reconstructing one latent vector.

    ids / weights: [n] (weights > 0, largest first; the raw NNLS weights, not normalised:
    they sum to 1 only when the vector is a convex mixture of the candidates); rel_error:
    ||v - sum w e|| / ||v||; n_eff: exp(entropy of the normalised weights), the effective
    number of tokens. For a step whose exact mixture is known (soft thinking feeds one),
    `truth_recall` is the share of the mixture's tokens (among the top `keep` of it) that the
    fit found, and `truth_l1` the L1 distance between the fit's weights and the mixture's over
    both supports (0 = recovered exactly; up to 2): NNLS over cosine-nearest candidates is
    exact for sparse mixtures and unreliable for broad ones, and these say which it was."""

    ids: Tensor
    weights: Tensor
    rel_error: float
    n_eff: float
    truth_recall: float | None = None
    truth_l1: float | None = None


@dataclass
class LatentStep:
    """One latent step of one row.

    index: latent step number (0-based); loop_step: the loop step it was computed at;
    latent: [d] float32, the input embedding fed (chunk_size times); hidden: [d] float32,
    the last hidden state (after the final norm) it was computed from; norm: ||latent||,
    norm_ratio: norm / mean token-embedding norm; top_ids / top_probs: [k], the model's
    next-token distribution at that step, entropy (nats); nearest_ids / nearest_cos: [k]
    cosine-nearest token embeddings; superposition; mixture_ids / mixture_weights: [m]
    soft thinking's exact mixture (top m of it; mixture_support tokens in all);
    head_token: the latent head's greedy token input."""

    index: int
    loop_step: int
    latent: Tensor
    hidden: Tensor
    norm: float
    norm_ratio: float
    top_ids: Tensor
    top_probs: Tensor
    entropy: float
    nearest_ids: Tensor | None = None
    nearest_cos: Tensor | None = None
    superposition: Superposition | None = None
    mixture_ids: Tensor | None = None
    mixture_weights: Tensor | None = None
    mixture_support: int | None = None
    head_token: int | None = None


@dataclass
class LatentTrace:
    """One prompt through a latent loop.

    prompt_ids: the prompt; visible_ids: visible tokens after thinking (forced markers such
    as `</think>` excluded; the end-of-turn token included when emitted), text (end-of-turn
    removed); exit: "self_exit" | "maxed" | "fixed" (exit_detail says which rule);
    latent_steps: latent vectors computed; latent_positions: positions they occupied
    (latent_steps x chunk_size); fed: per loop step ("latent", step index) | ("forced", id)
    | ("token", id) in order; hiddens: [n_loop, d] hidden state at every loop step;
    steps: the per-step readouts; wall_time: seconds for the whole batch this row ran in."""

    method: str
    prompt_ids: list[int]
    visible_ids: list[int]
    text: str
    exit: str | None
    exit_detail: str | None
    latent_steps: int
    latent_positions: int
    chunk_size: int
    steps: list[LatentStep]
    fed: list[tuple[str, int]] = field(default_factory=list)
    hiddens: Tensor | None = None
    wall_time: float = 0.0

    def __post_init__(self):
        if self.exit is not None and self.exit not in ("self_exit", "maxed", "fixed"):
            raise InputError(f"exit must be self_exit, maxed or fixed, got {self.exit!r}")
        if len(self.steps) != self.latent_steps:
            raise InputError("LatentTrace: steps and latent_steps disagree")

    def table(self, tokenizer: Any, k: int = 5) -> str:
        """Plain-text per-step readout: norm ratio, entropy, top next tokens, nearest tokens,
        superposition."""
        dec = lambda i: repr(tokenizer.decode([int(i)]))  # noqa: E731
        lines = [f"{self.method}: {self.latent_steps} latent steps, {self.latent_positions} positions, exit={self.exit} ({self.exit_detail})"]
        for s in self.steps:
            top = " ".join(f"{dec(i)}:{float(p):.2f}" for i, p in zip(s.top_ids[:k], s.top_probs[:k]))
            line = f"  step {s.index:3d}  |v|/|e|={s.norm_ratio:6.2f}  H={s.entropy:5.2f}  next: {top}"
            if s.nearest_ids is not None:
                line += "  nearest: " + " ".join(dec(i) for i in s.nearest_ids[:k])
            if s.mixture_ids is not None:  # the ground truth first: what the loop fed
                line += "  fed mixture (exact): " + " ".join(
                    f"{dec(i)}:{float(w):.2f}" for i, w in zip(s.mixture_ids[:k], s.mixture_weights[:k])
                )
            if s.superposition is not None:
                sp = s.superposition
                line += f"  NNLS fit (raw weights, not normalised) n_eff={sp.n_eff:.1f} err={sp.rel_error:.2f}"
                if sp.truth_recall is not None:
                    line += f" recall={sp.truth_recall:.2f} L1={sp.truth_l1:.2f}"
                line += ": " + " ".join(f"{dec(i)}:{float(w):.2f}" for i, w in zip(sp.ids[:k], sp.weights[:k]))
            lines.append(line)
        lines.append(f"  visible: {self.text!r}")
        return "\n".join(lines)


def _default_thinking(bench: Any) -> bool | None:
    return True if token_id(bench.tokenizer, THINK_CLOSE) is not None else None


@dataclass
class LatentUpdate:
    """One loop step of `run_stream`, as it is produced.

    loop_step: the loop step index; new_steps: (row, LatentStep) computed this step (with
    their readout when asked); tokens: [(row, token id)] visible tokens emitted this step;
    texts: visible text so far per row (None when `run_stream(decode_text=False)`; the
    last update always has them); traces: the finished `LatentTrace` per row, set
    only on the last update (done=True)."""

    loop_step: int
    new_steps: list[tuple[int, LatentStep]]
    tokens: list[tuple[int, int]]
    texts: list[str] | None
    done: bool = False
    traces: list[LatentTrace] | None = None


def _is_single(x: Any) -> bool:
    """One prompt (a string, one id list, a 1-D tensor) rather than a batch."""
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and len(x) > 0 and not isinstance(x[0], (str, list, tuple, Tensor))) or (isinstance(x, Tensor) and x.ndim == 1)


def _check_policy_spec(policy: Any) -> None:
    if not callable(getattr(policy, "bind", None)) or not callable(getattr(policy, "with_steps", None)):
        raise InputError(
            "policy must be a latent policy spec (Coconut, ProjectionHead, LatentHead, SoftThinking, PauseTokens, "
            f"or what load_policy returns), got {type(policy).__name__} {policy!r:.60}"
        )


def _prepare(bench, prompt_or_ids, policy, steps, chat, system, enable_thinking):
    _check_policy_spec(policy)
    check_bool(chat, "chat")
    # steps=None keeps the policy's own count; anything else goes through the policy's
    # with_steps, which refuses 0, 1.5 and True naming the policy (0 is never "the default")
    if isinstance(prompt_or_ids, (list, tuple)) and prompt_or_ids and not isinstance(prompt_or_ids[0], (str, list, tuple, Tensor)):
        prompt_or_ids = [list(prompt_or_ids)]  # one row of ids (its entries are checked as token ids)
    if enable_thinking is None and chat:
        enable_thinking = _default_thinking(bench)
    rows = _rows(bench, prompt_or_ids, chat, system, enable_thinking)
    spec = policy.with_steps(steps) if steps is not None else policy
    runner = spec.bind(bench, len(rows))  # validates everything before any forward
    return rows, spec, runner


@torch.no_grad()
def run_stream(
    bench: Any,
    prompt_or_ids: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | Tensor,
    policy: Any,
    *,
    steps: int | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    seed: int | None = None,
    chat: bool = True,
    system: str | None = None,
    enable_thinking: bool | None = None,
    edits: Sequence[Any] = (),
    steer: Any = None,
    readout: bool = True,
    k: int = 10,
    n_candidates: int = 64,
    decode_text: bool = True,
    fast: bool | str = "auto",
) -> Iterator[LatentUpdate]:
    """`run`, one `LatentUpdate` per loop step as the loop produces it (each latent step
    with its vocabulary readout as soon as it is computed); the last update has
    `done=True` and the finished traces (always a list). Same arguments as `run`, plus
    `decode_text` (default True): decode every row's visible text at every step for the
    updates; `run` turns it off, since it only needs the final texts."""
    check_bool(readout, "readout")
    check_bool(decode_text, "decode_text")
    k = check_integer(k, "k", low=1)
    n_candidates = check_integer(n_candidates, "n_candidates", low=1)
    rows, spec, runner = _prepare(bench, prompt_or_ids, policy, steps, chat, system, enable_thinking)
    B = len(rows)
    stops = stop_ids(bench)
    embed_norm = float(bench.arch.embed_norm)
    out_steps: list[list[LatentStep]] = [[] for _ in range(B)]
    fed: list[list[tuple[str, int]]] = [[] for _ in range(B)]
    visible: list[list[int]] = [[] for _ in range(B)]
    # per loop step: the [B, d] hidden states (one device copy per step, moved to the host
    # in blocks of 64 steps) and which rows fed something, instead of one host transfer
    # per row per step
    step_hidden: list[Tensor] = []
    host_hidden: list[Tensor] = []
    step_rows: list[list[int]] = []
    decode = lambda ids: bench.tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=False)  # noqa: E731
    t0 = time.perf_counter()
    for st in generate_stream(
        bench, rows, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        seed=seed, edits=edits, steer=steer, policy=runner, stop_ids=stops, keep_logits=True, keep_hidden=True,
        fast=fast,
    ):  # fmt: skip
        rec = st.records
        new = rec.get("new")
        new_l = new.tolist() if new is not None else None
        lat_index = rec.get("latent_index")
        lat_l, forced_l, tok_l = st.latent.tolist(), st.forced.tolist(), st.tokens.tolist()  # one transfer each
        new_steps: list[tuple[int, LatentStep]] = []
        tokens: list[tuple[int, int]] = []
        fed_rows: list[int] = []
        for i in range(B):
            if lat_l[i]:
                fed_rows.append(i)
                if new_l is not None and new_l[i]:
                    step = _make_step(i, st, rec, int(lat_index[i]), st.logits[i], embed_norm, k)
                    out_steps[i].append(step)
                    new_steps.append((i, step))
                fed[i].append(("latent", runner.n_steps[i] - 1))
            elif forced_l[i]:
                fed_rows.append(i)
                fed[i].append(("forced", tok_l[i]))
            elif tok_l[i] >= 0:
                fed_rows.append(i)
                fed[i].append(("token", tok_l[i]))
                visible[i].append(tok_l[i])
                tokens.append((i, tok_l[i]))
        if fed_rows:
            # a copy: the fast decode path reuses its output buffer across steps
            step_hidden.append(st.hidden.to(torch.float32, copy=True))
            step_rows.append(fed_rows)
            if len(step_hidden) == 64:  # to the host in blocks: device memory stays bounded
                host_hidden.append(torch.stack(step_hidden).cpu())
                step_hidden = []
        if readout and new_steps:
            from .readout import decompose_steps

            decompose_steps(bench, [s for _, s in new_steps], k=k, n_candidates=n_candidates)
        yield LatentUpdate(st.index, new_steps, tokens, [decode(v) for v in visible] if decode_text else None)
    wall = time.perf_counter() - t0
    hiddens: list[list[Tensor]] = [[] for _ in range(B)]
    if step_hidden:
        host_hidden.append(torch.stack(step_hidden).cpu())
    if host_hidden:
        H = torch.cat(host_hidden)  # [n_fed_steps, B, d]
        for t, fed_rows in enumerate(step_rows):
            for i in fed_rows:
                hiddens[i].append(H[t, i])
    traces = []
    for i in range(B):
        traces.append(
            LatentTrace(
                method=getattr(spec, "name", type(spec).__name__),
                prompt_ids=list(rows[i]),
                visible_ids=visible[i],
                text=decode(visible[i]),
                exit=runner.exit[i],
                exit_detail=runner.exit_detail[i],
                latent_steps=runner.n_steps[i],
                latent_positions=runner.positions[i],
                chunk_size=runner.chunk,
                steps=out_steps[i],
                fed=fed[i],
                hiddens=torch.stack(hiddens[i]) if hiddens[i] else None,
                wall_time=wall,
            )
        )
    yield LatentUpdate(-1, [], [], [t.text for t in traces], done=True, traces=traces)


def run(
    bench: Any,
    prompt_or_ids: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | Tensor,
    policy: Any,
    **kwargs: Any,
) -> LatentTrace | list[LatentTrace]:
    """Run `prompt_or_ids` (text through the chat template when `chat`, or token ids) through
    `policy` (`Coconut`, `ProjectionHead`, `LatentHead`, `SoftThinking`, `PauseTokens`)
    inside `generate_stream`, then decode visibly (greedy at temperature 0).

    Keyword arguments (those of `run_stream`): steps (overrides the policy's step count /
    budget), max_new_tokens=64, temperature=0, top_k, top_p, min_p, seed, chat=True,
    system, enable_thinking (default: on when the tokenizer has `</think>`), edits, steer,
    readout=True (every latent step decomposed onto the vocabulary: `k`=10 nearest tokens,
    superposition over the `n_candidates`=64 cosine-nearest embeddings), fast="auto" (the
    static-state / CUDA-graph decode path, see `generate_stream`).

    Returns one `LatentTrace` for a single prompt (a string or one id list), a list for
    several."""
    single = _is_single(prompt_or_ids)
    last = None
    for last in run_stream(bench, prompt_or_ids, policy, **kwargs, decode_text=False):
        pass
    traces = last.traces
    return traces[0] if single else traces


def _make_step(i: int, st, rec: dict, index: int, logits: Tensor, embed_norm: float, k: int) -> LatentStep:
    lat = rec["embeds"][i]
    probs = torch.softmax(logits.float(), dim=-1)
    top = probs.topk(min(k, probs.shape[-1]))
    ent = float(-(probs * probs.clamp_min(1e-30).log()).sum())
    norm = float(lat.norm())
    step = LatentStep(
        index=index,
        loop_step=st.index,
        latent=lat.clone(),
        hidden=st.hidden[i].float().cpu(),
        norm=norm,
        norm_ratio=norm / embed_norm if embed_norm > 0 else float("nan"),
        top_ids=top.indices.cpu(),
        top_probs=top.values.cpu(),
        entropy=ent,
    )
    if "mix_ids" in rec:
        step.mixture_ids = rec["mix_ids"][i]
        step.mixture_weights = rec["mix_weights"][i]
        step.mixture_support = int(rec["mix_support"][i])
    if "head_token" in rec:
        step.head_token = int(rec["head_token"][i])
    return step


def fed_embeddings(bench: Any, trace: LatentTrace, upto: int | None = None) -> Tensor:
    """The input-embedding sequence [T, d] the model saw: the prompt, then every fed loop
    step (latent vectors at their positions, markers and visible tokens as embeddings) up
    to loop step `upto` (exclusive; default all but the last, which is never fed)."""
    if upto is not None:
        upto = check_integer(upto, "upto", low=0, high=len(trace.fed))
    emb = bench.hf.get_input_embeddings()
    dev = emb.weight.device
    parts = [emb(torch.as_tensor(trace.prompt_ids, device=dev))]
    by_index = {s.index: s.latent for s in trace.steps}
    items = trace.fed[: (len(trace.fed) - 1 if upto is None else upto)]
    for kind, v in items:
        if kind == "latent":
            parts.append(by_index[v].to(device=dev, dtype=emb.weight.dtype)[None])
        else:
            parts.append(emb(torch.as_tensor([v], device=dev)))
    return torch.cat(parts, dim=0)

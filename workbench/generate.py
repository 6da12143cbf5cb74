"""THE generation loop. Every way the workbench produces tokens goes through
`generate_stream`: plain, steered (edits), random-prefix (input-embedding prefix), latent
reasoning (a `next_input` policy that feeds continuous vectors back), and the UI stream.

The loop always feeds `inputs_embeds` (so a prefix or a latent vector is no special case),
keeps a transformers cache (KV for attention blocks, conv + recurrent state for Qwen3.5's
Gated DeltaNet blocks), left-pads batches with explicit position ids, and yields one `Step`
per forward. Temperature 0 is greedy and deterministic; a seed makes sampling reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch import Tensor

from ._lazy import callable_module
from .compat import output_cache, with_cache
from .edits import apply_edits, describe_edits
from .errors import InputError, NonFiniteError
from .inputs import (
    as_prompt_list,
    check_bool,
    check_context,
    check_integer,
    check_number,
    check_token_rows,
    positions_from_mask,
    token_ids,
)


# --------------------------------------------------------------------------- protocols


class Prefix(Protocol):
    """Something that prepends input embeddings to every prompt (see `workbench.prefix`)."""

    placement: str  # "start" (before everything) or "after_bos" (after the first token)

    def embeddings(self, bench: Any, batch_size: int) -> Tensor:  # [k, d] or [batch, k, d]
        ...


@dataclass
class Decision:
    """What a `next_input` policy wants fed at the next position.

    latent: [batch] bool, rows that get `embeds[row]` instead of a token's embedding (no
        visible token is emitted for them this step);
    embeds: [batch, d_model] the continuous inputs for latent rows (ignored elsewhere);
    force: [batch] long, a token to emit and feed instead of the sampled one (-1: none),
        e.g. `</think>` when thinking ends; forced tokens do not count as visible tokens;
    records: anything to attach to the step (readouts).
    """

    latent: Tensor
    embeds: Tensor | None = None
    force: Tensor | None = None
    records: dict = field(default_factory=dict)


@dataclass
class LoopState:
    """What a policy sees at step `step`: logits [batch, vocab] (float32) and hidden
    [batch, d_model] (last hidden state after the final norm) at the newest position, the
    sampled next tokens [batch], which rows are still running, and the loop's helpers."""

    step: int
    logits: Tensor
    hidden: Tensor
    sampled: Tensor
    done: Tensor
    bench: Any
    embed: Any  # callable: token ids [n] -> embeddings [n, d]


@dataclass
class PromptState:
    """What a policy's optional `start(prompt_state)` hook sees right after the prompt
    forward (e.g. to prefill a latent head's own cache over the prompt).

    ids: [batch, seq] long, the token id at each prefill position (-1 at left padding and
        prefix positions); mask / positions: [batch, seq]; hidden: [batch, seq, d_model]
    last hidden states after the final norm at every prompt position."""

    ids: Tensor
    mask: Tensor
    positions: Tensor
    hidden: Tensor
    bench: Any
    embed: Any  # callable: token ids [n] -> embeddings [n, d]


class NextInput(Protocol):
    max_steps: int  # upper bound on the loop steps it may add (latent positions + forced tokens)

    def __call__(self, state: LoopState) -> Decision: ...


@dataclass
class Step:
    """One forward of the loop.

    tokens: [batch] long, the token emitted this step (-1 where the row fed a latent vector
        or had already finished); latent: [batch] bool; forced: [batch] bool;
    done: [batch] bool, row finished after this step;
    logits: [batch, vocab] float32 distribution this step was chosen from (kept when
        `keep_logits`); hidden: [batch, d_model] last hidden state (kept when `keep_hidden`);
    text: decoded new text per row (when `decode_stream`); records: policy readouts.
    """

    index: int
    tokens: Tensor
    latent: Tensor
    forced: Tensor
    done: Tensor
    logits: Tensor | None = None
    hidden: Tensor | None = None
    text: list[str] | None = None
    records: dict = field(default_factory=dict)


@dataclass
class GenerationResult:
    """Texts and ids of the visible tokens per row, plus the steps (latent ones included)."""

    texts: list[str]
    token_ids: list[list[int]]
    prompt_lengths: list[int]
    steps: list[Step]


# --------------------------------------------------------------------------- sampling


def truncate_probs(
    logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> Tensor:
    """Probabilities [batch, vocab] after temperature, top-k, top-p (nucleus) and min-p
    truncation, renormalised. Shared by sampling and soft thinking."""
    temperature, top_k, top_p, min_p = check_truncation(temperature, top_k, top_p, min_p, positive_temperature=True)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if min_p > 0:
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    if top_p < 1.0:
        sp, idx = torch.sort(probs, dim=-1, descending=True)
        cum = sp.cumsum(-1)
        drop = (cum - sp) >= top_p  # keep the smallest prefix whose mass reaches top_p
        sp = sp.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sp)
    return probs / probs.sum(-1, keepdim=True)


def sample_next(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Next token per row: argmax at temperature 0, else a draw from `truncate_probs`."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = truncate_probs(logits, temperature, top_k, top_p, min_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_truncation(temperature, top_k, top_p, min_p, *, positive_temperature: bool = False, what: str = ""):
    """(temperature, top_k, top_p, min_p) checked and normalised: temperature a finite
    number >= 0 (> 0 with `positive_temperature`), top_k an integer >= 0 (0 = off; 1.5 is
    an error, never truncated), top_p in (0, 1], min_p in [0, 1). NaN is refused everywhere
    (a NaN comparison would silently switch the option off)."""
    pre = f"{what} " if what else ""
    if positive_temperature:
        temperature = check_number(temperature, f"{pre}temperature", "a finite number > 0", low=0.0, low_open=True)
    else:
        temperature = check_number(temperature, f"{pre}temperature", "a finite number >= 0 (0 = greedy)", low=0.0)
    top_k = check_integer(top_k, f"{pre}top_k", low=0, valid="an integer >= 0 (0 = off)")
    top_p = check_number(top_p, f"{pre}top_p", "a number in (0, 1]", low=0.0, high=1.0, low_open=True)
    min_p = check_number(min_p, f"{pre}min_p", "a number in [0, 1)", low=0.0, high=1.0, high_open=True)
    return temperature, top_k, top_p, min_p


SEED_RANGE = (-(2**63), 2**64 - 1)


def check_seed(seed, what: str = "seed", allow_none: bool = True) -> int | None:
    """None (when `allow_none`), or an integer torch can seed a generator with."""
    if seed is None and allow_none:
        return None
    valid = f"{'None or ' if allow_none else ''}an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]"
    return check_integer(seed, what, low=SEED_RANGE[0], high=SEED_RANGE[1], valid=valid)


def _check_sampling(max_new_tokens, temperature, top_k, top_p, min_p):
    max_new_tokens = check_integer(max_new_tokens, "max_new_tokens", low=1)
    return (max_new_tokens, *check_truncation(temperature, top_k, top_p, min_p))


# --------------------------------------------------------------------------- the loop


def stop_token_ids(tokenizer: Any, hf: Any = None) -> set[int]:
    """End-of-turn ids: the tokenizer's eos plus `<|im_end|>` / `<|endoftext|>` when present
    and the generation config's eos ids."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        # a direct lookup: get_vocab() builds a 248k-entry dict on the Qwen3.5 tokenizer
        i = tokenizer.convert_tokens_to_ids(t)
        if isinstance(i, int) and i >= 0 and tokenizer.convert_ids_to_tokens(i) == t:
            ids.add(int(i))
    gen_cfg = getattr(hf, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return ids


def vocab_rows(bench) -> int:
    """Rows of the input-embedding matrix: the valid token ids are [0, vocab_rows)."""
    return int(bench.hf.get_input_embeddings().weight.shape[0])


def _rows(bench, prompts, chat, system, enable_thinking) -> list[list[int]]:
    """prompts: str | list[str] | list[list[int]] | Tensor [batch, seq] of ids (unpadded).
    Token ids must be integers in [0, vocabulary size): never truncated or wrapped."""
    check_bool(chat, "chat")
    if isinstance(prompts, Tensor):
        return check_token_rows(prompts, vocab_rows(bench))
    if isinstance(prompts, (list, tuple)) and prompts and not isinstance(prompts[0], str) and (
        isinstance(prompts[0], (list, tuple, Tensor)) or hasattr(prompts[0], "__iter__")
    ):
        return check_token_rows(prompts, vocab_rows(bench))
    plist = as_prompt_list(prompts)
    return token_ids(bench.tokenizer, plist, chat=chat, system=system, enable_thinking=enable_thinking)


def prefill_embeddings(bench, rows: list[list[int]], prefix: Prefix | None) -> tuple[Tensor, Tensor]:
    """Left-padded input embeddings [batch, seq, d] and mask [batch, seq] for `rows`, with the
    prefix vectors inserted per its placement."""
    hf = bench.hf
    emb = hf.get_input_embeddings()
    dev = emb.weight.device
    B = len(rows)
    pre = None
    if prefix is not None:
        if not callable(getattr(prefix, "embeddings", None)):
            raise InputError(
                f"prefix must be a RandomPrefix (or an object with embeddings(bench, batch_size) and placement), "
                f"got {type(prefix).__name__} {prefix!r:.60}"
            )
        placement = getattr(prefix, "placement", "start")
        if not isinstance(placement, str) or placement not in ("start", "after_bos"):
            raise InputError(f"prefix placement must be 'start' or 'after_bos', got {placement!r}")
        pre = prefix.embeddings(bench, B)
        if not isinstance(pre, Tensor) or not pre.is_floating_point():
            raise InputError(f"prefix embeddings must be a float tensor [k, d] or [batch, k, d], got {type(pre).__name__}")
        pre = pre.to(device=dev, dtype=emb.weight.dtype)
        if pre.ndim == 2:
            pre = pre.unsqueeze(0).expand(B, -1, -1)
        if pre.ndim != 3 or pre.shape[0] != B or pre.shape[-1] != bench.arch.d_model or pre.shape[1] == 0:
            raise InputError(f"prefix embeddings have shape {tuple(pre.shape)}, expected [{B}, k, {bench.arch.d_model}] with k >= 1")
        if pre.device.type != "meta" and not bool(torch.isfinite(pre).all()):
            raise NonFiniteError(
                f"prefix embeddings contain NaN/inf (in the model's dtype {emb.weight.dtype}: is the prefix scale too large?)"
            )
    seqs = []
    for i, r in enumerate(rows):
        e = emb(torch.as_tensor(r, device=dev))
        if pre is not None:
            cut = 1 if getattr(prefix, "placement", "start") == "after_bos" else 0
            e = torch.cat([e[:cut], pre[i], e[cut:]], dim=0)
        seqs.append(e)
    T = max(s.shape[0] for s in seqs)
    embeds = torch.zeros(B, T, bench.arch.d_model, device=dev, dtype=emb.weight.dtype)
    mask = torch.zeros(B, T, dtype=torch.long, device=dev)
    for i, s in enumerate(seqs):
        embeds[i, T - s.shape[0] :] = s
        mask[i, T - s.shape[0] :] = 1
    return embeds, mask


def _prefill_ids(rows: list[list[int]], prefix: Prefix | None, T: int, device) -> Tensor:
    """Token id per prefill position [batch, T], aligned with `prefill_embeddings` (-1 at
    left padding and at prefix vectors)."""
    out = torch.full((len(rows), T), -1, dtype=torch.long)
    n_pre = T - max(len(x) for x in rows)  # prefix vectors per row (0 without a prefix)
    cut = 1 if prefix is not None and getattr(prefix, "placement", "start") == "after_bos" else 0
    for i, r in enumerate(rows):
        seq = list(r[:cut]) + [-1] * n_pre + list(r[cut:])
        out[i, T - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
    return out.to(device)


def base_model(hf):
    """The decoder stack that returns last hidden states after the final norm."""
    return getattr(hf, hf.base_model_prefix)


def forward_embeds(hf, embeds: Tensor, mask: Tensor, positions: Tensor, cache=None):
    """One cached forward of the base model over `embeds` [batch, t, d]; returns
    (last hidden after final norm [batch, t, d], cache)."""
    base = base_model(hf)
    out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **with_cache(base, cache))
    return out.last_hidden_state, output_cache(out)


@torch.no_grad()
def generate_stream(
    bench: Any,
    prompts: str | Sequence[str] | Sequence[Sequence[int]] | Tensor,
    *,
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
    steer: Sequence[Any] | Any = None,
    prefix: Prefix | None = None,
    policy: NextInput | None = None,
    stop_ids: set[int] | None = None,
    keep_logits: bool = False,
    keep_hidden: bool = False,
    decode_stream: bool = False,
    fast: bool | str = "auto",
) -> Iterator[Step]:
    """Yield one `Step` per forward until every row has `max_new_tokens` visible tokens or
    emitted an end-of-turn token (latent steps and forced tokens do not count as visible).

    prompts: text (through the chat template when `chat`, else raw), or token-id rows.
    edits / steer: residual edits (`workbench.edits`) or steering vectors (anything with an
        `.edits()` method), applied in a scope that is undone afterwards.
    prefix: input-embedding prefix (`workbench.prefix.RandomPrefix`).
    policy: a `next_input` policy (`workbench.latent`) that may feed continuous vectors.
    fast: decode on preallocated state replayed as a CUDA graph (`workbench.fastdecode`):
        "auto" on a CUDA model that supports it, True to require it (it also runs, without
        graphs, on the CPU), False for the eager transformers forward per token.

    Every step's logits are checked (one fused reduction, outside any CUDA graph, read
    with the step's own all-done flag): NaN/inf logits, or logits that collapsed to one
    value for every token (a residual stream too large for the model's norms, e.g. a
    steering scale of 1e30), stop the loop with `NonFiniteError` naming the step and the
    edits, prefix and latent policy in force, or with none the weight that is not finite.
    Arguments are checked before any forward: bad values are `InputError`s naming the
    argument, the value and what is valid (NaN, bools, 1.5 for an integer and float token
    ids are refused, never coerced).
    """
    max_new_tokens, temperature, top_k, top_p, min_p = _check_sampling(max_new_tokens, temperature, top_k, top_p, min_p)
    seed = check_seed(seed)
    for flag, name in ((keep_logits, "keep_logits"), (keep_hidden, "keep_hidden"), (decode_stream, "decode_stream")):
        check_bool(flag, name)
    from . import fastdecode

    fastdecode.check_fast(fast)
    hf, tok = bench.hf, bench.tokenizer
    if edits is not None and (isinstance(edits, (str, bytes, Tensor)) or not hasattr(edits, "__iter__")):
        raise InputError(f"edits must be a list of edits (AddVector, Ablate, ...), got {type(edits).__name__} {edits!r:.60}")
    all_edits = list(edits or ()) + edits_from_steer(steer)
    policy_steps = _check_policy(policy)
    rows = _rows(bench, prompts, chat, system, enable_thinking)
    B = len(rows)
    V = vocab_rows(bench)
    stop_set = _check_stop_ids(stop_ids, V)
    extra = max_new_tokens + policy_steps
    n_prefix = 0
    embeds, mask = prefill_embeddings(bench, rows, prefix)
    n_prefix = embeds.shape[1] - max(len(r) for r in rows)
    for i, r in enumerate(rows):
        check_context(len(r) + n_prefix + extra, bench.arch.max_positions, f"prompt {i} (+{extra} new positions)")
    dev = embeds.device
    stops = torch.tensor(sorted(stop_set if stop_set is not None else stop_token_ids(tok, hf)), dtype=torch.long, device=dev)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=dev).manual_seed(seed)
    emb = hf.get_input_embeddings()
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)

    def embed(ids: Tensor) -> Tensor:
        return emb(ids.to(dev))

    decoder = None
    if fast is True or (fast == "auto" and dev.type == "cuda"):  # (the check walks every parameter: only when it matters)
        why = fastdecode.unsupported_reason(hf)
        if why is not None and fast is True:
            raise InputError(f"fast=True: the fast decode path cannot run this model: {why}")
        if why is None:
            decoder = fastdecode.decoder_for(hf, B, embeds.shape[1] + extra)
    with apply_edits(hf, all_edits) as scope:
        positions = positions_from_mask(mask)
        hidden, cache = forward_embeds(hf, embeds, mask, positions)
        start = getattr(policy, "start", None)
        if callable(start):  # optional hook: the policy sees every prompt position once
            start(PromptState(_prefill_ids(rows, prefix, embeds.shape[1], dev), mask, positions, hidden, bench, embed))
        if decoder is not None:
            # decoding continues on the static state, which applies the edits itself: the
            # hooks go first, or a CUDA graph captured now would apply them a second time
            scope.remove()
            try:
                decoder.prepare(cache, mask, scope.edits)
                cache = None
            except MemoryError as e:
                if fast is True:
                    raise
                import warnings

                warnings.warn(f"fast decoding skipped, decoding on the eager forward: {e}", stacklevel=2)
                decoder = None
                scope.install(hf)
        last_pos = positions[:, -1]
        scope.set_phase("generated")
        h = hidden[:, -1]
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        n_visible = torch.zeros(B, dtype=torch.long, device=dev)
        emitted: list[list[int]] = [[] for _ in range(B)]
        texts = [""] * B
        max_steps = extra
        for step in range(max_steps):
            logits = hf.get_output_embeddings()(h).float()
            # one reduction per step, outside any CUDA graph (the step's graph ends at h);
            # without a policy it is read with the all-done flag in one transfer below
            finite = logits_usable(logits)
            if policy is not None and not bool(finite):  # before the policy mixes NaNs into a latent
                raise _nonfinite(bench, step, all_edits, prefix, policy, "logits", logits)
            sampled = sample_next(logits, temperature, top_k, top_p, min_p, gen)
            latent = torch.zeros(B, dtype=torch.bool, device=dev)
            forced = torch.zeros(B, dtype=torch.bool, device=dev)
            records: dict = {}
            next_tok = sampled
            dec = None
            if policy is not None:
                dec = _check_decision(policy(LoopState(step, logits, h, sampled, done.clone(), bench, embed)), B, bench.arch.d_model, V, step)
                latent = dec.latent.to(dev) & ~done
                records = dec.records
                if dec.force is not None:
                    forced = (dec.force.to(dev) >= 0) & ~done & ~latent
                    next_tok = torch.where(forced, dec.force.to(dev), sampled)
            visible = ~done & ~latent & ~forced
            out_tok = torch.where(done | latent, torch.full_like(next_tok, -1), next_tok)
            n_visible += visible.long()
            new_done = done | (visible & torch.isin(next_tok, stops)) | (n_visible >= max_new_tokens)
            all_done = None
            if policy is None:
                ok, all_done = torch.stack((finite, new_done.all())).tolist()
                if not ok:
                    raise _nonfinite(bench, step, all_edits, prefix, policy, "logits", logits)
            text = None
            if decode_stream:
                text = []
                for i in range(B):
                    if visible[i]:
                        emitted[i].append(int(next_tok[i]))
                        full = tok.decode(emitted[i], skip_special_tokens=False)
                        text.append(full[len(texts[i]) :] if full.startswith(texts[i]) else full)
                        texts[i] = full
                    else:
                        text.append("")
            yield Step(
                index=step,
                tokens=out_tok,
                latent=latent,
                forced=forced,
                done=new_done,
                logits=logits if keep_logits else None,
                hidden=h if keep_hidden else None,
                text=text,
                records=records,
            )
            done = new_done
            if all_done if all_done is not None else bool(done.all()):
                break
            x = embed(torch.where(latent | done, torch.full_like(next_tok, pad), next_tok))
            if latent.any():
                if dec is None or dec.embeds is None:
                    raise InputError(f"policy {type(policy).__name__} marked rows latent at step {step} but gave no embeddings")
                lat = dec.embeds.to(device=dev, dtype=x.dtype)
                if not torch.isfinite(lat[latent]).all():
                    raise _nonfinite(bench, step, all_edits, prefix, policy, "the latent input")
                x = torch.where(latent[:, None], lat, x)
            last_pos = last_pos + 1
            if decoder is not None:
                h = decoder.step(x, last_pos)
            else:
                mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=dev)], dim=1)
                hidden, cache = forward_embeds(hf, x[:, None], mask, last_pos[:, None], cache)
                h = hidden[:, -1]


def _check_policy(policy: Any) -> int:
    """The loop steps a `next_input` policy may add (its `max_steps`), refusing what is not
    a bound policy (a latent spec such as `Coconut(...)` must be bound, or run through
    `workbench.latent.run`)."""
    if policy is None:
        return 0
    if not callable(policy):
        hint = (
            "; it is a latent policy spec: run it with workbench.latent.run(bench, prompt, policy), or pass "
            "policy.bind(bench, batch_size)" if callable(getattr(policy, "bind", None)) else ""
        )
        raise InputError(f"policy must be a callable next_input policy (LoopState -> Decision), got {type(policy).__name__}{hint}")
    n = getattr(policy, "max_steps", 0)
    return check_integer(0 if n is None else n, f"policy {type(policy).__name__}.max_steps", low=0)


def _check_decision(dec: Any, B: int, d: int, V: int, step: int) -> Decision:
    """A policy's Decision, shapes and forced ids checked (a misbehaving policy gets a
    message naming what it returned, not a broadcasting error deep in torch)."""
    if not isinstance(dec, Decision):
        raise InputError(f"policy returned {type(dec).__name__} at step {step}; it must return a generate.Decision")
    if not isinstance(dec.latent, Tensor) or dec.latent.dtype != torch.bool or tuple(dec.latent.shape) != (B,):
        got = tuple(dec.latent.shape) if isinstance(dec.latent, Tensor) else type(dec.latent).__name__
        raise InputError(f"policy Decision.latent at step {step} must be a bool tensor of shape ({B},), got {got}")
    if dec.embeds is not None and (not isinstance(dec.embeds, Tensor) or tuple(dec.embeds.shape) != (B, d)):
        got = tuple(dec.embeds.shape) if isinstance(dec.embeds, Tensor) else type(dec.embeds).__name__
        raise InputError(f"policy Decision.embeds at step {step} must be a tensor of shape ({B}, {d}), got {got}")
    if dec.force is not None:
        f = dec.force
        if not isinstance(f, Tensor) or f.is_floating_point() or f.dtype == torch.bool or tuple(f.shape) != (B,):
            got = (f.dtype, tuple(f.shape)) if isinstance(f, Tensor) else type(f).__name__
            raise InputError(f"policy Decision.force at step {step} must be an integer tensor of shape ({B},), got {got}")
        bad = (f < -1) | (f >= V)
        if bool(bad.any()):
            raise InputError(f"policy forced token id {int(f[bad][0])} at step {step}, outside the vocabulary [0, {V}) (-1: none)")
    return dec


def _check_stop_ids(stop_ids: Any, V: int) -> set[int] | None:
    if stop_ids is None:
        return None
    if isinstance(stop_ids, (str, bytes)) or not hasattr(stop_ids, "__iter__"):
        raise InputError(f"stop_ids must be a set of token ids, got {type(stop_ids).__name__} {stop_ids!r:.60}")
    return {check_integer(t, "stop_ids entry", low=0, high=V - 1, valid=f"a token id in [0, {V})") for t in stop_ids}


def _first_nonfinite_parameter(hf: Any) -> str | None:
    """The first parameter or buffer holding NaN/inf (only on the error path: it reads every
    weight once)."""
    for name, t in list(hf.named_parameters()) + list(hf.named_buffers()):
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            return name
    return None


COLLAPSED = (
    "every token got the same logit, the sign of a residual stream too large for the model's norms "
    "(its squared norm overflows to inf, so the normalised state is 0)"
)


def logits_usable(logits: Tensor) -> Tensor:
    """0-d bool tensor: every row of logits [batch, vocab] is finite and not constant. One
    fused reduction (aminmax); the caller decides when to read it. A constant row is what a
    residual stream too large for the final norm gives (its squared norm overflows to inf,
    the norm scales the hidden state to 0, every logit is 0 and argmax picks token 0): not
    NaN, but no distribution either."""
    lo, hi = torch.aminmax(logits, dim=-1)
    spread = hi - lo  # NaN for any NaN, inf or NaN for any +-inf
    return (torch.isfinite(spread) & (spread > 0)).all()


def _nonfinite(
    bench: Any, step: int, edits: Sequence[Any], prefix: Any, policy: Any, what: str, values: Tensor | None = None
) -> NonFiniteError:
    """The error for NaN/inf (or collapsed, constant) logits at `step`: names the edits in
    force (kind, layer, scale), the prefix and the latent policy, or, with none, the weight
    that is not finite."""
    if values is not None and bool(torch.isfinite(values).all()):
        return _collapsed(bench, step, edits, prefix, policy, what)
    msg = f"{what} became NaN/inf at step {step}"
    causes = _causes(edits, prefix)
    if causes:
        msg += f" with {causes} (lower the steering scale / prefix scale, or check the vectors)"
    else:
        bad = _first_nonfinite_parameter(bench.hf)
        msg += (
            f" with no edits in force: the model's weights are not finite ({bad} holds NaN/inf)" if bad is not None
            else " with no edits in force: the model's weights or inputs are not finite, or its activations overflow "
            f"{bench.hf.get_input_embeddings().weight.dtype}"
        )
    return NonFiniteError(msg + _policy_note(policy))


def _causes(edits: Sequence[Any], prefix: Any) -> str:
    """What may have pushed the residual stream out of range: the edits and the prefix."""
    ctx = []
    if edits:
        ctx.append(f"edits in force: {describe_edits(edits)}")
    if prefix is not None:
        ctx.append(f"prefix: {type(prefix).__name__}(n={getattr(prefix, 'n', '?')}, scale={getattr(prefix, 'scale', '?')})")
    return "; ".join(ctx)


def _policy_note(policy: Any) -> str:
    return f" (latent policy: {getattr(policy, 'method', type(policy).__name__)})" if policy is not None else ""


def _collapsed(bench: Any, step: int, edits: Sequence[Any], prefix: Any, policy: Any, what: str) -> NonFiniteError:
    msg = f"{what} collapsed at step {step}: {COLLAPSED}"
    causes = _causes(edits, prefix)
    msg += f" with {causes} (lower the steering scale / prefix scale)" if causes else " with no edits in force"
    return NonFiniteError(msg + _policy_note(policy))


def edits_from_steer(steer: Any) -> list:
    """Steering specs -> edits: anything with `.edits()` (a SteeringVector) or an edit."""
    if steer is None:
        return []
    items = steer if isinstance(steer, (list, tuple)) else [steer]
    out: list = []
    for s in items:
        to_edits = getattr(s, "edits", None)
        out.extend(to_edits() if callable(to_edits) else [s])
    return out


def generate_full(bench: Any, prompts, **kwargs) -> GenerationResult:
    """Run the loop to the end; visible token ids and texts per row."""
    rows = _rows(bench, prompts, kwargs.get("chat", True), kwargs.get("system"), kwargs.get("enable_thinking"))
    steps = list(generate_stream(bench, rows, **{k: v for k, v in kwargs.items() if k not in ("chat", "system", "enable_thinking")}))
    B = len(rows)
    ids: list[list[int]] = [[] for _ in range(B)]
    for s in steps:
        for i in range(B):
            t = int(s.tokens[i])
            if t >= 0 and not bool(s.forced[i]):
                ids[i].append(t)
    stops = kwargs.get("stop_ids") or stop_token_ids(bench.tokenizer, bench.hf)
    texts = [bench.tokenizer.decode([t for t in r if t not in stops], skip_special_tokens=False) for r in ids]
    return GenerationResult(texts=texts, token_ids=ids, prompt_lengths=[len(r) for r in rows], steps=steps)


def generate(bench: Any, prompt: str | Sequence[str], *, max_new_tokens: int = 64, **kwargs) -> str | list[str]:
    """Generate text; a plain string prompt goes through the chat template (`chat=False`
    for raw text). Returns a string for a string prompt, a list for a list. Takes every
    option of `generate_stream` (temperature, seed, steer=[...], prefix=..., edits=...)."""
    res = generate_full(bench, prompt, max_new_tokens=max_new_tokens, **kwargs)
    return res.texts[0] if isinstance(prompt, str) else res.texts


callable_module(__name__, "generate")

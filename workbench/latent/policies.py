"""The four latent loops as `next_input` policies of the one generation loop.

A policy here is a small frozen spec (`Coconut`, `ProjectionHead`, `LatentHead`,
`SoftThinking`); `spec.bind(bench, batch_size)` validates it against the model (before any
generation starts) and returns a fresh stateful runner that `generate_stream(policy=...)`
drives. The runner keeps, per row, a phase (begin marker -> thinking -> end marker ->
visible), the latent steps taken, the positions used and how thinking ended.

Every loop step advances every row by exactly one position, so a latent vector that
occupies `chunk_size` positions is fed on `chunk_size` consecutive loop steps (the same as
one forward over `chunk_size` copies: the model is causal), and batched rows stay aligned.
At a chunk boundary a thinking row either ends thinking (self-exit: the model's own argmax
is `</think>`; cold stop; budget spent) or gets its next latent from the state there:
`logits` / `hidden` (last hidden after the final norm) at the newest position.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import FileFormatError, InputError, NonFiniteError
from ..generate import Decision, LoopState, PromptState, check_truncation, stop_token_ids, truncate_probs
from ..inputs import check_integer, check_number
from .heads import (
    LATENT_HEAD_FILE,
    PROJECTION_FILE,
    HeadFile,
    LatentHeadModule,
    latent_head_from_tensors,
    projection_from_tensors,
)

EXITS = ("self_exit", "maxed", "fixed")
THINK_CLOSE = "</think>"


# --------------------------------------------------------------------------- helpers


def token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token` as one vocabulary entry (added tokens included), or None. Uses the
    fast tokenizer's lookup: `get_vocab()` builds a 248k-entry dict (~1 s for Qwen3.5)."""
    fast = getattr(tokenizer, "_tokenizer", None)
    if fast is not None and hasattr(fast, "token_to_id"):
        tid = fast.token_to_id(token)
        return None if tid is None else int(tid)
    tid = tokenizer.get_vocab().get(token)
    return None if tid is None else int(tid)


def stop_ids(bench: Any) -> set[int]:
    """End-of-turn ids of the bench's model: `generate.stop_token_ids` (the one source),
    cached on the bench."""
    cached = bench.extra.get("_latent_stop_ids") if isinstance(getattr(bench, "extra", None), dict) else None
    if cached is not None:
        return set(cached)
    ids = stop_token_ids(bench.tokenizer, bench.hf)
    if isinstance(getattr(bench, "extra", None), dict):
        bench.extra["_latent_stop_ids"] = frozenset(ids)
    return ids


def think_close_id(tokenizer: Any, explicit: int | None = None, vocab_size: int | None = None) -> int | None:
    """`</think>`'s id: `explicit` when given (checked against the vocabulary), else the
    tokenizer's own, else None."""
    if explicit is not None:
        if not _is_int(explicit) or explicit < 0 or (vocab_size and explicit >= vocab_size):
            raise InputError(f"think_close_token_id must be a token id in [0, {vocab_size}), got {explicit!r}")
        return int(explicit)
    return token_id(tokenizer, THINK_CLOSE)


def require_think_close(bench: Any, method: str, explicit: int | None = None) -> int:
    tid = think_close_id(bench.tokenizer, explicit, bench.arch.vocab_size)
    if tid is None:
        raise InputError(
            f"{method} needs a {THINK_CLOSE!r} token, but the tokenizer of {bench.name!r} has none; "
            "use a thinking model (e.g. qwen3.5-tiny) or pass think_close_token_id explicitly"
        )
    return tid


def marker_id(bench: Any, marker: str | int | None, what: str) -> int | None:
    """A marker token given as an id or a single-token string -> id (None stays None)."""
    if marker is None:
        return None
    V = bench.arch.vocab_size
    _check_marker(marker, what)
    if _is_int(marker):
        if not 0 <= marker < V:
            raise InputError(f"{what} id {marker} is outside the vocabulary [0, {V})")
        return int(marker)
    tid = token_id(bench.tokenizer, marker)
    if tid is not None:
        return tid
    ids = bench.tokenizer.encode(marker, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(f"{what} {marker!r} is not a single token of this tokenizer (it encodes to {len(ids)} tokens)")
    return int(ids[0])


def _is_int(value: Any) -> bool:
    """An int (numpy ints too), not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    try:
        import numpy as np

        return isinstance(value, np.integer)
    except ImportError:  # pragma: no cover
        return False


def _check_marker(marker: Any, what: str) -> None:
    if marker is not None and not (isinstance(marker, str) or _is_int(marker)):
        raise InputError(f"{what} must be a token string or a token id (an integer), got {type(marker).__name__} {marker!r:.60}")
    if isinstance(marker, str) and not marker:
        raise InputError(f"{what} is an empty string; give a token string or id, or None for no marker")


def _positive_int(value: Any, what: str, minimum: int = 1) -> int:
    """`value` as an int >= minimum: `inputs.check_integer` (bools, NaN, strings and
    non-integral floats such as 1.5 are refused, never truncated; 2.0 is 2)."""
    return check_integer(value, what, low=minimum)


def _check_tensors(tensors: Any, what: str) -> dict:
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()):
        raise InputError(f"{what} tensors must be a dict of name -> tensor, got {type(tensors).__name__}")
    return tensors


def _validated(fn, path: str, *args):
    """Run a head builder from `heads` (which raises ValueError listing every mismatch) and
    re-raise as FileFormatError when the tensors came from a file (the message names it),
    else InputError."""
    try:
        return fn(*args)
    except ValueError as e:
        if isinstance(e, (InputError, FileFormatError)):
            raise
        raise (FileFormatError if path else InputError)(str(e)) from None


def _check_batch(batch_size: Any) -> int:
    return _positive_int(batch_size, "batch_size")


def _check_pairing(pairing: Any) -> str:
    if not isinstance(pairing, str) or pairing not in ("next", "same"):
        raise InputError(
            f"pairing must be 'same' (token t with hidden t: the reference runtime's, the default) or 'next' "
            f"(token t+1 with hidden t), got {pairing!r}"
        )
    return pairing


def _nonneg_id(v: Any) -> int:
    if not _is_int(v) or v < 0:
        raise InputError(f"think_close_token_id must be a token id (an integer >= 0), got {v!r}")
    return int(v)


# --------------------------------------------------------------------------- the runner


class Runner:
    """Per-generation state machine shared by every policy; subclasses give `compute`.

    Attributes after the run, per row: `exit` (one of EXITS, None if never ended),
    `exit_detail` ("argmax_think_close", "cold_stop", "budget", "fixed"), `n_steps` (latent
    vectors computed), `positions` (positions they occupied)."""

    method = "latent"

    def __init__(
        self,
        bench: Any,
        batch_size: int,
        *,
        max_positions: int,
        chunk_size: int = 1,
        begin_id: int | None = None,
        end_id: int | None = None,
        close_id: int | None = None,
        self_exit: bool = False,
        exit_when_budget: str = "fixed",
    ):
        self.bench = bench
        self.B = batch_size
        self.chunk = chunk_size
        self.max_positions = max_positions
        self.begin_id, self.end_id, self.close_id = begin_id, end_id, close_id
        self.self_exit = self_exit
        self.exit_when_budget = exit_when_budget
        self.max_steps = max_positions + (begin_id is not None) + (end_id is not None)
        self.phase = ["begin" if begin_id is not None else "think"] * batch_size
        self.exit: list[str | None] = [None] * batch_size
        self.exit_detail: list[str | None] = [None] * batch_size
        self.n_steps = [0] * batch_size
        self.positions = [0] * batch_size
        self._chunk_left = [0] * batch_size
        self._current: Tensor | None = None  # [B, d] latent being fed

    # subclasses ---------------------------------------------------------------
    def compute(self, state: LoopState, need: Tensor) -> tuple[Tensor, dict]:
        """Next latents [B, d] for rows in `need` (others ignored) + per-row records."""
        raise NotImplementedError

    def extra_stop(self, state: LoopState, i: int) -> str | None:
        return None

    def observe(self, state: LoopState) -> None:
        """Called at every loop step before decisions (e.g. entropy bookkeeping)."""

    # the decision -------------------------------------------------------------
    def __call__(self, state: LoopState) -> Decision:
        B, dev = self.B, state.logits.device
        self.observe(state)
        latent = torch.zeros(B, dtype=torch.bool, device=dev)
        force = torch.full((B,), -1, dtype=torch.long, device=dev)
        need = torch.zeros(B, dtype=torch.bool, device=dev)
        exits: list[str | None] = [None] * B
        argmax = state.logits.argmax(-1)
        for i in range(B):
            if bool(state.done[i]):
                continue
            if self.phase[i] == "begin":
                force[i] = self.begin_id
                self.phase[i] = "think"
                continue
            if self.phase[i] == "think":
                if self._chunk_left[i] > 0:  # keep feeding the current latent
                    latent[i] = True
                    self._chunk_left[i] -= 1
                    self.positions[i] += 1
                    continue
                reason = self._stop_reason(state, i, int(argmax[i]))
                if reason is None:
                    need[i] = True
                    continue
                self.exit[i], self.exit_detail[i] = reason
                exits[i] = reason[0]
                self.phase[i] = "end"
            if self.phase[i] == "end":
                if self.end_id is not None:
                    force[i] = self.end_id
                self.phase[i] = "visible"
        records: dict = {"exits": exits}
        new_index = torch.full((B,), -1, dtype=torch.long)
        if bool(need.any()):
            embeds, extra = self.compute(state, need)
            embeds = embeds.to(device=dev)
            if not torch.isfinite(embeds[need]).all():
                bad = [i for i in range(B) if bool(need[i]) and not bool(torch.isfinite(embeds[i]).all())]
                raise NonFiniteError(f"{self.method}: latent vector at step {[self.n_steps[i] for i in bad]} of row(s) {bad} contains NaN/inf")
            if self._current is None:
                self._current = torch.zeros_like(embeds)
            self._current = torch.where(need[:, None], embeds, self._current)
            for i in range(B):
                if bool(need[i]):
                    new_index[i] = self.n_steps[i]
                    self.n_steps[i] += 1
                    self.positions[i] += 1
                    self._chunk_left[i] = self.chunk - 1
                    latent[i] = True
            records.update(extra)
            records["new"] = need.cpu()
            records["embeds"] = embeds.detach().float().cpu()
        records["latent_index"] = new_index
        return Decision(latent=latent, embeds=self._current if bool(latent.any()) else None, force=force, records=records)

    def _stop_reason(self, state: LoopState, i: int, argmax: int) -> tuple[str, str] | None:
        if self.self_exit and self.close_id is not None and argmax == self.close_id:
            return ("self_exit", "argmax_think_close")
        extra = self.extra_stop(state, i)
        if extra is not None:
            return ("self_exit", extra)
        if self.positions[i] + self.chunk > self.max_positions:
            return (self.exit_when_budget, "budget" if self.exit_when_budget == "maxed" else "fixed")
        return None


# --------------------------------------------------------------------------- COCONUT


@dataclass(frozen=True)
class Coconut:
    """COCONUT: the last hidden state (after the final norm) is the next input embedding.

    steps: latent steps (a fixed count, or the budget when `stop="self_exit"`);
    begin / end: optional begin/end-of-thought marker tokens (string or id), fed as
        ordinary tokens before the first and after the last latent step;
    stop: None (fixed count) or "self_exit" (end when the model's own argmax is `</think>`,
        which needs that token; then the exit is "self_exit" or "maxed")."""

    steps: int = 6
    begin: str | int | None = None
    end: str | int | None = None
    stop: str | None = None
    name = "coconut"

    def __post_init__(self):
        object.__setattr__(self, "steps", _positive_int(self.steps, "coconut steps"))
        if self.stop is not None and (not isinstance(self.stop, str) or self.stop != "self_exit"):
            raise InputError(f"coconut stop must be None or 'self_exit', got {self.stop!r}")
        _check_marker(self.begin, "coconut begin marker")
        _check_marker(self.end, "coconut end marker")

    def with_steps(self, steps: int) -> "Coconut":
        return dataclasses.replace(self, steps=steps)

    def bind(self, bench: Any, batch_size: int) -> Runner:
        batch_size = _check_batch(batch_size)
        steps = _positive_int(self.steps, "coconut steps")
        close = require_think_close(bench, "coconut with stop='self_exit'") if self.stop else None
        return _HiddenRunner(
            bench, batch_size, max_positions=steps, begin_id=marker_id(bench, self.begin, "coconut begin marker"),
            end_id=marker_id(bench, self.end, "coconut end marker"), close_id=close, self_exit=self.stop is not None,
            exit_when_budget="maxed" if self.stop else "fixed",
        )  # fmt: skip


class _HiddenRunner(Runner):
    method = "coconut"

    def compute(self, state, need):
        return state.hidden, {}


# --------------------------------------------------------------------------- projection head


@dataclass(frozen=True, eq=False)
class ProjectionHead:
    """CODI / QThink projection head: `proj(last hidden)` for K steps (default 6), then
    greedy decoding from the last step's logits (optionally after an `end` marker)."""

    tensors: dict
    steps: int = 6
    end: str | int | None = None
    path: str = ""
    name = "projection"

    def __post_init__(self):
        _check_tensors(self.tensors, "projection head")
        object.__setattr__(self, "steps", _positive_int(self.steps, "projection-head steps"))
        _check_marker(self.end, "end marker")

    @staticmethod
    def load(path: str, steps: int = 6, end: str | int | None = None) -> "ProjectionHead":
        steps = _positive_int(steps, "projection-head steps")  # before reading the file
        _check_marker(end, "end marker")
        f = HeadFile.read(path, PROJECTION_FILE)
        return ProjectionHead(f.tensors, steps=steps, end=end, path=f.path)

    def with_steps(self, steps: int) -> "ProjectionHead":
        return dataclasses.replace(self, steps=steps)

    def module(self, bench: Any):
        p = next(bench.hf.parameters())
        mod = _validated(projection_from_tensors, self.path, self.tensors, bench.arch.d_model, f"projection head {self.path or '(tensors)'}")
        return mod.to(device=p.device, dtype=p.dtype)

    def bind(self, bench: Any, batch_size: int) -> Runner:
        batch_size = _check_batch(batch_size)
        steps = _positive_int(self.steps, "projection-head steps")
        r = _ProjectionRunner(bench, batch_size, max_positions=steps, end_id=marker_id(bench, self.end, "end marker"))
        r.proj = self.module(bench)
        return r


class _ProjectionRunner(Runner):
    method = "projection"
    proj: Any = None

    def compute(self, state, need):
        return self.proj(state.hidden), {}


# --------------------------------------------------------------------------- latent head


@dataclass(frozen=True, eq=False)
class LatentHead:
    """The MTP-style latent head (Qwen3.5-27B latent-reasoning adapter format).

    Step: `token` = the model's own greedy next token, `h` = last hidden (after the final
    norm) at the newest position; `x = fc(cat(norm_e(embed(token)), norm_h(h)))`,
    `y = norm(layer(x))`, next input `to_embed(y)`, fed `chunk_size` times. The head layer
    attends over its own cache, prefilled over the prompt (the prefill's outputs are not
    used) with one of two pairings:

    * `pairing="same"` (default; the reference runtime's): prompt token t's embedding with
      hidden t, at head position t (head positions = backbone positions); the first latent
      step is at head position P (prompt length), each later one at the next.
    * `pairing="next"` (MTP-style): token t+1's embedding with hidden t, at head position
      t, for t < P-1; the first latent step is at head position P-1.

    `LatentHead.load` takes the pairing from adapter_config.json (`"pairing"`); an adapter
    whose config does not record one runs with the reference pairing "same", as its
    runtime ran it. Thinking ends by self-exit (argmax == think_close_token_id) or when the
    next step would not fit in `max_internal_tokens` positions (maxed); then `</think>` is
    fed as an ordinary token."""

    tensors: dict
    think_close_token_id: int | None = None
    max_internal_tokens: int = 256
    chunk_size: int = 1
    pairing: str = "same"
    path: str = ""
    name = "latent_head"

    @staticmethod
    def load(
        path: str,
        think_close_token_id: int | None = None,
        max_internal_tokens: int | None = None,
        chunk_size: int | None = None,
        pairing: str | None = None,
    ) -> "LatentHead":
        f = HeadFile.read(path, LATENT_HEAD_FILE)
        cfg = f.config
        from .heads import ADAPTER_CONFIG

        src = f"{Path(f.path).parent / ADAPTER_CONFIG}"

        def field(name: str, given: Any, default: Any, check) -> Any:
            """The argument when given, else the adapter config's value, checked there
            with a message naming the file and the field (never int()-truncated)."""
            if given is not None:
                return given
            if name not in cfg or (cfg[name] is None and default is None):
                return default
            try:
                return check(cfg[name])
            except InputError as e:
                raise FileFormatError(f"{src}: field {name!r}: {e}") from None

        return LatentHead(
            f.tensors,
            think_close_token_id=field("think_close_token_id", think_close_token_id, None, lambda v: _nonneg_id(v)),
            max_internal_tokens=field("max_internal_tokens", max_internal_tokens, 256, lambda v: _positive_int(v, "max_internal_tokens")),
            chunk_size=field("chunk_size", chunk_size, 1, lambda v: _positive_int(v, "chunk_size")),
            pairing=field("pairing", pairing, "same", _check_pairing),  # unrecorded: the reference runtime's
            path=f.path,
        )

    def __post_init__(self):
        _check_tensors(self.tensors, "latent head")
        object.__setattr__(self, "chunk_size", _positive_int(self.chunk_size, "chunk_size"))
        if not _is_int(self.max_internal_tokens) and not (isinstance(self.max_internal_tokens, float) and self.max_internal_tokens.is_integer()):
            raise InputError(f"max_internal_tokens must be an integer >= chunk_size ({self.chunk_size}), got {self.max_internal_tokens!r}")
        object.__setattr__(self, "max_internal_tokens", int(self.max_internal_tokens))
        if self.think_close_token_id is not None:
            object.__setattr__(self, "think_close_token_id", _nonneg_id(self.think_close_token_id))
        _check_pairing(self.pairing)

    def with_steps(self, steps: int) -> "LatentHead":
        """`steps` latent steps of budget: max_internal_tokens = steps x chunk_size."""
        steps = _positive_int(steps, "latent-head steps")
        return dataclasses.replace(self, max_internal_tokens=steps * self.chunk_size)

    def module(self, bench: Any) -> LatentHeadModule:
        return _validated(latent_head_from_tensors, self.path, bench.hf, self.tensors, f"latent head {self.path or '(tensors)'}")

    def bind(self, bench: Any, batch_size: int) -> Runner:
        batch_size = _check_batch(batch_size)
        chunk = _positive_int(self.chunk_size, "chunk_size")
        if not _is_int(self.max_internal_tokens) or self.max_internal_tokens < chunk:
            raise InputError(
                f"max_internal_tokens must be an integer >= chunk_size ({chunk}) so that at least one latent step fits, "
                f"got {self.max_internal_tokens!r}"
            )
        _check_pairing(self.pairing)
        close = require_think_close(bench, "the latent head", self.think_close_token_id)
        r = _LatentHeadRunner(
            bench, batch_size, max_positions=self.max_internal_tokens, chunk_size=chunk, end_id=close, close_id=close,
            self_exit=True, exit_when_budget="maxed",
        )  # fmt: skip
        r.head = self.module(bench)
        r.pairing = self.pairing
        return r


def _head_mask(kv_mask: Tensor, q_len: int, dtype: torch.dtype) -> Tensor:
    """Additive mask [B, 1, q, K]: causal over the head cache, padding masked, and every
    query may always see itself (no all-masked rows at padding)."""
    B, K = kv_mask.shape
    kpos = torch.arange(K, device=kv_mask.device)
    qpos = K - q_len + torch.arange(q_len, device=kv_mask.device)
    allowed = (kpos[None, :] <= qpos[:, None])[None] & kv_mask[:, None, :].bool()
    allowed = allowed | (kpos[None, :] == qpos[:, None])[None]
    return torch.zeros(B, 1, q_len, K, dtype=dtype, device=kv_mask.device).masked_fill(~allowed[:, None], torch.finfo(dtype).min)


class _LatentHeadRunner(Runner):
    """Prefills the head's cache over the prompt (`pairing`, see `LatentHead`), then one head
    step per latent step, each appending one entry to that cache."""

    method = "latent_head"
    head: LatentHeadModule
    pairing = "same"

    def start(self, prompt: PromptState) -> None:
        from transformers import DynamicCache

        from ..generate import base_model

        self._rotary = base_model(self.bench.hf).rotary_emb
        self._cache = DynamicCache()
        ids, hid = prompt.ids, prompt.hidden
        if self.pairing == "next":
            tok, h = ids[:, 1:], hid[:, :-1]
            valid = (ids[:, 1:] >= 0) & (ids[:, :-1] >= 0)
        else:
            tok, h, valid = ids, hid, ids >= 0
        B = ids.shape[0]
        self._mask = valid.long()
        self._next_pos = valid.long().sum(-1)  # [B] next head position per row
        if tok.shape[1] == 0:
            return
        pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
        x = self.head.fuse(prompt.embed(tok.clamp(min=0).reshape(-1)).reshape(B, tok.shape[1], -1), h)
        self._run(x, pos)

    def _run(self, x: Tensor, pos: Tensor) -> Tensor:
        pe = self._rotary(x, pos)
        mask = _head_mask(self._mask, x.shape[1], x.dtype)
        return self.head(x, pe, mask, pos, self._cache)

    def compute(self, state, need):
        token = state.logits.argmax(-1)
        x = self.head.fuse(state.embed(token), state.hidden)[:, None]
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        pos = self._next_pos[:, None].clone()
        self._next_pos = self._next_pos + 1
        y = self._run(x, pos)[:, 0]
        return y, {"head_token": token.cpu()}


# --------------------------------------------------------------------------- soft thinking


@dataclass(frozen=True)
class SoftThinking:
    """Training-free soft thinking: the next input is the probability-weighted mix of token
    embeddings under the truncated distribution (temperature, top-k, top-p, min-p).

    Ends when the argmax is `</think>` (self-exit), by the cold stop, or after `max_steps`
    steps (maxed); then `</think>` is fed (when the tokenizer has one). The cold stop is
    Soft Thinking's: the entropy of the full distribution softmax(logits / temperature),
    measured before any top-k / top-p / min-p truncation (the truncation shapes the mixture
    only), below `cold_entropy` nats for `cold_patience` consecutive latent steps (0
    disables it). The original's scripts use thresholds 0.01-0.1 with a length threshold
    of 256 steps; the default patience here is 8, since these loops think for tens of
    steps, not thousands."""

    max_steps: int = 64
    temperature: float = 0.6
    top_k: int = 15
    top_p: float = 0.95
    min_p: float = 0.0
    cold_entropy: float = 0.01
    cold_patience: int = 8
    readout_k: int = 16
    name = "soft_thinking"

    def __post_init__(self):
        object.__setattr__(self, "max_steps", _positive_int(self.max_steps, "soft-thinking max_steps"))
        if isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool) and self.temperature == 0:
            raise InputError(f"soft thinking needs temperature > 0 (it mixes a distribution), got {self.temperature}")
        t, k, p, m = check_truncation(self.temperature, self.top_k, self.top_p, self.min_p, positive_temperature=True, what="soft-thinking")
        for name, v in (("temperature", t), ("top_k", k), ("top_p", p), ("min_p", m)):
            object.__setattr__(self, name, v)
        object.__setattr__(self, "cold_entropy", check_number(self.cold_entropy, "soft-thinking cold_entropy", "a finite number >= 0 (nats; 0 = off)", low=0.0))
        object.__setattr__(self, "cold_patience", _positive_int(self.cold_patience, "soft-thinking cold_patience (0 = no cold stop)", minimum=0))
        object.__setattr__(self, "readout_k", _positive_int(self.readout_k, "soft-thinking readout_k"))

    def with_steps(self, steps: int) -> "SoftThinking":
        return dataclasses.replace(self, max_steps=steps)

    def bind(self, bench: Any, batch_size: int) -> Runner:
        batch_size = _check_batch(batch_size)
        steps = _positive_int(self.max_steps, "soft-thinking max_steps")
        truncate_probs(torch.zeros(1, 2), self.temperature, self.top_k, self.top_p, self.min_p)  # validates
        close = think_close_id(bench.tokenizer, None, bench.arch.vocab_size)
        if close is None and self.cold_patience > 0:
            raise InputError(
                f"soft thinking's cold stop forces {THINK_CLOSE!r}, but the tokenizer of {bench.name!r} has none; "
                "pass cold_patience=0 to think for a fixed budget"
            )
        r = _SoftRunner(
            bench, batch_size, max_positions=steps, end_id=close, close_id=close, self_exit=close is not None, exit_when_budget="maxed"
        )
        r.spec = self
        r._low = [0] * batch_size
        return r


def cold_stop_entropy(logits: Tensor, temperature: float) -> Tensor:
    """Soft Thinking's cold-stop entropy [batch] (nats): H(softmax(logits / temperature))
    over the whole vocabulary, before truncation (a step whose top token has p >= top_p is
    one-hot after truncation but not cold under this rule)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


class _SoftRunner(Runner):
    method = "soft_thinking"
    spec: SoftThinking

    def observe(self, state):
        s = self.spec
        if s.cold_patience <= 0:
            return
        ent = cold_stop_entropy(state.logits, s.temperature)
        for i in range(self.B):
            if self.phase[i] == "think" and self._chunk_left[i] == 0:
                self._low[i] = self._low[i] + 1 if float(ent[i]) < s.cold_entropy else 0

    def extra_stop(self, state, i):
        s = self.spec
        if s.cold_patience > 0 and self._low[i] >= s.cold_patience:
            return "cold_stop"
        return None

    def compute(self, state, need):
        s = self.spec
        probs = truncate_probs(state.logits, s.temperature, s.top_k, s.top_p, s.min_p)
        W = self.bench.hf.get_input_embeddings().weight
        embeds = probs.to(W.dtype) @ W
        k = min(s.readout_k, probs.shape[-1])
        top = probs.topk(k, dim=-1)
        return embeds, {
            "mix_ids": top.indices.cpu(),
            "mix_weights": top.values.float().cpu(),
            "mix_support": (probs > 0).sum(-1).cpu(),
            "mix_entropy": (-(probs * probs.clamp_min(1e-30).log()).sum(-1)).float().cpu(),
        }


# --------------------------------------------------------------------------- pause tokens

PAUSE_FILE = "pause_tokens.safetensors"
_FROM_FILE = object()  # PauseTokens.load: take the end marker the pause file names


@dataclass(frozen=True, eq=False)
class PauseTokens:
    """Learned pause embeddings (`pause_embeds` [m, d]) fed right after the prompt, one
    per position, then ordinary decoding.

    end: None (default): nothing is forced after the pauses, the model goes on writing
        (the `pause` recipe, "pause tokens before CoT": it writes its chain of thought and
        answer itself). A marker (string or id, e.g. "</think>"): fed as an ordinary token
        right after the last pause, so the thinking block closes there and the model
        answers directly with no chain (the `pause-answer` recipe, Goyal et al. 2023).
        `PauseTokens.load` takes it from the pause file's metadata (key "end") unless
        given."""

    tensors: dict
    path: str = ""
    end: str | int | None = None
    name = "pause"

    def __post_init__(self):
        _check_tensors(self.tensors, "pause tokens")
        _check_marker(self.end, "pause end marker")

    @staticmethod
    def load(path: str, end: Any = _FROM_FILE) -> "PauseTokens":
        f = HeadFile.read(path, PAUSE_FILE)
        if end is _FROM_FILE:
            end = _pause_file_end(f.path)
        return PauseTokens(f.tensors, path=f.path, end=end)

    @property
    def count(self) -> int:
        t = self.tensors.get("pause_embeds")
        return int(t.shape[0]) if t is not None and t.ndim == 2 else 0

    def with_steps(self, steps: int) -> "PauseTokens":
        steps = _positive_int(steps, "pause steps")
        if steps > self.count:
            raise InputError(f"pause steps must be in [1, {self.count}] (this pause file holds {self.count} pause embeddings), got {steps}")
        return dataclasses.replace(self, tensors={"pause_embeds": self.tensors["pause_embeds"][:steps]})

    def bind(self, bench: Any, batch_size: int) -> Runner:
        from .heads import check_state

        batch_size = _check_batch(batch_size)
        d = bench.arch.d_model
        t = self.tensors.get("pause_embeds")
        m = int(t.shape[0]) if t is not None and t.ndim == 2 else 1
        if m == 0:
            raise (FileFormatError if self.path else InputError)(f"pause tokens {self.path or '(tensors)'}: pause_embeds holds no embeddings (shape {list(t.shape)})")
        _validated(check_state, self.path, self.tensors, {"pause_embeds": (m, d)}, f"pause tokens {self.path or '(tensors)'}")
        p = next(bench.hf.parameters())
        r = _PauseRunner(bench, batch_size, max_positions=m, end_id=marker_id(bench, self.end, "pause end marker"))
        r.embeds = self.tensors["pause_embeds"].to(device=p.device, dtype=p.dtype)
        return r


def _pause_file_end(path: str) -> str | None:
    """The end marker a `.safetensors` pause file names in its metadata ("end"), or None
    (no metadata, a `.pt` file: the pause-before-CoT form)."""
    if not str(path).endswith(".safetensors"):
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as h:
            meta = h.metadata() or {}
    except Exception as e:  # already read once by HeadFile.read: only a file changed in between
        raise FileFormatError(f"{path}: the safetensors pause file is corrupt ({type(e).__name__}: {e})") from e
    end = meta.get("end")
    if end is not None and (not isinstance(end, str) or not end):
        raise FileFormatError(f"{path}: metadata field 'end' must be a token string (the marker fed after the pauses), got {end!r}")
    return end


class _PauseRunner(Runner):
    method = "pause"
    embeds: Tensor

    def compute(self, state, need):
        idx = torch.tensor([min(n, len(self.embeds) - 1) for n in self.n_steps], device=self.embeds.device)
        return self.embeds[idx], {}


# --------------------------------------------------------------------------- trained folders

POLICY_FILE = "latent_policy.json"


def load_policy(folder: str, allowed: Any = None) -> tuple[Any, str]:
    """The latent policy a training recipe saved in `folder` (its `latent_policy.json`)
    and the model it runs on (a model folder or a registry name). Returns (spec, model);
    for a training path that is scored with explicit CoT (`upft`, method "cot") the spec
    is the string "cot", `latent.eval`'s chain-of-thought baseline, on the fine-tuned model.

    allowed: folders the caller may read (the app passes its allowed folders and its
    output folder). With it, `folder` and every path the file names (`head`, `model`)
    must resolve (symlinks followed) inside one of them; anything else is refused with
    PathNotAllowedError before its existence is checked, so the message never tells
    whether something exists there. Without it (library, CLI) paths are followed as
    written. A malformed file is a FileFormatError naming the file and the field."""
    from pathlib import Path

    from ..errors import FileFormatError, MissingFileError
    from ..paths import read_json_object

    roots = None if allowed is None else _policy_roots(allowed)
    path = Path(folder).expanduser()
    if roots is not None:
        _policy_confine(path, roots, "recipe folder", str(folder))
    if not path.exists():
        raise MissingFileError(f"recipe folder {str(folder)!r} does not exist")
    cfg_path = path / POLICY_FILE if path.is_dir() else path
    if not cfg_path.is_file():
        raise FileFormatError(f"{str(folder)!r} has no {POLICY_FILE}; it is not the output of a workbench latent training recipe")
    try:
        cfg = read_json_object(cfg_path)
    except FileFormatError:
        raise
    except ValueError as e:
        raise FileFormatError(str(e)) from None
    base = cfg_path.parent
    methods = ("coconut", "projection", "latent_head", "pause", "cot", "latent_sft")
    method = cfg.get("method")
    if method not in methods:
        raise FileFormatError(f"{cfg_path}: unknown method {method!r} (field 'method'); expected {', '.join(methods)}")
    model = cfg.get("model", "")
    if model is None:
        model = ""
    if not isinstance(model, str):
        raise FileFormatError(f"{cfg_path}: field 'model' must be a string (a model folder or a registry name), got {model!r}")
    if model:
        if roots is not None:
            _policy_confine(base / model, roots, f"{cfg_path.name} field 'model'", model, _POLICY_HINT)
        model = str(base / model) if (base / model).exists() else model

    def head(default: str) -> str:
        h = cfg.get("head", default)
        if not isinstance(h, str) or not h.strip():
            raise FileFormatError(f"{cfg_path}: field 'head' must be the head file's path (relative to the folder), got {h!r}")
        if roots is not None:
            _policy_confine(base / h, roots, f"{cfg_path.name} field 'head'", h, _POLICY_HINT)
        return str(base / h)

    def steps() -> int:
        v = cfg.get("steps")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise FileFormatError(f"{cfg_path}: method {method!r} needs 'steps', a positive integer; got {v!r}")
        return v

    if method == "cot":  # a training path scored with explicit CoT (upft): the spec is the "cot" baseline
        if not model:
            raise FileFormatError(f"{cfg_path}: method 'cot' needs 'model', the fine-tuned model's folder (relative) or a registry name")
        return "cot", model
    if method == "coconut":
        try:
            spec: Any = Coconut(steps=steps(), begin=cfg.get("begin"), end=cfg.get("end"), stop=cfg.get("stop"))
        except FileFormatError:
            raise
        except ValueError as e:  # a marker or stop rule of the wrong kind
            raise FileFormatError(f"{cfg_path}: {e}") from None
    elif method == "projection":
        spec = ProjectionHead.load(head(PROJECTION_FILE), steps=steps(), end=cfg.get("end"))
    elif method == "latent_head":
        spec = LatentHead.load(head(LATENT_HEAD_FILE))
    elif method == "latent_sft":  # Latent-SFT's stage-2 model feeding its own top-k superpositions
        from .latent_sft import LatentSFT

        if not model:
            raise FileFormatError(f"{cfg_path}: method 'latent_sft' needs 'model', the stage-2 model's folder (relative) or a registry name")
        top_k = cfg.get("top_k", 10)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise FileFormatError(f"{cfg_path}: field 'top_k' must be a positive integer (tokens per superposition), got {top_k!r}")
        spec = LatentSFT(max_steps=steps(), top_k=top_k)
    else:
        spec = PauseTokens.load(head(PAUSE_FILE))
    return spec, model


_POLICY_HINT = "; a path in a recipe's file must be relative to its folder and stay inside the allowed folders (no absolute paths, no '..' out of them)"


def _policy_roots(allowed: Any) -> tuple:
    from pathlib import Path

    items = [allowed] if isinstance(allowed, (str, bytes)) or hasattr(allowed, "__fspath__") else list(allowed)
    return tuple(Path(a).expanduser().resolve() for a in items)


def _policy_confine(path: Any, roots: tuple, what: str, shown: str, hint: str = "") -> None:
    """Refuse `path` unless it resolves inside one of `roots`. Nothing about the path is
    reported but the text it was given as, whether or not it exists."""
    from pathlib import Path

    from ..errors import PathNotAllowedError

    p = Path(path).expanduser()
    try:
        rp = p.resolve()
    except (OSError, RuntimeError):  # a symlink loop: refused like any path outside
        rp = None
    if rp is not None and any(rp == r or r in rp.parents for r in roots):
        return
    raise PathNotAllowedError(
        f"{what} {shown!r} is outside the folders this app may read ({', '.join(map(str, roots))}){hint}"
    )

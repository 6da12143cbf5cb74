"""Reading (and editing) the residual stream through nnsight: the only module that opens
`model.trace()`.

`capture` runs many prompts and many layers in one batched trace per chunk, left-padding
aware (explicit position ids), so batched equals one-by-one. Positions are reduced inside
the trace, so only what is asked for is kept. Edits given here are applied inside the
trace (in forward order, with the same `Edit.__call__` the generation loop's hooks use),
so a capture sees the edited residual at and after the edited layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from .arch import decoder_layers
from .edits import describe_edits, validate_edits
from .errors import InputError, NonFiniteError
from .inputs import Batch, check_bool, check_integer, encode

Positions = str | int | slice


@dataclass
class Activations(Mapping):
    """layer -> activations. With positions "last", "mean", an int or a slice: [n_prompts,
    d_model]. With "all": [n_prompts, seq, d_model], left padded; `mask` [n_prompts, seq]
    marks real tokens. `token_ids` the (left-padded) ids, `lengths` real tokens per prompt,
    `logits` [n_prompts, vocab] at the last position when asked for."""

    data: dict[int, Tensor]
    positions: Positions
    token_ids: Tensor
    mask: Tensor
    lengths: Tensor
    logits: Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __getitem__(self, layer: int) -> Tensor:
        try:
            return self.data[layer]
        except KeyError:
            raise KeyError(f"layer {layer} was not captured; captured layers: {sorted(self.data)}") from None

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.data))

    def __len__(self) -> int:
        return len(self.data)

    def stacked(self) -> Tensor:
        """[n_layers_captured, ...] in layer order."""
        return torch.stack([self.data[l] for l in sorted(self.data)])


def _layers_envoy(bench) -> Any:
    """The nnsight envoy of the decoder ModuleList."""
    target = decoder_layers(bench.hf)
    for name, mod in bench.hf.named_modules():
        if mod is target:
            env = bench.model
            for part in name.split("."):
                env = getattr(env, part)
            return env
    raise ValueError("decoder layers not found in the nnsight model")


def check_layers(bench: Any, layers: int | Sequence[int] | str | None) -> list[int]:
    """Validated, sorted, de-duplicated layer indices: None or "all" for every block, an
    int, or a list of ints in [0, n_layers) (negative ones count from the end). Bools,
    floats such as 1.5, and other strings are refused, never coerced."""
    n = bench.arch.n_layers
    valid = f"valid: None or 'all' (every layer), an integer or a list of integers in [0, {n - 1}] (or -{n}..-1)"
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(n))
    if isinstance(layers, (str, bytes, bool, float, dict)) or layers is ... :
        raise InputError(f"layers must not be {type(layers).__name__} {layers!r}; {valid}")
    if isinstance(layers, Tensor) and layers.ndim == 0:
        layers = [layers]
    elif not hasattr(layers, "__iter__"):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise InputError(f"layers is empty; valid layers are 0..{n - 1}")
    return sorted({bench.arch.check_layer(l) for l in layers})


_POSITIONS_VALID = "'last', 'all', 'mean', an integer or a slice of integers"


def _check_positions(positions: Positions) -> Positions:
    if isinstance(positions, str) and positions not in ("last", "all", "mean"):
        raise InputError(f"positions must be {_POSITIONS_VALID}, got {positions!r}")
    if isinstance(positions, slice):
        for part in ("start", "stop", "step"):
            v = getattr(positions, part)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise InputError(f"positions slice {part} must be an integer or None, got {v!r}")
        if positions.step == 0:
            raise InputError("positions slice step must not be zero")
        return positions
    if isinstance(positions, str):
        return positions
    if isinstance(positions, bool) or not isinstance(positions, int):
        try:
            return check_integer(positions, f"positions (valid: {_POSITIONS_VALID})")
        except InputError:
            raise InputError(f"positions must be {_POSITIONS_VALID}, got {positions!r}") from None
    return positions


def check_positions_fit(positions: Positions, lengths: Sequence[int]) -> None:
    """Refuse, before any forward, an int position outside a prompt or a slice selecting no
    token of a prompt (lengths: real positions per prompt)."""
    if isinstance(positions, bool):
        return
    if isinstance(positions, int):
        for i, L in enumerate(lengths):
            if not -L <= positions < L:
                raise InputError(
                    f"position {positions} is outside prompt {i} of {L} tokens; valid positions are {-L}..{L - 1}"
                )
    elif isinstance(positions, slice):
        for i, L in enumerate(lengths):
            if len(range(L)[positions]) == 0:
                raise InputError(f"position slice {positions} selects no token of prompt {i} ({L} tokens)")


def _check_remote(remote: Any) -> Any:
    if remote is False or remote is True or remote == "local" and isinstance(remote, str):
        return remote
    raise InputError(f"remote must be False, True (NDIF) or 'local', got {remote!r}")


def check_finite_capture(data: dict[int, Tensor], logits: Tensor | None, edits: Sequence[Any]) -> None:
    """NonFiniteError when a captured activation or the logits hold NaN/inf, naming the
    first such layer and the edits in force."""
    from .generate import COLLAPSED, logits_usable

    for l in sorted(data):
        if not bool(torch.isfinite(data[l]).all()):
            break
    else:
        l = None
    if l is None and (logits is None or bool(logits_usable(logits))):
        return
    if l is None and bool(torch.isfinite(logits).all()):
        ctx = f" with edits in force: {describe_edits(edits)} (lower the scale)" if edits else " with no edits in force"
        raise NonFiniteError(f"the logits collapsed: {COLLAPSED}{ctx}")
    where = f"activations at layer {l}" if l is not None else "the logits"
    ctx = f"with edits in force: {describe_edits(edits)} (lower the scale or check the vectors)" if edits else (
        "with no edits in force: the model's weights or inputs are not finite, or its activations overflow"
    )
    raise NonFiniteError(f"{where} became NaN/inf {ctx}")


def reduce_positions(h: Tensor, mask: Tensor, positions: Positions) -> Tensor:
    """Select/average token positions of left-padded hidden states h [b, T, d]."""
    b, T, _ = h.shape
    lengths = mask.sum(-1)
    if positions == "all":
        return h * mask[..., None].to(h.dtype)
    if positions == "last":
        return h[:, -1]
    if positions == "mean":
        return (h * mask[..., None].to(h.dtype)).sum(1) / lengths[:, None].to(h.dtype)
    if isinstance(positions, int):
        idx = torch.where(torch.tensor(positions) >= 0, T - lengths + positions, T + positions)
        if (idx < T - lengths).any() or (idx >= T).any():
            bad = int(lengths.min())
            raise InputError(f"position {positions} is outside a prompt of {bad} tokens")
        return h[torch.arange(b, device=h.device), idx.to(h.device)]
    # slice over each row's real tokens, averaged
    out = []
    for i in range(b):
        real = h[i, T - int(lengths[i]) :]
        sel = real[positions]
        if sel.shape[0] == 0:
            raise InputError(f"position slice {positions} selects no token of prompt {i} ({int(lengths[i])} tokens)")
        out.append(sel.mean(0))
    return torch.stack(out)


def trace_batch(
    bench: Any,
    batch: Batch,
    layers: Sequence[int],
    positions: Positions = "last",
    edits: Sequence[Any] = (),
    want_logits: bool = False,
    remote: bool | str = False,
) -> tuple[dict[int, Tensor], Tensor | None]:
    """One nnsight trace over a prepared batch: reduced residuals at `layers` (block outputs)
    and optionally the last-position logits; `edits` applied in forward order.

    remote: False (run here), True (send the trace to NDIF for a model it hosts; see
    `workbench.remote`) or "local" (nnsight's serverless dry run: the request is serialized
    and deserialized exactly as for NDIF, then run here)."""
    edits = validate_edits(edits, bench.arch.n_layers, bench.arch.d_model)
    remote = _check_remote(remote)
    by_layer: dict[int, list] = {}
    for e in edits:
        by_layer.setdefault(e.layer, []).append(e)
    touched = sorted(set(layers) | set(by_layer))
    envs = _layers_envoy(bench)
    batch = batch.to(bench.device)
    saved: dict[int, Any] = {}
    mask = batch.attention_mask
    # Only the last position's logits are ever used: `logits_to_keep=1` spares the LM head
    # over every position (large for Qwen3.5's 248k vocabulary); with no logits wanted the
    # forward stops right after the last layer read.
    extra = {"remote": remote} if remote else {}
    with torch.no_grad(), bench.model.trace(**batch.model_kwargs(), logits_to_keep=1, **extra) as tracer:
        for l in touched:
            out = envs[l].output
            h = out[0] if isinstance(out, tuple) else out
            if l in by_layer:
                for e in by_layer[l]:
                    h = e(h, "prompt")
                if isinstance(out, tuple):
                    envs[l].output = (h, *out[1:])
                else:
                    envs[l].output = h
            if l in layers:
                saved[l] = reduce_positions(h, mask, positions).float().save()
        if want_logits:
            logits = bench.model.output.logits[:, -1].float().save()
        else:
            logits = None
            if not remote:  # a remote job runs the whole forward
                tracer.stop()
    data = {l: saved[l].detach().cpu() for l in layers}
    logits = logits.detach().cpu() if want_logits else None
    check_finite_capture(data, logits, edits)
    return data, logits


def capture(
    bench: Any,
    prompts: str | Sequence[str],
    layers: int | Sequence[int] | None = None,
    positions: Positions = "last",
    *,
    chat: bool = False,
    edits: Sequence[Any] = (),
    batch_size: int = 16,
    want_logits: bool = False,
    progress: bool = False,
    remote: bool | str = False,
) -> Activations:
    """Residual-stream activations (block outputs) for `prompts` at `layers`: None or "all"
    (every block, the default), an int or a list of ints (negative count from the end).

    Raw text is tokenised as the tokenizer does by default (`chat=True` renders each prompt
    as a user turn). Runs in chunks of `batch_size` prompts, one trace per chunk with every
    layer read in it; returns float32 tensors on the CPU. `remote`: see `trace_batch`.
    """
    layer_list = check_layers(bench, layers)
    positions = _check_positions(positions)
    batch_size = check_integer(batch_size, "batch_size", low=1)
    check_bool(chat, "chat")
    check_bool(want_logits, "want_logits")
    check_bool(progress, "progress")
    _check_remote(remote)
    validate_edits(edits, bench.arch.n_layers, bench.arch.d_model)
    batch = encode(bench, prompts, chat=chat)
    check_positions_fit(positions, batch.lengths.tolist())
    n = batch.input_ids.shape[0]
    chunks: dict[int, list[Tensor]] = {l: [] for l in layer_list}
    logit_chunks: list[Tensor] = []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="capture", unit="batch")
    for s in starts:
        sub = _sub_batch(batch, s, s + batch_size)
        data, logits = trace_batch(bench, sub, layer_list, positions, edits, want_logits, remote)
        for l in layer_list:
            t = data[l]
            if positions == "all":  # re-pad to the full batch width
                pad = batch.input_ids.shape[1] - t.shape[1]
                t = torch.nn.functional.pad(t, (0, 0, pad, 0))
            chunks[l].append(t)
        if logits is not None:
            logit_chunks.append(logits)
    return Activations(
        data={l: torch.cat(chunks[l]) for l in layer_list},
        positions=positions,
        token_ids=batch.input_ids,
        mask=batch.attention_mask,
        lengths=batch.lengths,
        logits=torch.cat(logit_chunks) if logit_chunks else None,
    )


def _sub_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start:stop], trimmed to their own longest prompt (less padding per chunk)."""
    mask = batch.attention_mask[start:stop]
    width = int(mask.sum(-1).max())
    sl = slice(batch.input_ids.shape[1] - width, None)
    return Batch(
        batch.input_ids[start:stop, sl],
        mask[:, sl],
        batch.position_ids[start:stop, sl],
        batch.lengths[start:stop],
    )


def run_with_edits(
    bench: Any, prompts: str | Sequence[str], edits: Sequence[Any], layers: Sequence[int] = (), *, chat: bool = False,
    remote: bool | str = False,
) -> Activations:
    """Forward `prompts` with `edits` applied; last-position logits plus any `layers`
    (`remote` as in `trace_batch`)."""
    layer_list = check_layers(bench, layers) if layers is not None and not (isinstance(layers, (list, tuple)) and not layers) else []
    batch = encode(bench, prompts, chat=chat)
    data, logits = trace_batch(bench, batch, layer_list, "last", edits, want_logits=True, remote=remote)
    return Activations(data, "last", batch.input_ids, batch.attention_mask, batch.lengths, logits)

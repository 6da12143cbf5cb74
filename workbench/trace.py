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
from .edits import validate_edits
from .inputs import Batch, encode

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


def check_layers(bench: Any, layers: int | Sequence[int] | None) -> list[int]:
    """Validated, sorted, de-duplicated layer indices (None: every block)."""
    if layers is None:
        return list(range(bench.arch.n_layers))
    if isinstance(layers, int):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError(f"layers is empty; valid layers are 0..{bench.arch.n_layers - 1}")
    return sorted({bench.arch.check_layer(l) for l in layers})


def _check_positions(positions: Positions) -> Positions:
    if isinstance(positions, str) and positions not in ("last", "all", "mean"):
        raise ValueError(f"positions must be 'last', 'all', 'mean', an int or a slice, got {positions!r}")
    if not isinstance(positions, (str, int, slice)) or isinstance(positions, bool):
        raise ValueError(f"positions must be 'last', 'all', 'mean', an int or a slice, got {positions!r}")
    return positions


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
            raise ValueError(f"position {positions} is outside a prompt of {bad} tokens")
        return h[torch.arange(b, device=h.device), idx.to(h.device)]
    # slice over each row's real tokens, averaged
    out = []
    for i in range(b):
        real = h[i, T - int(lengths[i]) :]
        sel = real[positions]
        if sel.shape[0] == 0:
            raise ValueError(f"position slice {positions} selects no token of prompt {i} ({int(lengths[i])} tokens)")
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
    return {l: saved[l].detach().cpu() for l in layers}, (logits.detach().cpu() if want_logits else None)


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
    """Residual-stream activations (block outputs) for `prompts` at `layers` (default: all).

    Raw text is tokenised as the tokenizer does by default (`chat=True` renders each prompt
    as a user turn). Runs in chunks of `batch_size` prompts, one trace per chunk with every
    layer read in it; returns float32 tensors on the CPU. `remote`: see `trace_batch`.
    """
    layer_list = check_layers(bench, layers)
    positions = _check_positions(positions)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch = encode(bench, prompts, chat=chat)
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
    layer_list = check_layers(bench, layers) if layers else []
    batch = encode(bench, prompts, chat=chat)
    data, logits = trace_batch(bench, batch, layer_list, "last", edits, want_logits=True, remote=remote)
    return Activations(data, "last", batch.input_ids, batch.attention_mask, batch.lengths, logits)

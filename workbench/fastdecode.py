"""The fast decode path: one token per step on preallocated state, replayed as a CUDA graph.

The eager loop (`generate.forward_embeds`) runs the whole transformers forward for every
token: it rebuilds the attention masks, grows a `DynamicCache` by concatenation and launches
every kernel from Python, one after another. At batch 1 on a 27B model that is launch- and
allocator-bound, far from the memory-bandwidth limit. `Decoder` keeps the same modules and
the same arithmetic, and changes only what surrounds them:

- **Static state.** Full-attention blocks write keys and values into buffers sized for the
  whole generation (`[batch, kv_heads, max_len, head_dim]`) at a slot index that lives on
  the device; a boolean mask over the buffer marks the valid slots (left padding stays
  masked). Gated DeltaNet blocks update their conv window and recurrent state in place, in
  buffers of fixed shape. Nothing is allocated or concatenated per step, so addresses are
  stable.
- **CUDA graphs.** On a GPU, one decode step (all blocks and the final norm) is captured once
  per batch size, buffer length and edit layout, and replayed per token: one launch instead
  of thousands. The unembedding and sampling stay outside (they are one matmul and a few
  small kernels).
- **Fused steering.** Every `AddVector` on a block (a steering vector, any number of them)
  is folded into one bias row per block, held in a device buffer the graph reads: the
  steered step is the plain step plus one add per steered block, and changing vectors or
  scales needs no new capture. Other edits (`Ablate`, custom ones) run as captured ops in
  order; a block with one of those runs all of its edits that way, so order is kept, and
  new edit objects of that kind mean a new capture.

The prompt (and any prefix) still runs through the eager forward with the edits' hooks,
and its cache is copied into the static buffers; decoding then continues on them. The
blocks are called through their own modules (`block(hidden, ...)` with a duck-typed cache),
so their arithmetic, kernels (flash-linear-attention, causal-conv1d when installed) and any
forward hook a caller installed are the eager path's. When hooks are present on the model
during a step a graph could not run them, so that step runs the same static step eagerly.

Supported: decoders whose blocks are full attention (sdpa or eager) or Qwen3.5 Gated
DeltaNet (Qwen3.5, Qwen3-Next-style hybrids, Llama-family models such as SmolLM2), on one
device, in eval mode. `unsupported_reason(hf)` says why anything else is not; generation
then runs the eager loop (`fast="auto"`) or raises (`fast=True`).
"""

from __future__ import annotations

import copy
import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .arch import LINEAR_ATTENTION, SOFTMAX_ATTENTION, decoder_layers, final_norm, text_config
from .compat import CACHE_NAMES, cache_kwarg, with_cache
from .edits import AddVector

BUCKET = 256  # buffer lengths are rounded up to this, so a decoder is reused across calls


def check_fast(fast: Any) -> Any:
    if not (fast is True or fast is False or (isinstance(fast, str) and fast == "auto")):
        from .errors import InputError

        raise InputError(f"fast must be 'auto', True or False, got {fast!r}")
    return fast


def _text_model(hf: nn.Module) -> nn.Module:
    """The module that owns the decoder blocks, the rotary embedding and the final norm."""
    inner = getattr(hf, "model", None)
    for cand in (inner, getattr(inner, "language_model", None)):
        if cand is not None and isinstance(getattr(cand, "layers", None), nn.ModuleList):
            return cand
    raise ValueError(f"cannot find the text decoder of {type(hf).__name__}")


def unsupported_reason(hf: nn.Module) -> str | None:
    """Why `hf` cannot use the fast decode path, or None when it can."""
    try:
        text = _text_model(hf)
        layers = decoder_layers(hf)
        final_norm(hf)
    except ValueError as e:
        return str(e)
    cfg = text_config(hf.config)
    if getattr(text, "rotary_emb", None) is None:
        return f"{type(text).__name__} has no rotary_emb module (only RoPE decoders are supported)"
    types = list(getattr(cfg, "layer_types", None) or [SOFTMAX_ATTENTION] * len(layers))
    odd = sorted({t for t in types if t not in (SOFTMAX_ATTENTION, LINEAR_ATTENTION)})
    if odd:
        return f"block types {odd} are not supported (only {SOFTMAX_ATTENTION!r} and {LINEAR_ATTENTION!r})"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention is not supported"
    impl = getattr(cfg, "_attn_implementation", None) or getattr(hf.config, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} is not supported (sdpa or eager)"
    for i, (layer, t) in enumerate(zip(layers, types)):
        mixer = getattr(layer, "linear_attn" if t == LINEAR_ATTENTION else "self_attn", None)
        if mixer is None:
            return f"block {i} ({t}) has no {'linear_attn' if t == LINEAR_ATTENTION else 'self_attn'} module"
        params = inspect.signature(type(layer).forward).parameters
        if not {"position_embeddings", "attention_mask"} <= set(params) or cache_kwarg(layer) is None:
            return (f"{type(layer).__name__}.forward does not take position_embeddings / attention_mask / "
                    f"a cache ({' or '.join(CACHE_NAMES)})")
    if hf.training:
        return "the model is in training mode (call .eval())"
    devices = {p.device for p in hf.parameters()}
    if len(devices) != 1 or any(hasattr(m, "_hf_hook") for m in hf.modules()):
        return "the model is dispatched over several devices (device_map); the fast path runs on one device"
    if next(iter(devices)).type == "meta":
        return "the model has no weights (meta device)"
    return None


class StaticState:
    """Preallocated decode state for `batch` rows and `max_len` positions, and the cache
    interface the blocks call during a one-token step (duck-typed on transformers' `Cache`:
    `update` for attention, `get_conv_state` / `get_recurrent_state` /
    `update_recurrent_state` / `is_recording_past` for Gated DeltaNet)."""

    def __init__(self, layout: tuple, batch: int, max_len: int, device: torch.device):
        """`layout`: `StaticState.layout(...)`, the buffers to allocate."""
        self.layout, self.max_len = layout, max_len
        bufs: dict[str, dict[int, Tensor]] = {"k": {}, "v": {}, "conv": {}, "rec": {}}
        for kind, i, shape, dtype in layout:
            bufs[kind][i] = torch.zeros(shape, dtype=dtype, device=device)
        self.k, self.v, self.conv, self.rec = bufs["k"], bufs["v"], bufs["conv"], bufs["rec"]
        self.mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)

    @staticmethod
    def layout(prefill_cache: Any, types: Sequence[str], max_len: int) -> tuple:
        """(kind, block, shape, dtype) of every buffer the state for this prefill's cache
        needs: keys and values ("k", "v") of `max_len` positions per attention block, conv
        and recurrent state ("conv", "rec") per Gated DeltaNet block. Nothing is allocated."""
        out = []
        for i, t in enumerate(types):
            if t == SOFTMAX_ATTENTION:
                for kind, x in zip(("k", "v"), _kv(prefill_cache, i)):
                    out.append((kind, i, (x.shape[0], x.shape[1], max_len, x.shape[3]), x.dtype))
            else:
                for kind, x in (("conv", prefill_cache.get_conv_state(i)), ("rec", prefill_cache.get_recurrent_state(i))):
                    out.append((kind, i, tuple(x.shape), x.dtype))
        return tuple(out)

    @staticmethod
    def nbytes(layout: tuple) -> int:
        return sum(torch.Size(shape).numel() * dtype.itemsize for _k, _i, shape, dtype in layout)

    @torch.no_grad()
    def load(self, prefill_cache: Any, mask: Tensor) -> None:
        """Copy a prefill's cache ([batch, T0] mask) into the buffers; the next step writes slot T0."""
        T0 = mask.shape[1]
        if T0 >= self.max_len:
            raise ValueError(f"prefill of {T0} positions does not fit a decode buffer of {self.max_len}")
        for i in self.k:
            k, v = _kv(prefill_cache, i)
            # zero first: slots past the prefill are masked, but must hold finite numbers
            self.k[i].zero_()[:, :, :T0].copy_(k)
            self.v[i].zero_()[:, :, :T0].copy_(v)
        for i in self.conv:
            self.conv[i].copy_(prefill_cache.get_conv_state(i))
            self.rec[i].copy_(prefill_cache.get_recurrent_state(i))
        self.mask.zero_()[:, :T0].copy_(mask.bool())
        self.slot.fill_(T0)

    # ---- the cache interface the blocks call
    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        self.k[layer_idx].index_copy_(2, self.slot, key_states.to(self.k[layer_idx].dtype))
        self.v[layer_idx].index_copy_(2, self.slot, value_states.to(self.v[layer_idx].dtype))
        return self.k[layer_idx], self.v[layer_idx]

    def get_conv_state(self, layer_idx: int, state_idx: int = 0) -> Tensor:
        return self.conv[layer_idx]

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0) -> Tensor:
        return self.rec[layer_idx]

    def is_recording_past(self, layer_idx: int) -> bool:
        return False

    def update_recurrent_state(self, recurrent_states: Tensor, layer_idx: int, state_idx: int = 0, **kwargs) -> Tensor:
        self.rec[layer_idx].copy_(recurrent_states)
        return self.rec[layer_idx]

    def update_conv_state(self, *args, **kwargs):
        raise RuntimeError("the static decode state takes one token per step; a multi-token forward reached it")


def _on_device(edit: Any, device: torch.device) -> Any:
    """`edit` with its tensor fields on `device` (a shallow copy: no __post_init__ rerun, so
    the values are bit-identical), or `edit` itself when nothing moves."""
    try:
        moved = {k: v.to(device) for k, v in vars(edit).items() if isinstance(v, Tensor) and v.device != device}
    except TypeError:  # no __dict__
        return edit
    if not moved:
        return edit
    out = copy.copy(edit)
    for k, v in moved.items():
        object.__setattr__(out, k, v)
    return out


def _kv(cache: Any, i: int) -> tuple[Tensor, Tensor]:
    layer = cache.layers[i]
    return layer.keys, layer.values


@dataclass(frozen=True, eq=False)  # identity hash: edits hold tensors, which have no truth value
class _Layout:
    """What a captured graph depends on: which blocks add a bias row, which run callables."""

    bias_layers: tuple[int, ...]
    callables: tuple[tuple[int, tuple], ...]

    def same(self, other: "_Layout") -> bool:
        return self.bias_layers == other.bias_layers and len(self.callables) == len(other.callables) and all(
            a[0] == b[0] and len(a[1]) == len(b[1]) and all(x is y for x, y in zip(a[1], b[1]))
            for a, b in zip(self.callables, other.callables)
        )


def split_edits(edits: Sequence[Any], n_layers: int) -> tuple[dict[int, list[AddVector]], dict[int, list]]:
    """Edits active while decoding (phase "generated"), by block: blocks whose edits are all
    `AddVector`s are fused into one bias row; any other block keeps its edits in order."""
    by_layer: dict[int, list] = {}
    for e in edits:
        if isinstance(e, AddVector) and e.where == "prompt":
            continue  # acts on the prompt only
        by_layer.setdefault(int(e.layer), []).append(e)
    adds = {l: es for l, es in by_layer.items() if all(isinstance(e, AddVector) for e in es)}
    other = {l: es for l, es in by_layer.items() if l not in adds}
    return adds, other


class Decoder:
    """One decode step at a time for a fixed batch size and buffer length on `hf` (see the
    module docstring). `prepare(cache, mask, edits)` after each prefill, then `step(x, pos)`
    per token."""

    def __init__(self, hf: nn.Module, batch: int, max_len: int, graphs: bool | None = None):
        why = unsupported_reason(hf)
        if why is not None:
            raise ValueError(f"fast decoding is not available for this model: {why}")
        self.hf = hf
        self.text = _text_model(hf)
        self.layers = decoder_layers(hf)
        self.norm = final_norm(hf)
        cfg = text_config(hf.config)
        self.types = list(getattr(cfg, "layer_types", None) or [SOFTMAX_ATTENTION] * len(self.layers))[: len(self.layers)]
        self.impl = getattr(cfg, "_attn_implementation", None) or "eager"
        emb = hf.get_input_embeddings().weight
        self.device, self.dtype, self.d = emb.device, emb.dtype, emb.shape[1]
        self.batch, self.max_len = batch, max_len
        self.graphs = (self.device.type == "cuda") if graphs is None else bool(graphs)
        if self.graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; this model is on {self.device}")
        self.state: StaticState | None = None
        self._cache_kw = {}  # filled by prepare: {the blocks' cache keyword: the static state}
        self.x = torch.zeros(batch, self.d, dtype=self.dtype, device=self.device)
        self.pos = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.out = torch.zeros(batch, self.d, dtype=self.dtype, device=self.device)
        self.bias = torch.zeros(len(self.layers), self.d, dtype=self.dtype, device=self.device)
        self.layout = _Layout((), ())
        self._graphs: dict[Any, Any] = {}  # layout -> (CUDAGraph, the edits it captured)
        self._callables: dict[int, list] = {}
        rope = getattr(self.text.rotary_emb, "rope_type", "default")
        # dynamic RoPE variants read the largest position on the host every step
        self.graph_error: str | None = f"rope type {rope!r} syncs with the host every step" if any(
            k in str(rope) for k in ("dynamic", "longrope")
        ) else None
        self.steps_replayed = 0
        self._slot = 0  # host copy of state.slot (no device sync per step)
        self.steps_eager = 0

    # ------------------------------------------------------------------ setup per call

    @torch.no_grad()
    def prepare(self, prefill_cache: Any, mask: Tensor, edits: Sequence[Any] = ()) -> None:
        """Take over after a prefill: `prefill_cache` (the transformers cache the eager
        forward returned), `mask` [batch, T0] its attention mask, `edits` those active."""
        if mask.shape[0] != self.batch:
            raise ValueError(f"decoder was built for batch {self.batch}, got a prefill of batch {mask.shape[0]}")
        want = StaticState.layout(prefill_cache, self.types, self.max_len)
        if self.state is None or self.state.layout != want:
            from .memory import check_fits

            self.state = None
            check_fits(f"the fast decode state for {self.batch} rows x {self.max_len} positions", StaticState.nbytes(want), self.device,
                       "generate with fast=False, fewer rows or fewer new tokens")  # fmt: skip
            self.state = StaticState(want, self.batch, self.max_len, self.device)
            self._cache_kw = with_cache(self.layers[0], self.state)
            self._graphs.clear()  # captured graphs point at the old buffers
        adds, other = split_edits(edits, len(self.layers))
        self.bias.zero_()
        for l, es in adds.items():
            row = self.bias[l]
            for e in es:
                # the eager hook computes hidden + scale * vector in the hidden's dtype
                row += float(e.scale) * e.vector.to(device=self.device, dtype=self.dtype)
        self.layout = _Layout(tuple(sorted(adds)), tuple((l, tuple(es)) for l, es in sorted(other.items())))
        # edits run inside the step with their tensors already on the device (a host-to-device
        # copy cannot be captured); a captured graph keeps the copies it was captured with
        self._callables = {l: [_on_device(e, self.device) for e in es] for l, es in other.items()}
        if self.graphs and self.graph_error is None and self._graph_for(self.layout) is None:
            self._capture()
        self.state.load(prefill_cache, mask)
        self._slot = mask.shape[1]

    # ------------------------------------------------------------------ the step

    def _masks(self) -> Tensor:
        m = self.state.mask[:, None, None, :]
        if self.impl == "eager":  # additive mask, as transformers builds it for eager attention
            return torch.zeros(m.shape, dtype=self.dtype, device=self.device).masked_fill(~m, torch.finfo(self.dtype).min)
        return m

    def _run(self) -> None:
        """One decode step from the buffers `x` / `pos` into `out` (capturable: no
        allocation that outlives it, no host sync)."""
        st = self.state
        st.mask.index_fill_(1, st.slot, True)
        mask = self._masks()
        h = self.x[:, None]
        pos = self.pos[:, None]
        pe = self.text.rotary_emb(h, pos)
        bias_layers = set(self.layout.bias_layers)
        callables = self._callables
        for i, layer in enumerate(self.layers):
            out = layer(
                h,
                position_embeddings=pe,
                attention_mask=mask if self.types[i] == SOFTMAX_ATTENTION else None,
                position_ids=pos,
                use_cache=True,
                **self._cache_kw,
            )
            h = out[0] if isinstance(out, tuple) else out
            if i in bias_layers:
                h = h + self.bias[i]
            for e in callables.get(i, ()):
                h = e(h, "generated")
        self.out.copy_(self.norm(h)[:, 0])
        st.slot.add_(1)

    def _graph_for(self, layout: _Layout):
        for key, (g, _) in self._graphs.items():
            if key.same(layout):
                return g
        return None

    def _capture(self) -> None:
        """Warm up and capture `_run` for the current layout. The state it runs on is
        overwritten by `load` afterwards, so the captured steps leave nothing behind."""
        if self._hooked():  # a hook would run once, at capture, and its effect replay forever
            return  # steps run eagerly; a later prepare without hooks captures
        dev = self.device
        try:
            self.state.slot.zero_()
            s = torch.cuda.Stream(dev)
            s.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(s):
                for _ in range(2):  # allocator, cuBLAS workspaces, Triton autotuning
                    self._run()
            torch.cuda.current_stream(dev).wait_stream(s)
            g = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA work (a UI request) does not break the capture
            with torch.cuda.graph(g, capture_error_mode="thread_local"):
                self._run()
        except Exception as e:  # a step that cannot be captured runs eagerly instead
            self.graph_error = f"{type(e).__name__}: {e}"
            import warnings

            warnings.warn(f"CUDA graph capture failed, decoding without graphs: {self.graph_error}", stacklevel=3)
            return
        if len(self._graphs) >= 4:
            self._graphs.pop(next(iter(self._graphs)))
        self._graphs[self.layout] = (g, self._callables)

    def _hooked(self) -> bool:
        """Whether any forward hook could fire inside the step (a graph cannot run it)."""
        from torch.nn.modules import module as M

        if M._global_forward_hooks or M._global_forward_pre_hooks:
            return True
        return any(m._forward_hooks or m._forward_pre_hooks for m in self._modules_in_step())

    def _modules_in_step(self) -> list[nn.Module]:
        mods = getattr(self, "_step_modules", None)
        if mods is None:
            mods = [m for layer in self.layers for m in layer.modules()] + [self.text.rotary_emb, self.norm]
            self._step_modules = mods
        return mods

    @torch.no_grad()
    def step(self, x: Tensor, pos: Tensor) -> Tensor:
        """Feed input embeddings `x` [batch, d_model] at positions `pos` [batch]; returns the
        last hidden state after the final norm [batch, d_model] (a new tensor)."""
        if self.state is None:
            raise RuntimeError("Decoder.step before prepare()")
        if self._slot >= self.max_len:
            raise ValueError(f"decode buffer of {self.max_len} positions is full")
        self._slot += 1
        self.x.copy_(x)
        self.pos.copy_(pos)
        g = self._graph_for(self.layout) if self.graphs else None
        if g is not None and not self._hooked():
            g.replay()
            self.steps_replayed += 1
        else:
            self._run()
            self.steps_eager += 1
        return self.out.clone()


# ---------------------------------------------------------------------- one decoder per model

_DECODERS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def bucket(n: int) -> int:
    return -(-int(n) // BUCKET) * BUCKET


def decoder_for(hf: nn.Module, batch: int, max_len: int, graphs: bool | None = None) -> Decoder:
    """The decoder for `hf` at this batch size and (bucketed) length, built on first use and
    kept (with its captured graphs) for later calls; at most two per model, the oldest is
    dropped, so buffers do not pile up across batch sizes."""
    per = _DECODERS.setdefault(hf, {})
    key = (int(batch), bucket(max_len), graphs)
    dec = per.get(key)
    if dec is None:
        while len(per) >= 2:
            per.pop(next(iter(per)))
        dec = per[key] = Decoder(hf, int(batch), bucket(max_len), graphs)
    else:
        per[key] = per.pop(key)  # most recent last
    return dec


def release(hf: nn.Module) -> None:
    """Drop the decoders (buffers and graphs) kept for `hf`."""
    _DECODERS.pop(hf, None)

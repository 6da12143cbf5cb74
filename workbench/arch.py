"""Architecture facts about a loaded causal LM, read off the transformers module tree.

`ArchInfo` is what every other part of the workbench asks instead of poking at
`model.config`: how many decoder blocks there are, how wide the residual stream is, which
blocks have softmax attention (Qwen3.5 interleaves Gated DeltaNet blocks that have none),
and how large token embeddings typically are (the scale used for random prefixes and for
comparing latent vectors to real tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

SOFTMAX_ATTENTION = "full_attention"
LINEAR_ATTENTION = "linear_attention"


@dataclass(frozen=True)
class ArchInfo:
    """Shape and layout of a decoder-only model.

    n_layers: number of decoder blocks; layer `i` means the output of block `i` (0-based).
    d_model: residual-stream width.
    layer_types: one entry per block, `"full_attention"` (softmax attention, has attention
        weights) or `"linear_attention"` (Qwen3.5 Gated DeltaNet: a recurrent state, no
        attention matrix) or whatever else the config names.
    family: `config.model_type` of the text model (`"llama"`, `"qwen3_5_text"`, ...).
    embed_rms: root-mean-square of the entries of the token-embedding rows the model
        uses, i.e. the typical per-coordinate size of an input embedding; `embed_norm` the
        mean L2 norm of such a row. Rows that are exactly zero are not tokens the model
        uses (a model trained over a compact vocabulary, such as the micro model, holds
        all but ~300 of its 248,320 rows at zero) and are left out: averaged over every
        row, a latent's |v|/|e| would be inflated ~800x there and a random prefix drawn
        ~29x smaller than the real token embeddings. `embed_rows` counts the rows used
        (= vocabulary rows when none is zero).
    vocab_size, n_heads, n_kv_heads, head_dim, max_positions: from the config.
    """

    n_layers: int
    d_model: int
    layer_types: tuple[str, ...]
    family: str
    embed_rms: float
    embed_norm: float
    vocab_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_positions: int
    tied_embeddings: bool
    embed_rows: int = 0

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """Blocks with softmax attention (the only ones with attention weights)."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == SOFTMAX_ATTENTION)

    @property
    def is_hybrid(self) -> bool:
        return any(t != SOFTMAX_ATTENTION for t in self.layer_types)

    def layer_at(self, depth: float) -> int:
        """Map a relative depth in [0, 1] to a block index: `round(depth * n_layers)`,
        clamped to the last block. 0.75 -> 48 on a 64-layer model (the Qwen3.5-27B
        steering reference point)."""
        from .errors import check_float

        depth = check_float(depth, "depth", low=0.0, high=1.0)
        return min(int(round(float(depth) * self.n_layers)), self.n_layers - 1)

    def check_layer(self, layer: int) -> int:
        """Return `layer` as a valid non-negative index (negative counts from the end) or
        raise a ValueError naming the valid range."""
        from .errors import InputError

        if isinstance(layer, (bool, str, bytes)) or layer is None:  # True is not layer 1, "3" not layer 3
            raise InputError(f"layer must be an integer in [0, {self.n_layers - 1}], got {layer!r}")
        if not isinstance(layer, int):
            try:
                as_int = int(layer)
            except (TypeError, ValueError, RuntimeError, OverflowError):
                raise InputError(
                    f"layer must be an integer in [0, {self.n_layers - 1}], got {layer!r}"
                ) from None
            if getattr(layer, "dtype", None) is not None and str(getattr(layer, "dtype")).startswith(("torch.bool", "bool")):
                raise InputError(f"layer must be an integer in [0, {self.n_layers - 1}], got {layer!r}")
            if as_int != layer:
                raise InputError(f"layer must be an integer in [0, {self.n_layers - 1}], got {layer!r}")
            layer = as_int
        idx = layer + self.n_layers if layer < 0 else layer
        if not 0 <= idx < self.n_layers:
            raise InputError(
                f"layer {layer} is out of range: this model has {self.n_layers} layers, "
                f"valid layers are 0..{self.n_layers - 1} (or -{self.n_layers}..-1)"
            )
        return idx

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["attention_layers"] = list(self.attention_layers)
        return d


def text_config(config):
    """The text sub-config of a (possibly multimodal) transformers config."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks of a transformers causal LM (`model.model.layers`
    for Llama / Qwen3.5; `model.model.language_model.layers` for multimodal wrappers)."""
    inner = getattr(model, "model", None)
    for candidate in (inner, getattr(inner, "language_model", None), getattr(model, "transformer", None)):
        layers = getattr(candidate, "layers", None) if candidate is not None else None
        if isinstance(layers, nn.ModuleList):
            return layers
        h = getattr(candidate, "h", None) if candidate is not None else None
        if isinstance(h, nn.ModuleList):
            return h
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def final_norm(model: nn.Module) -> nn.Module:
    """The final norm applied before the unembedding (the model's own module: Qwen3.5's
    RMSNorm is zero-centred, so it must never be re-implemented)."""
    inner = getattr(model, "model", None)
    for candidate in (inner, getattr(inner, "language_model", None)):
        norm = getattr(candidate, "norm", None) if candidate is not None else None
        if isinstance(norm, nn.Module):
            return norm
    raise ValueError(f"cannot find the final norm of {type(model).__name__}")


@torch.no_grad()
def arch_info(model: nn.Module) -> ArchInfo:
    cfg = text_config(model.config)
    n_layers = int(cfg.num_hidden_layers)
    layer_types = getattr(cfg, "layer_types", None) or [SOFTMAX_ATTENTION] * n_layers
    emb = model.get_input_embeddings().weight
    embed_rms, embed_norm, embed_rows = embedding_scale(emb)
    n_heads = int(getattr(cfg, "num_attention_heads", 0) or 0)
    d_model = int(cfg.hidden_size)
    head_dim = int(getattr(cfg, "head_dim", None) or (d_model // max(n_heads, 1)))
    return ArchInfo(
        n_layers=n_layers,
        d_model=d_model,
        layer_types=tuple(layer_types[:n_layers]),
        family=str(cfg.model_type),
        embed_rms=embed_rms,
        embed_norm=embed_norm,
        vocab_size=int(cfg.vocab_size),
        n_heads=n_heads,
        n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or n_heads),
        head_dim=head_dim,
        max_positions=int(getattr(cfg, "max_position_embeddings", 0) or 0),
        tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        embed_rows=embed_rows,
    )


@torch.no_grad()
def embedding_scale(weight: torch.Tensor, chunk_rows: int = 16384) -> tuple[float, float, int]:
    """(RMS of the entries, mean row L2 norm, rows counted) over the rows of an embedding
    matrix that are not exactly zero; NaN for meta weights or a matrix of zeros. Read in
    float32 chunks of `chunk_rows` rows, so a 27B model's matrix is never copied whole."""
    if weight.device.type == "meta":
        return float("nan"), float("nan"), 0
    sumsq = norms = 0.0
    rows = 0
    for start in range(0, weight.shape[0], chunk_rows):
        c = weight[start : start + chunk_rows].detach().float()
        c = c[(c != 0).any(-1)]
        rows += c.shape[0]
        sumsq += float(c.pow(2).sum(dtype=torch.float64))
        norms += float(c.norm(dim=-1).sum(dtype=torch.float64))
    if rows == 0:
        return float("nan"), float("nan"), 0
    return (sumsq / (rows * weight.shape[1])) ** 0.5, norms / rows, rows

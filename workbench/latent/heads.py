"""Trained latent-reasoning heads: the modules, and loading + validation of their files.

* `ProjectionModule` (CODI / QThink projection): `Linear -> GELU -> Linear -> LayerNorm`
  on the last hidden state; files `projection_head.pt` (a state dict read with
  `torch.load(weights_only=True)`, never a full unpickle) or the same tensors as
  safetensors, keys `mlp.0.*`, `mlp.2.*`, `mlp.3.*`.
* `LatentHeadModule` (the Qwen3.5-27B latent-reasoning adapter format, an MTP-style block):
  `latent_head.safetensors` with `core.fc.*`, `core.pre_fc_norm_embedding.*`,
  `core.pre_fc_norm_hidden.*`, `core.layer.*` (one full-attention decoder layer of the
  base's own class, with its own KV cache), `core.norm.*`, `to_embed.*`; the token
  embedding is shared with the base model. `adapter_config.json` beside it holds options
  (`think_close_token_id`, `max_internal_tokens`, `chunk_size`, `pairing`).
  Initialisations: `passthrough_latent_head_tensors` / `passthrough_init_` (the training
  start: the head feeds the greedy token's embedding, up to one documented per-token
  scale, so latent mode starts as greedy CoT with hidden tokens) and
  `random_latent_head_tensors` (tests, benchmarks).

Sources: a local file or folder, or the hub forms `owner/repo`, `owner/repo:file`,
`hf://owner/repo/file` (the local hub cache first; then fetched through huggingface_hub,
unless HF_HUB_OFFLINE is set or the hub cannot be reached, which is a clear error at once
instead of after huggingface_hub's retries).
Every mismatch against the base model is listed at once, before any generation starts.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..arch import decoder_layers, final_norm, text_config
from ..compat import with_cache
from ..errors import FileFormatError, InputError, MissingFileError
from ..paths import read_json_object

PROJECTION_FILE = "projection_head.pt"
LATENT_HEAD_FILE = "latent_head.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_HUB_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:.+)?$")


# --------------------------------------------------------------------------- files


def resolve_source(source: str | Path, default_file: str) -> Path:
    """A local file/folder or a hub reference -> a local file path.

    Folder: `<folder>/<default_file>` (or the `.safetensors` / `.pt` sibling). Hub:
    `owner/repo` (default_file in it), `owner/repo:file`, `hf://owner/repo/file`.
    Refusals: MissingFileError (no such file, a folder without the head file, a hub file
    that cannot be fetched or is not cached while offline), InputError (a malformed hub
    reference)."""
    s = str(source)
    if not s.strip():
        raise InputError("no head file given; give a local .safetensors / .pt file or folder, or a hub reference")
    path = Path(s).expanduser()
    if path.exists():
        if path.is_dir():
            stem = Path(default_file).stem
            for cand in (default_file, f"{stem}.safetensors", f"{stem}.pt"):
                if (path / cand).is_file():
                    return path / cand
            raise MissingFileError(f"folder {s!r} has no {default_file} (nor {stem}.safetensors / {stem}.pt)")
        return path
    if s.startswith("hf://"):
        parts = s[len("hf://") :].split("/", 2)
        if len(parts) < 2 or not all(parts[:2]):
            raise InputError(f"hub reference {s!r} must look like hf://owner/repo or hf://owner/repo/file")
        repo, fname = "/".join(parts[:2]), (parts[2] if len(parts) == 3 and parts[2] else default_file)
        return _hub_file(s, repo, fname)
    if _HUB_RE.match(s) and (":" in s or not s.endswith((".pt", ".safetensors", ".bin", ".json"))):
        repo, _, fname = s.partition(":")
        return _hub_file(s, repo, fname or default_file)
    raise MissingFileError(
        f"head file {s!r} not found; give a local .safetensors / .pt file or folder, or a hub reference "
        "(owner/repo, owner/repo:file, hf://owner/repo/file)"
    )


def _hub_offline() -> str | None:
    """Why the hub cannot be reached right now without trying (None: it may be reachable).

    HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set, or the hub's host does not resolve / accept a
    connection within a few seconds (unless a proxy is configured, which is then trusted).
    Without this check huggingface_hub retries a failed connection five times (~24 s)."""
    import os

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"offline mode ({var}={os.environ[var]} is set)"
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return "offline mode (huggingface_hub's HF_HUB_OFFLINE is on)"
        endpoint = getattr(constants, "ENDPOINT", "https://huggingface.co")
    except Exception:  # no huggingface_hub: the download below reports it
        return None
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return None
    import socket
    from urllib.parse import urlparse

    u = urlparse(endpoint)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    if not host:
        return None
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as e:
        return f"this machine is offline: the hub ({host}) cannot be reached ({e})"


def _hub_file(ref: str, repo: str, fname: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise MissingFileError(f"hub reference {ref!r} needs huggingface_hub, which is not installed; pass a local path") from e
    try:  # the local cache first: no network at all
        return Path(hf_hub_download(repo, fname, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or a bad repo id): try the hub below
        pass
    why = _hub_offline()
    if why is not None:
        raise MissingFileError(
            f"could not fetch {fname!r} from the hub repo {repo!r} (reference {ref!r}): {why}, and the file is not in "
            "the local hub cache. Download the file on a machine with network access and pass its local path."
        )
    try:
        return Path(hf_hub_download(repo, fname))
    except Exception as e:  # missing repo/file, network errors: all one message
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise MissingFileError(
            f"could not fetch {fname!r} from the hub repo {repo!r} (reference {ref!r}): {type(e).__name__}: {first}. "
            "If this machine is offline, download the file elsewhere and pass its local path."
        ) from e


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Tensors of a `.safetensors` file or a legacy `.pt` state dict (weights_only: never a
    full unpickle). A truncated, corrupt or foreign file is a FileFormatError naming it."""
    from .._fileformat import check_file, safetensors_header

    path = Path(check_file(path, "head"))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        safetensors_header(str(path), "head")  # empty / truncated / pickle / GGUF: said so, by name
        try:
            return dict(load_file(str(path)))
        except Exception as e:
            raise FileFormatError(f"{path}: the safetensors head file is corrupt ({type(e).__name__}: {e})") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise FileFormatError(
            f"{path} could not be read as a weights-only torch state dict ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0]}); full unpickling is never done"
        ) from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise FileFormatError(f"{path} does not hold a state dict of tensors (a dict of name -> tensor)")
    return dict(obj)


def read_adapter_config(weights: Path) -> dict:
    """`adapter_config.json` beside `weights` ({} when there is none); malformed JSON or a
    known option of the wrong type is a FileFormatError naming the file and the field."""
    cfg_path = weights.parent / ADAPTER_CONFIG
    if not cfg_path.is_file():
        return {}
    what = f"{cfg_path} (beside {weights.name})"
    try:
        cfg = read_json_object(cfg_path, what)
    except FileFormatError:
        raise
    except ValueError as e:
        raise FileFormatError(str(e)) from None
    for key, check, valid in _CONFIG_CHECKS:
        if key in cfg and not check(cfg[key]):
            raise FileFormatError(f"{what}: field {key!r} must be {valid}, got {cfg[key]!r}")
    return cfg


def _is_count(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


_CONFIG_CHECKS = (
    ("think_close_token_id", lambda v: v is None or _is_count(v, 0), "a token id (an integer >= 0) or null"),
    ("max_internal_tokens", lambda v: _is_count(v, 1), "a positive integer"),
    ("chunk_size", lambda v: _is_count(v, 1), "a positive integer"),
    ("pairing", lambda v: v in ("next", "same"), "'next' or 'same'"),
)


def check_state(tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...]], what: str, hints: list[str] = ()) -> None:
    """Raise one ValueError listing every missing / unexpected / mis-shaped tensor and NaNs."""
    problems = list(hints)
    for k in sorted(set(expected) - set(tensors)):
        problems.append(f"missing tensor {k} (expected shape {list(expected[k])})")
    for k in sorted(set(tensors) - set(expected)):
        problems.append(f"unexpected tensor {k} (shape {list(tensors[k].shape)})")
    for k in sorted(set(tensors) & set(expected)):
        if tuple(tensors[k].shape) != tuple(expected[k]):
            problems.append(f"tensor {k} has shape {list(tensors[k].shape)}, expected {list(expected[k])}")
        elif tensors[k].is_floating_point() and not torch.isfinite(tensors[k]).all():
            problems.append(f"tensor {k} contains NaN/inf")
    if problems:
        raise ValueError(f"{what} does not match the base model ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems))


# --------------------------------------------------------------------------- projection head


class ProjectionModule(nn.Module):
    """`mlp = Sequential(Linear(d, hidden), GELU(), Linear(hidden, d), LayerNorm(d))`."""

    def __init__(self, d_model: int, hidden: int, eps: float = 1e-5):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model), nn.LayerNorm(d_model, eps=eps))

    def forward(self, h: Tensor) -> Tensor:
        return self.mlp(h)


def projection_from_tensors(tensors: dict[str, Tensor], d_model: int, what: str = "projection head") -> ProjectionModule:
    w0 = tensors.get("mlp.0.weight")
    hidden = int(w0.shape[0]) if w0 is not None and w0.ndim == 2 else d_model
    hints = []
    if w0 is not None and w0.ndim == 2 and w0.shape[1] != d_model:
        hints.append(f"head d_model {w0.shape[1]} (mlp.0.weight) != base d_model {d_model}")
    mod = ProjectionModule(d_model, hidden)
    expected = {k: tuple(v.shape) for k, v in mod.state_dict().items()}
    check_state(tensors, expected, what, hints)
    mod.load_state_dict({k: v.float() for k, v in tensors.items()})
    return mod.eval().requires_grad_(False)


# --------------------------------------------------------------------------- latent head


def head_config(hf: nn.Module, intermediate_size: int | None = None):
    """The base text config reduced to one full-attention layer (the head's layer)."""
    cfg = copy.deepcopy(text_config(hf.config))
    cfg.num_hidden_layers = 1
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = ["full_attention"]
    if intermediate_size is not None:
        cfg.intermediate_size = int(intermediate_size)
    impl = getattr(text_config(hf.config), "_attn_implementation", None) or "sdpa"
    cfg._attn_implementation = impl if impl in ("eager", "sdpa") else "sdpa"
    return cfg


def _attention_layer_class(hf: nn.Module) -> type:
    layers = decoder_layers(hf)
    for layer in layers:
        if getattr(layer, "self_attn", None) is not None:
            return type(layer)
    raise ValueError(f"{type(hf).__name__} has no softmax-attention decoder layer to build a latent head from")


class LatentHeadModule(nn.Module):
    """`x = fc(cat(norm_e(embed(token)), norm_h(h))); y = norm(layer(x)); out = to_embed(y)`.

    `layer` is one full-attention decoder layer of the base's own class; it attends over the
    head's own cache (`step(..., cache=...)`, a transformers `DynamicCache`) with the base's
    rotary embedding. Norms are the base's own RMSNorm class (zero-centred for Qwen3.5)."""

    def __init__(self, hf: nn.Module, intermediate_size: int | None = None, fc_bias: bool = False, to_embed_bias: bool = False):
        super().__init__()
        cfg = head_config(hf, intermediate_size)
        d = int(cfg.hidden_size)
        norm_cls = type(final_norm(hf))
        eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
        self.config = cfg
        self.core = nn.Module()
        self.core.fc = nn.Linear(2 * d, d, bias=fc_bias)
        self.core.pre_fc_norm_embedding = norm_cls(d, eps=eps)
        self.core.pre_fc_norm_hidden = norm_cls(d, eps=eps)
        self.core.layer = _attention_layer_class(hf)(cfg, 0)
        self.core.norm = norm_cls(d, eps=eps)
        self.to_embed = nn.Linear(d, d, bias=to_embed_bias)

    def fuse(self, tok_embeds: Tensor, hidden: Tensor) -> Tensor:
        """[..., d] token embeddings and hidden states -> the layer input [..., d]."""
        c = self.core
        return c.fc(torch.cat([c.pre_fc_norm_embedding(tok_embeds), c.pre_fc_norm_hidden(hidden)], dim=-1))

    def forward(self, x: Tensor, position_embeddings, attention_mask: Tensor, position_ids: Tensor, cache) -> Tensor:
        """x [b, t, d] -> next latent inputs [b, t, d]; appends t entries to `cache`."""
        out = self.core.layer(
            x, position_embeddings=position_embeddings, attention_mask=attention_mask, position_ids=position_ids,
            **with_cache(self.core.layer, cache),
        )
        if isinstance(out, tuple):
            out = out[0]
        return self.to_embed(self.core.norm(out))


def latent_head_from_tensors(hf: nn.Module, tensors: dict[str, Tensor], what: str = "latent head") -> LatentHeadModule:
    """Build the head for base `hf`, validate every tensor name and shape, and load it."""
    d = int(text_config(hf.config).hidden_size)
    hints = []
    fc = tensors.get("core.fc.weight")
    if fc is not None and fc.ndim == 2 and (fc.shape[0] != d or fc.shape[1] != 2 * d):
        hints.append(f"head d_model {fc.shape[0]} (core.fc.weight {list(fc.shape)}) != base d_model {d} (expected [{d}, {2 * d}])")
    gate = tensors.get("core.layer.mlp.gate_proj.weight")
    inter = int(gate.shape[0]) if gate is not None and gate.ndim == 2 else None
    with torch.device("meta"):
        mod = LatentHeadModule(hf, inter, fc_bias="core.fc.bias" in tensors, to_embed_bias="to_embed.bias" in tensors)
    expected = {k: tuple(v.shape) for k, v in mod.state_dict().items()}
    check_state(tensors, expected, what, hints)
    p = next(hf.parameters())
    mod.load_state_dict({k: v.to(device=p.device, dtype=p.dtype) for k, v in tensors.items()}, assign=True)
    leftover = [n for n, t in list(mod.named_parameters()) + list(mod.named_buffers()) if t.device.type == "meta"]
    if leftover:
        raise ValueError(f"{what}: tensors left uninitialised after loading: {leftover}")
    return mod.eval().requires_grad_(False)


def random_latent_head_tensors(hf: nn.Module, seed: int = 0, scale: float = 0.02, intermediate_size: int | None = None) -> dict[str, Tensor]:
    """Random-initialised latent-head tensors for `hf` (tests, benchmarks, demos)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mod = LatentHeadModule(hf, intermediate_size)
        out = {}
        for k, v in mod.state_dict().items():
            if "norm" in k and k.endswith("weight"):
                # zero-centred norms (Qwen3.5) start at 0, ordinary RMSNorm at 1: keep the init
                out[k] = v.detach().clone().float()
            else:
                out[k] = (torch.randn(v.shape) * scale).float()
    return out


def _unit_gain_(norm: nn.Module) -> None:
    """Set an RMSNorm's weight so that it multiplies by exactly 1: weight 0 for a
    zero-centred `x * (1 + w)` norm (Qwen3.5), weight 1 for `x * w` (Llama). Which one the
    class is is found by running it, not from its name."""
    probe = copy.deepcopy(norm).float().to("cpu")
    x = torch.ones(1, probe.weight.shape[0])
    with torch.no_grad():
        probe.weight.zero_()
        at0 = probe(x)
        probe.weight.fill_(1.0)
        at1 = probe(x)
    if float(at0.abs().max()) == 0:
        value = 1.0  # x * w
    elif torch.allclose(at1, 2 * at0, rtol=1e-5, atol=0):
        value = 0.0  # x * (1 + w)
    else:
        raise ValueError(f"{type(norm).__name__}: neither an x*w nor an x*(1+w) RMSNorm; cannot build a pass-through head")
    with torch.no_grad():
        norm.weight.fill_(value)


_OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "down_proj", "dense_4h_to_h", "c_proj", "fc2", "w2")


def _zero_residual_branches_(layer: nn.Module, hf: nn.Module) -> list[str]:
    """Zero the output projections of the layer's attention and MLP branches (o_proj /
    down_proj and their biases; every expert's and the shared expert's for an MoE MLP), so
    the layer is the identity through its residual connections; then check by running it
    that it is (exactly)."""
    from ..generate import base_model

    zeroed = []
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if any(part in _OUTPUT_PROJECTIONS for part in name.split(".")):
                p.zero_()
                zeroed.append(name)
    if not zeroed:
        raise ValueError(f"{type(layer).__name__}: no output projection (o_proj / down_proj) found to zero")
    p0 = next(layer.parameters())
    rotary = base_model(hf).rotary_emb
    r_dev = next(iter(rotary.buffers())).device
    d = int(text_config(hf.config).hidden_size)
    x = torch.randn(1, 3, d, device=p0.device, dtype=p0.dtype)
    pos = torch.arange(3)[None]
    with torch.no_grad():
        pe = tuple(t.to(device=p0.device, dtype=p0.dtype) for t in rotary(x.to(r_dev), pos.to(r_dev)))
        out = layer(x, position_embeddings=pe, attention_mask=None, position_ids=pos.to(p0.device))
    out = out[0] if isinstance(out, tuple) else out
    if not torch.equal(out, x):
        raise ValueError(f"{type(layer).__name__}: zeroing {zeroed} does not make the layer the identity")
    return zeroed


def embedding_scales(hf: nn.Module, head: LatentHeadModule, rows: Tensor | None = None, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Per used embedding row: rms(e) and r(e), the divisor by which
    `norm(norm_e(e))` (both norms at unit gain) shrinks e, r(e) = rms(e) / rms(norm(norm_e(e)))
    = sqrt(ms(e) (1 + eps) + eps^2) for two RMSNorms of epsilon eps. Used rows: `rows`
    (token ids), default every non-zero row of the input embedding."""
    W = hf.get_input_embeddings().weight
    n_e = copy.deepcopy(head.core.pre_fc_norm_embedding).float().to("cpu")
    n_y = copy.deepcopy(head.core.norm).float().to("cpu")
    idx = torch.arange(W.shape[0]) if rows is None else torch.as_tensor(rows, dtype=torch.long).reshape(-1).cpu()
    rms, r = [], []
    with torch.no_grad():
        for i in range(0, idx.numel(), chunk):
            e = W[idx[i : i + chunk].to(W.device)].detach().float().cpu()
            ms = e.pow(2).mean(-1)
            keep = ms > 0
            e, ms = e[keep], ms[keep]
            y = n_y(n_e(e))
            rms.append(ms.sqrt())
            r.append(ms.sqrt() / y.pow(2).mean(-1).sqrt())
    rms_t, r_t = torch.cat(rms), torch.cat(r)
    if rms_t.numel() == 0:
        raise ValueError("the input embedding has no non-zero row to take a scale from")
    return rms_t, r_t


@torch.no_grad()
def passthrough_init_(head: LatentHeadModule, hf: nn.Module, seed: int = 0, scale: float = 0.02, rows: Tensor | None = None) -> dict:
    """Initialise `head` (in place) as a pass-through of the token embedding: the latent
    loop then starts as greedy chain-of-thought with the tokens hidden (each latent is the
    greedy token's own embedding, up to one per-token scale, below).

    * `pre_fc_norm_embedding`, `pre_fc_norm_hidden`, `norm`: unit gain (weight 0 for
      Qwen3.5's zero-centred `x * (1 + w)` RMSNorm, 1 for `x * w`; found by running the class);
    * `fc = [I | 0]`: the embedding half passes through, the hidden half starts at zero;
    * the layer's output projections (`self_attn.o_proj`, `mlp.down_proj`, biases too) are
      zero, so the layer is the identity through its residuals (checked by running it);
      every other layer weight is N(0, `scale`), so gradients reach the zeroed ones;
    * `to_embed = c * I`, biases 0, with c the mean over the used rows of r(e) (see
      `embedding_scales`; r(e) ~ rms(e)).

    So the fed vector for greedy token t is exactly `e_t * c / r(e_t)`: parallel to e_t
    (cosine 1), with the RMS `c * rms(e_t) / r(e_t)` ~ the mean embedding RMS instead of
    e_t's own. The RMSNorms discard each token's magnitude and nothing after them can
    restore it linearly (to_embed would need every embedding row as an eigenvector with its
    own RMS as eigenvalue), so the construction is exact only when every used row has the
    same RMS; otherwise token t is fed scaled by ~ mean_rms / rms(e_t). Used rows: `rows`
    (token ids), default every non-zero row of the input embedding (padding rows of the
    vocabulary excluded). With `chunk_size` > 1 each greedy token is fed chunk_size times.

    Returns {"scale": c, "rms_min", "rms_max", "rms_mean", "zeroed": [...]}."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        for name, p in head.named_parameters():  # matrices random, biases 0, norm gains as built
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape) * scale)
            elif name.endswith("bias"):
                p.zero_()
        for n in (head.core.pre_fc_norm_embedding, head.core.pre_fc_norm_hidden, head.core.norm):
            _unit_gain_(n)
        d = head.to_embed.weight.shape[0]
        fc = head.core.fc.weight
        fc.zero_()
        fc[:, :d] = torch.eye(d, dtype=fc.dtype, device=fc.device)
        zeroed = _zero_residual_branches_(head.core.layer, hf)
    rms, r = embedding_scales(hf, head, rows)
    c = float(r.mean())
    head.to_embed.weight.copy_(torch.eye(d) * c)
    return {"scale": c, "rms_min": float(rms.min()), "rms_max": float(rms.max()), "rms_mean": float(rms.mean()), "zeroed": zeroed}


def passthrough_latent_head_tensors(
    hf: nn.Module, seed: int = 0, scale: float = 0.02, intermediate_size: int | None = None, rows: Tensor | None = None
) -> dict[str, Tensor]:
    """Latent-head tensors (float32, CPU) initialised as a pass-through of the token
    embedding (`passthrough_init_`): latent mode starts as greedy CoT with hidden tokens."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mod = LatentHeadModule(hf, intermediate_size).float()
    passthrough_init_(mod, hf, seed=seed, scale=scale, rows=rows)
    return {k: v.detach().clone().float().cpu() for k, v in mod.state_dict().items()}


def random_projection_tensors(d_model: int, hidden: int | None = None, seed: int = 0) -> dict[str, Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mod = ProjectionModule(d_model, hidden or 2 * d_model)
    return {k: v.detach().clone() for k, v in mod.state_dict().items()}


@dataclass
class HeadFile:
    """Tensors read from a head file plus the adapter config beside it (validated later
    against a base model)."""

    path: str
    tensors: dict[str, Tensor]
    config: dict = field(default_factory=dict)

    @staticmethod
    def read(source: str | Path, default_file: str) -> "HeadFile":
        path = resolve_source(source, default_file)
        tensors = read_tensors(path)
        cfg = read_adapter_config(path)
        for k in cfg:
            if k not in _KNOWN_CONFIG_KEYS:
                warnings.warn(f"{ADAPTER_CONFIG}: unknown key {k!r} ignored", stacklevel=3)
        return HeadFile(str(path), tensors, cfg)


_KNOWN_CONFIG_KEYS = {
    "think_close_token_id", "max_internal_tokens", "chunk_size", "pairing", "base_model_name_or_path",
    "base_model", "hidden_size", "d_model", "vocab_size", "intermediate_size", "head_type", "format", "version",
    "model_type", "dtype", "torch_dtype",
}  # fmt: skip

"""Optimizers (AdamW, APOLLO-Mini), the learning-rate schedule, and optimizer state as
plain tensors + JSON (so checkpoints are safetensors, never a pickle).

APOLLO-Mini is `apollo_torch.APOLLOAdamW` with, for every 2-D weight matrix of the
trainable set (token embeddings and the output head excepted), rank 1, a random
projection, tensor-wise gradient scaling and scale 128 (the APOLLO paper's "Mini"
setting); every other parameter (norms, biases, embeddings) gets plain AdamW moments in
the same optimizer. Its per-matrix state is then two [1, n] moment vectors plus a
regenerable projection, instead of AdamW's two full-size moments.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import FileFormatError, InputError
from .config import TrainConfig

_NO_PROJECTION = ("embed", "lm_head", "wte", "wpe")


def _apollo_eligible(name: str, p: Tensor) -> bool:
    return p.ndim == 2 and not any(k in name for k in _NO_PROJECTION)


def make_optimizer(named_params: Sequence[tuple[str, nn.Parameter]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` over `named_params` (in this order; the order is part
    of the checkpoint)."""
    named_params = list(named_params)
    if not named_params:
        raise InputError("no trainable parameters: nothing to optimise")
    if cfg.optimizer == "adamw":
        # foreach=False: the per-tensor loop gives the same numbers on every run and after a
        # resume (the foreach kernels do too on CPU, but this keeps the reference simple).
        return torch.optim.AdamW(
            [p for _, p in named_params], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=False
        )
    if cfg.optimizer == "apollo-mini":
        try:
            from apollo_torch import APOLLOAdamW
        except ImportError:  # pragma: no cover - a declared dependency
            raise InputError("optimizer 'apollo-mini' needs the PyPI package apollo-torch (pip install apollo-torch)") from None
        low = [p for n, p in named_params if _apollo_eligible(n, p)]
        rest = [p for n, p in named_params if not _apollo_eligible(n, p)]
        groups: list[dict[str, Any]] = []
        if low:
            groups.append(
                {
                    "params": low,
                    "rank": cfg.apollo_rank,
                    "proj": "random",
                    "scale_type": "tensor",
                    "scale": cfg.apollo_scale,
                    "update_proj_gap": cfg.apollo_update_proj_gap,
                    "proj_type": "std",
                }
            )
        if rest:
            groups.append({"params": rest})
        return APOLLOAdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise InputError(f"unknown optimizer {cfg.optimizer!r}; valid: adamw, apollo-mini")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then the schedule.
    A pure function of the step, so a resumed run needs no scheduler state."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return floor + (cfg.lr - floor) * (1 - t)  # linear


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


# --------------------------------------------------------------------------- state <-> tensors + JSON


def _projector_cls():
    try:
        from apollo_torch.random_projector import GradientProjector

        return GradientProjector
    except ImportError:  # pragma: no cover
        return None


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, meta): the optimizer's state as named tensors (for safetensors) and a JSON-
    able description (param groups, scalars, APOLLO projector settings)."""
    sd = opt.state_dict()
    proj_cls = _projector_cls()
    tensors: dict[str, Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for k, v in st.items():
            key = f"state.{idx}.{k}"
            if isinstance(v, Tensor):
                tensors[key] = v.detach().cpu().contiguous().clone()
                entry[k] = {"tensor": key}
            elif isinstance(v, (bool, int, float, str)) or v is None:
                entry[k] = {"value": v}
            elif proj_cls is not None and isinstance(v, proj_cls):
                info = {a: getattr(v, a) for a in ("rank", "update_proj_gap", "scale", "proj_type", "seed", "svd_count")}
                if v.ortho_matrix is not None:
                    tensors[key + ".ortho_matrix"] = v.ortho_matrix.detach().cpu().contiguous().clone()
                    info["ortho_matrix"] = key + ".ortho_matrix"
                entry[k] = {"projector": info}
            else:
                raise InputError(f"cannot serialise optimizer state {k!r} of type {type(v).__name__}")
        state_meta[str(idx)] = entry
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, {"class": type(opt).__name__, "param_groups": groups, "state": state_meta}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_state`; raises ValueError when the state does not fit `opt`."""
    if meta.get("class") != type(opt).__name__:
        raise InputError(f"the checkpoint's optimizer is {meta.get('class')!r}, this run uses {type(opt).__name__!r}")
    proj_cls = _projector_cls()
    state: dict[int, dict[str, Any]] = {}
    try:
        for idx, entry in meta["state"].items():
            st: dict[str, Any] = {}
            for k, spec in entry.items():
                if "tensor" in spec:
                    st[k] = tensors[spec["tensor"]]
                elif "value" in spec:
                    st[k] = spec["value"]
                elif "projector" in spec:
                    info = dict(spec["projector"])
                    proj = proj_cls(info["rank"], update_proj_gap=info["update_proj_gap"], scale=info["scale"], proj_type=info["proj_type"], seed=info["seed"])
                    proj.svd_count = info.get("svd_count", 0)
                    if "ortho_matrix" in info:
                        proj.ortho_matrix = tensors[info["ortho_matrix"]]
                    st[k] = proj
                else:
                    raise FileFormatError(f"unreadable optimizer state entry {k!r}")
            state[int(idx)] = st
        groups = []
        for g in meta["param_groups"]:
            g = dict(g)
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
            groups.append(g)
        opt.load_state_dict({"state": state, "param_groups": groups})
    except FileFormatError:
        raise
    except (KeyError, TypeError) as e:
        raise FileFormatError(f"optimizer state in the checkpoint is incomplete or malformed ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise InputError(f"optimizer state in the checkpoint does not fit this run: {e}") from None
    # APOLLO keeps plain Python objects in state; move projection matrices to the param's device
    for group in opt.param_groups:
        for p in group["params"]:
            proj = opt.state.get(p, {}).get("projector")
            if proj is not None and getattr(proj, "ortho_matrix", None) is not None:
                proj.ortho_matrix = proj.ortho_matrix.to(p.device)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (moments, scalars, APOLLO projection
    matrices; not the parameters or gradients)."""
    n = 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, Tensor):
                n += v.numel() * v.element_size()
            elif isinstance(getattr(v, "ortho_matrix", None), Tensor):
                n += v.ortho_matrix.numel() * v.ortho_matrix.element_size()
    return n


__all__ = ["make_optimizer", "lr_at", "set_lr", "optimizer_state", "load_optimizer_state", "optimizer_state_bytes"]

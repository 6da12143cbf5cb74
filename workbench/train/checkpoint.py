"""Training checkpoints: safetensors + JSON, written atomically, verified on read.

Layout of `<out_dir>/checkpoint/` (replaced as a whole by one rename, so a crash leaves
the previous complete checkpoint or none, never a half-written one):

    trainable.safetensors   the trainable parameters by name (LoRA adapters or the
                            fine-tuned modules), exactly as in the training model
    state.safetensors       optimizer moments (and APOLLO projections), torch RNG states
    state.json              format tag, step, optimizer structure and scalars, Python and
                            NumPy RNG states, parameter names and shapes, recipe extras
    config.json             the run's `TrainConfig`
    workbench-manifest.json sha256 of every file (a corrupt file is refused on resume)

Nothing here unpickles: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import FileFormatError, InputError
from ..models import verify_manifest, write_manifest
from ..paths import atomic_dir
from .config import CONFIG_FILE, TrainConfig
from .optim import load_optimizer_state, optimizer_state

FORMAT = "workbench-train-checkpoint"
VERSION = 1
CKPT_DIR = "checkpoint"
TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "state.safetensors"
STATE_JSON = "state.json"


# --------------------------------------------------------------------------- RNG


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.clone()
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    v, keys, gauss = meta["python"]
    random.setstate((v, tuple(keys), gauss))
    n = meta["numpy"]
    np.random.set_state((n["kind"], tensors["rng.numpy.keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- write


def save_checkpoint(
    folder: str | Path,
    *,
    step: int,
    named_params: Sequence[tuple[str, nn.Parameter]],
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    extra: dict[str, Any] | None = None,
    fingerprint: list[float] | None = None,
) -> Path:
    """Write the checkpoint for `step` (optimizer steps done) into `folder` atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    trainable = {n: p.detach().cpu().contiguous().clone() for n, p in named_params}
    opt_tensors, opt_meta = optimizer_state(opt)
    rng_tensors, rng_meta = rng_state()
    state = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "params": [[n, list(p.shape), str(p.dtype).removeprefix("torch.")] for n, p in named_params],
        "optimizer": opt_meta,
        "rng": rng_meta,
        "extra": extra or {},
        "base_fingerprint": fingerprint,
    }
    with atomic_dir(folder) as tmp:
        save_file(trainable, str(tmp / TRAINABLE_FILE), metadata={"format": FORMAT, "step": str(step)})
        save_file({**opt_tensors, **rng_tensors}, str(tmp / STATE_FILE), metadata={"format": FORMAT, "step": str(step)})
        (tmp / STATE_JSON).write_text(json.dumps(state) + "\n")
        (tmp / CONFIG_FILE).write_text(cfg.to_json())
        write_manifest(tmp, {"format": FORMAT})
    return folder


# --------------------------------------------------------------------------- read


@dataclass
class Checkpoint:
    """A checkpoint read into memory. trainable: name -> tensor; state_tensors: optimizer
    and RNG tensors; state: the parsed state.json; config: the parsed config.json."""

    folder: Path
    step: int
    trainable: dict[str, Tensor]
    state_tensors: dict[str, Tensor]
    state: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def extra(self) -> dict[str, Any]:
        return self.state.get("extra", {})


def read_checkpoint(folder: str | Path) -> Checkpoint:
    """Read and verify a checkpoint folder; ValueError naming the problem when it is not a
    complete workbench training checkpoint (missing, foreign, corrupt)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"no checkpoint at {str(folder)!r} to resume from; run without resume (--resume) to start the run")
    sj = folder / STATE_JSON
    if not sj.is_file():
        raise FileFormatError(f"{str(folder)!r} is not a workbench training checkpoint (no {STATE_JSON})")
    try:
        state = json.loads(sj.read_text())
    except (ValueError, UnicodeDecodeError):
        raise FileFormatError(f"checkpoint {str(folder)!r} is corrupt: {STATE_JSON} is not valid JSON") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FileFormatError(f"{str(folder)!r} is not a workbench training checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    if state.get("version") != VERSION:
        raise FileFormatError(f"checkpoint {str(folder)!r} has format version {state.get('version')!r}; this workbench reads version {VERSION}")
    problem = verify_manifest(folder, full=True)
    if problem is not None:
        raise FileFormatError(f"checkpoint {str(folder)!r} is corrupt ({problem}); delete it or restart without resume")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or not isinstance(state.get("params"), list):
        raise FileFormatError(f"checkpoint {str(folder)!r} is corrupt: {STATE_JSON} has no valid step / params")
    try:
        trainable = load_file(str(folder / TRAINABLE_FILE))
        tensors = load_file(str(folder / STATE_FILE))
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (SafetensorError, ValueError) as e:
        raise FileFormatError(f"checkpoint {str(folder)!r} is corrupt: {e}") from None
    except OSError as e:
        if e.errno is not None and not isinstance(e, FileNotFoundError):
            raise  # the file system's refusal (permission, I/O), reported as it is
        raise FileFormatError(f"checkpoint {str(folder)!r} is incomplete: {e}") from None
    if not isinstance(config, dict):
        raise FileFormatError(f"checkpoint {str(folder)!r} is corrupt: {CONFIG_FILE} is not a JSON object")
    return Checkpoint(folder, step, trainable, tensors, state, config)


def restore(ck: Checkpoint, named_params: Sequence[tuple[str, nn.Parameter]], opt: torch.optim.Optimizer) -> None:
    """Copy a checkpoint into the live parameters, optimizer and RNGs. Everything is
    checked before anything is changed: a checkpoint of another model or trainable set
    raises ValueError and leaves the run untouched."""
    want = {n: (list(p.shape), str(p.dtype).removeprefix("torch.")) for n, p in named_params}
    have = {n: (list(s), d) for n, s, d in ck.state["params"]}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    if missing or unexpected:
        raise InputError(
            f"checkpoint {str(ck.folder)!r} was written for a different model or trainable set: "
            f"{len(missing)} parameter(s) missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    wrong = [n for n in want if want[n] != have[n] or tuple(ck.trainable[n].shape) != tuple(want[n][0])]
    if wrong:
        n = wrong[0]
        raise InputError(f"checkpoint {str(ck.folder)!r} does not fit this model: {n} is {have[n]} there, {want[n]} here")
    if [n for n, _ in named_params] != [n for n, _, _ in ck.state["params"]]:
        raise InputError(f"checkpoint {str(ck.folder)!r} lists the trainable parameters in another order; it was written by another recipe")
    # the optimizer first (it validates its own structure), on a scratch copy of the state
    backup_params = {n: p.detach().clone() for n, p in named_params}
    backup_opt = opt.state_dict()
    try:
        load_optimizer_state(opt, ck.state_tensors, ck.state["optimizer"])
        with torch.no_grad():
            for n, p in named_params:
                p.copy_(ck.trainable[n].to(device=p.device, dtype=p.dtype))
        set_rng_state(ck.state_tensors, ck.state["rng"])
    except BaseException:
        with torch.no_grad():
            for n, p in named_params:
                p.copy_(backup_params[n])
        opt.load_state_dict(backup_opt)
        raise


__all__ = ["Checkpoint", "CKPT_DIR", "FORMAT", "save_checkpoint", "read_checkpoint", "restore", "seed_everything", "rng_state", "set_rng_state"]

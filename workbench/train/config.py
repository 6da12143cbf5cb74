"""Training configuration: one dataclass shared by every recipe, saved as JSON beside the
checkpoint and loaded tolerantly (unknown keys warn, they never fail a resume).

Recipes that need more options subclass `TrainConfig` (e.g. `BakeConfig`); the JSON file
records the class name so `load_config` rebuilds the right one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..paths import atomic_write_text

CONFIG_FILE = "config.json"
OPTIMIZERS = ("adamw", "apollo-mini")
SCHEDULES = ("constant", "cosine", "linear")

# Fields that may differ between a run and its resumption without changing the math of
# the steps already taken (the run can be extended, logged differently, moved).
RESUME_MAY_CHANGE = frozenset({"steps", "ckpt_every", "log_every", "eval_every", "out_dir", "progress", "device"})

C = TypeVar("C", bound="TrainConfig")


@dataclass
class TrainConfig:
    """Options of the shared trainer (`workbench.train.loop.train`).

    Optimisation: `steps` optimizer steps of `batch_size` examples x `grad_accum` micro
    batches; `lr` with `warmup_steps` of linear warm-up, then `schedule` ("constant",
    "cosine" or "linear" decay to `min_lr_ratio * lr`); `max_grad_norm` clips (None: off).
    `optimizer`: "adamw" (torch AdamW) or "apollo-mini" (APOLLO-Mini from `apollo-torch`:
    rank-1 random projection with tensor-wise scaling and scale 128 for 2-D weight
    matrices, plain AdamW moments for the rest).
    Trainable part: `lora_rank` > 0 trains LoRA adapters (PEFT) on the Linear modules
    whose names end in one of `lora_targets`; `lora_rank` 0 fully fine-tunes the parameters
    whose names match one of the regular expressions `train_modules` (re.search).
    Checkpoints: every `ckpt_every` steps (and at the end) into `<out_dir>/checkpoint`;
    metrics every `log_every` steps into `<out_dir>/metrics.jsonl`; the recipe's eval
    every `eval_every` steps (0: only at the end).
    """

    recipe: str = "custom"
    model: str = "smollm2-135m"
    out_dir: str = "runs/train"
    seed: int = 0
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    optimizer: str = "adamw"
    apollo_rank: int = 1
    apollo_scale: float = 128.0
    apollo_update_proj_gap: int = 200
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    train_modules: list[str] = field(default_factory=list)
    ckpt_every: int = 50
    log_every: int = 1
    eval_every: int = 0
    device: str = "auto"
    dtype: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # JSON gives a list
        self.validate()

    def validate(self) -> None:
        def pos_int(name: str, minimum: int = 1) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

        for name in ("steps", "batch_size", "grad_accum", "ckpt_every", "log_every"):
            pos_int(name)
        pos_int("warmup_steps", 0)
        pos_int("eval_every", 0)
        pos_int("lora_rank", 0)
        pos_int("apollo_rank")
        pos_int("apollo_update_proj_gap")
        for name in ("lr", "weight_decay", "eps", "min_lr_ratio", "lora_alpha", "apollo_scale", "lora_dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.lora_rank > 0 and not self.lora_targets:
            raise ValueError("lora_targets is empty; name the Linear modules to adapt (e.g. ['q_proj', 'v_proj'])")

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return {"config_class": type(self).__name__, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    def save(self, folder: str | Path) -> Path:
        return atomic_write_text(Path(folder) / CONFIG_FILE, self.to_json())

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        """Build from a dict; unknown keys warn and are ignored (tolerant loading)."""
        if not isinstance(data, dict):
            raise ValueError(f"{source} must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k != "config_class"}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown key(s) {unknown} for {cls.__name__}", stacklevel=2)
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"config file {str(path)!r} does not exist") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {str(path)!r} is not valid JSON: {e}") from None
        return cls.from_dict(data, source=str(path))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def math_differences(self, other: "TrainConfig") -> dict[str, tuple[Any, Any]]:
        """Fields (other than those a resume may change) whose values differ."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in RESUME_MAY_CHANGE and a.get(k) != b.get(k)}


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["lr=1e-4", "lora_targets=[\\"q_proj\\"]"]` -> dict; values parsed as JSON, else kept as strings."""
    out: dict[str, Any] = {}
    for item in pairs or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like KEY=VALUE (value as JSON, e.g. lr=1e-4)")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


__all__ = ["TrainConfig", "CONFIG_FILE", "OPTIMIZERS", "SCHEDULES", "RESUME_MAY_CHANGE", "parse_overrides"]

"""Training configuration: one dataclass shared by every recipe, saved as JSON beside the
checkpoint and loaded tolerantly (unknown keys warn, they never fail a resume).

Recipes that need more options subclass `TrainConfig` (e.g. `BakeConfig`); the JSON file
records the class name (`config_class`, for readers of the folder) and the recipe's own
class reads it back (`BakeConfig.load(folder)`; `from_dict` ignores that key).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import FileFormatError, InputError, MissingFileError, check_float, check_int
from ..paths import atomic_write_text

CONFIG_FILE = "config.json"
OPTIMIZERS = ("adamw", "apollo-mini")
SCHEDULES = ("constant", "cosine", "linear")
# mixed precision of the training forward: "bf16" runs it under torch.autocast (matmuls in
# bfloat16, weights, gradients and optimizer state in float32); "off" is plain float32
AUTOCAST = ("off", "bf16")

# Fields that may differ between a run and its resumption without changing the math of
# the steps already taken (the run can be extended, logged differently, moved).
RESUME_MAY_CHANGE = frozenset({"steps", "ckpt_every", "log_every", "eval_every", "out_dir", "progress", "device", "probe_n"})

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
    Precision: `autocast` "bf16" runs each forward under `torch.autocast` in bfloat16
    (float32 master weights, gradients and optimizer state; the Gated DeltaNet delta rule of
    `workbench.gdn_fast` stays float32); "off" (default) trains in plain float32.
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
    autocast: str = "off"
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field: first its type, from the field's annotation (for this class
        and every recipe's subclass: an int field refuses "abc", 1.5 and True, a float field
        NaN and strings, a str field numbers, ...), then the ranges. Each refusal is an
        InputError naming the field, the bad value and what is valid."""
        check_field_types(self)
        check_int(self.steps, "steps", low=getattr(type(self), "MIN_STEPS", 1))
        for name in ("batch_size", "grad_accum", "ckpt_every", "log_every", "apollo_rank", "apollo_update_proj_gap"):
            check_int(getattr(self, name), name, low=1)
        for name in ("warmup_steps", "eval_every", "lora_rank"):
            check_int(getattr(self, name), name, low=0)
        for name in ("weight_decay", "eps", "min_lr_ratio", "lora_alpha", "apollo_scale", "lora_dropout"):
            check_float(getattr(self, name), name, low=0.0)
        check_float(self.lr, "lr", low=0.0, low_open=True)
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.autocast not in AUTOCAST:
            raise InputError(f"autocast must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise InputError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.max_grad_norm is not None:
            check_float(self.max_grad_norm, "max_grad_norm", low=0.0, low_open=True)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InputError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.lora_rank > 0 and not self.lora_targets:
            raise InputError("lora_targets is empty; name the Linear modules to adapt (e.g. ['q_proj', 'v_proj'])")

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
        """Build from a dict; unknown keys warn and are ignored (tolerant loading). A bad
        value is an InputError naming `source` and the field."""
        if not isinstance(data, dict):
            raise InputError(f"{source} must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k != "config_class"}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown key(s) {unknown} for {cls.__name__}", stacklevel=2)
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as e:
            raise InputError(f"{source}: {e}") from None
        except InputError as e:
            raise InputError(f"{source}: {e}") from None

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise MissingFileError(f"config file {str(path)!r} does not exist") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise FileFormatError(f"config file {str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise FileFormatError(f"config file {str(path)!r} must hold a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, source=f"config file {str(path)!r}")

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def math_differences(self, other: "TrainConfig") -> dict[str, tuple[Any, Any]]:
        """Fields (other than those a resume may change) whose values differ."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in RESUME_MAY_CHANGE and a.get(k) != b.get(k)}


def _type_error(name: str, value: Any, what: str) -> InputError:
    return InputError(f"{name} must be {what}, got {value!r}")


def check_field_types(cfg: Any) -> None:
    """Check (and normalise: 2.0 -> 2 for an int, a JSON list -> tuple for betas) every
    field of the dataclass `cfg` against its annotation: int, float, str, bool, their
    `| None` forms, list[str], list[int] and tuple[float, float]. Other annotations are
    left to the class's own validate()."""
    for f in dataclasses.fields(cfg):
        ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        parts = [p.strip() for p in ann.split("|")]
        optional = "None" in parts
        parts = [p for p in parts if p != "None"]
        if len(parts) != 1:
            continue
        kind, name, v = parts[0], f.name, getattr(cfg, f.name)
        if v is None:
            if optional:
                continue
            if kind in ("int", "float", "str", "bool", "list[str]", "list[int]", "tuple[float, float]"):
                raise _type_error(name, v, {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(kind, f"a {kind}"))
            continue
        if kind == "int":
            setattr(cfg, name, check_int(v, name))
        elif kind == "float":
            setattr(cfg, name, check_float(v, name))
        elif kind == "str":
            if not isinstance(v, str):
                raise _type_error(name, v, "a string")
        elif kind == "bool":
            if not isinstance(v, bool):
                raise _type_error(name, v, "true or false")
        elif kind == "list[str]":
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise _type_error(name, v, "a list of strings")
            setattr(cfg, name, list(v))
        elif kind == "list[int]":
            if not isinstance(v, (list, tuple)):
                raise _type_error(name, v, "a list of integers")
            setattr(cfg, name, [check_int(x, f"{name}[{i}]") for i, x in enumerate(v)])
        elif kind == "tuple[float, float]":
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                raise _type_error(name, v, "two numbers")
            setattr(cfg, name, tuple(check_float(x, f"{name}[{i}]") for i, x in enumerate(v)))


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["lr=1e-4", "lora_targets=[\\"q_proj\\"]"]` -> dict; values parsed as JSON, else kept as strings."""
    out: dict[str, Any] = {}
    for item in pairs or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"override {item!r} must look like KEY=VALUE (value as JSON, e.g. lr=1e-4)")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


__all__ = ["TrainConfig", "CONFIG_FILE", "OPTIMIZERS", "SCHEDULES", "RESUME_MAY_CHANGE", "parse_overrides", "check_field_types"]

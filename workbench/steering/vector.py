"""SteeringVector: per-layer directions plus the facts needed to use them safely.

Layer convention: a key ``L`` in ``directions`` is the 0-based index of the decoder block
whose OUTPUT (residual stream after block ``L``, i.e. HF ``hidden_states[L + 1]``) is
steered. This is repeng's convention, and llama.cpp's: its control-vector loader reads
tensor ``direction.N`` into slot ``N - 1`` of a buffer whose slot ``il - 1`` is added to
the output of block ``il`` (``build_cvec(cur, il)`` at the end of each block), and it
rejects ``direction.0``. So ``direction.N`` <-> key ``N`` with no offset, and a vector
with layer 0 cannot be exported to GGUF (drop it with ``select``).

On-disk format (safetensors, format version 1): tensors ``layer.{L}`` (float32 ``[d_model]``)
and a JSON header under the metadata key ``workbench_steering_vector``. Loading never
unpickles.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import numbers
import os
import re
import secrets
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

FORMAT_KEY = "workbench_steering_vector"
FORMAT_VERSION = 1
GGUF_ARCH = "controlvector"
GGUF_WORKBENCH_KEY = "workbench.steering_vector"  # extra KV; llama.cpp and repeng ignore it

_HEADER_FIELDS = ("method", "model_name", "model_family", "d_model", "n_layers", "position", "scale", "metadata")
_TENSOR_NAME = re.compile(r"layer\.(0|[1-9][0-9]*)")
_GGUF_TENSOR_NAME = re.compile(r"direction\.(0|[1-9][0-9]*)")

PathLike = str | os.PathLike[str]


def workbench_version() -> str:
    try:
        from importlib.metadata import version

        return version("workbench")
    except Exception:  # not installed (e.g. running from a checkout)
        return "0+unknown"


def creation_metadata(
    *,
    probe_set: str | None = None,
    n_pairs: int | None = None,
    normalize: bool | None = None,
    note: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """Standard creation info for ``SteeringVector.metadata`` (UTC date, workbench version)."""
    meta: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "workbench_version": workbench_version(),
        "probe_set": probe_set,
        "n_pairs": n_pairs,
        "normalize": normalize,
        "note": note,
    }
    meta.update(extra)
    return meta


def _not_ours(path: PathLike, why: str) -> ValueError:
    return ValueError(f"{os.fspath(path)} is not a steering vector file: {why}")


def _atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_path)`` on a temp file next to ``path``, then ``os.replace`` it.

    On any error the temp file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    tmp = str(target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 honours the umask (mkstemp would leave the final file 0600)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@dataclass(kw_only=True, eq=False)
class SteeringVector:
    """Per-layer steering directions for one model.

    directions: layer -> ``[d_model]`` float32 CPU tensor (copied and cast on construction).
        The layer is the 0-based decoder block whose output is steered (module doc).
    method: extraction method name (``Method.name``), e.g. "mean_diff".
    model_name: the model the vector was extracted from (e.g. a hub id).
    model_family: architecture family, e.g. "llama", "qwen3_5" (used as the GGUF model hint).
    d_model: residual width; every direction has this length.
    n_layers: number of decoder blocks of the model, when known (layers must be below it).
    position: token position(s) read at extraction, e.g. "-1" for the last token.
    scale: default multiplier applied at steering time (directions are stored raw).
    metadata: JSON-serialisable creation info (see ``creation_metadata``).
    """

    directions: dict[int, Tensor]
    method: str
    model_name: str
    model_family: str
    d_model: int
    n_layers: int | None = None
    position: str = "-1"
    scale: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.directions, dict):
            raise ValueError(f"directions must be a dict[int, Tensor], got {type(self.directions).__name__}")
        converted: dict[int, Tensor] = {}
        for layer, t in self.directions.items():
            if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
                raise ValueError(f"layer keys must be ints, got {layer!r} ({type(layer).__name__})")
            if isinstance(t, np.ndarray):
                t = torch.from_numpy(np.array(t))
            if not isinstance(t, Tensor):
                raise ValueError(f"direction for layer {layer} must be a Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise ValueError(f"direction for layer {layer} must be floating point, got {t.dtype}")
            converted[int(layer)] = t.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
        self.directions = dict(sorted(converted.items()))
        if isinstance(self.scale, numbers.Real) and not isinstance(self.scale, bool):
            self.scale = float(self.scale)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the bad value and what is valid. Run again before writing."""
        for name in ("method", "model_name", "model_family", "position"):
            value = getattr(self, name)
            if not isinstance(value, str) or (name != "model_name" and not value):
                raise ValueError(f"{name} must be a non-empty str, got {value!r}")
        if isinstance(self.d_model, bool) or not isinstance(self.d_model, int) or self.d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {self.d_model!r}")
        if self.n_layers is not None and (
            isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int) or self.n_layers < 1
        ):
            raise ValueError(f"n_layers must be a positive int or None, got {self.n_layers!r}")
        if not isinstance(self.scale, float) or not math.isfinite(self.scale):
            raise ValueError(f"scale must be a finite number, got {self.scale!r}")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"metadata must be JSON-serialisable (no NaN/inf): {err}") from None
        if not self.directions:
            raise ValueError("a steering vector needs at least one layer; directions is empty")
        valid = f"0..{self.n_layers - 1}" if self.n_layers is not None else "any int >= 0"
        for layer, t in self.directions.items():
            if layer < 0 or (self.n_layers is not None and layer >= self.n_layers):
                raise ValueError(f"layer {layer} is out of range; valid layers: {valid} (n_layers={self.n_layers})")
            if t.ndim != 1 or t.shape[0] != self.d_model:
                raise ValueError(
                    f"direction for layer {layer} has shape {tuple(t.shape)}; expected ({self.d_model},) = (d_model,)"
                )
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"direction for layer {layer} has {int(bad.sum())} non-finite value(s); "
                    f"first at index {i}: {t[i].item()}"
                )

    # ------------------------------------------------------------------ views
    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def __repr__(self) -> str:
        return (
            f"SteeringVector(method={self.method!r}, model_name={self.model_name!r}, "
            f"model_family={self.model_family!r}, d_model={self.d_model}, n_layers={self.n_layers}, "
            f"layers={self.layers}, position={self.position!r}, scale={self.scale})"
        )

    def _with(self, directions: dict[int, Tensor], transform: str, **changes: Any) -> SteeringVector:
        meta = copy.deepcopy(self.metadata)
        meta["transforms"] = [*meta.get("transforms", []), transform]
        return replace(self, directions=directions, metadata=meta, **changes)

    def normalized(self) -> SteeringVector:
        """Copy with every direction scaled to unit L2 norm (a zero direction raises)."""
        out = {}
        for layer, t in self.directions.items():
            norm = float(t.double().norm())
            if norm == 0.0:
                raise ValueError(f"direction for layer {layer} is zero; cannot normalize")
            out[layer] = (t.double() / norm).float()
        return self._with(out, "normalized")

    def scaled(self, s: float) -> SteeringVector:
        """Copy with directions multiplied by ``s`` (baked in). ``scale`` is left unchanged;
        to change only the default multiplier use ``dataclasses.replace(v, scale=s)``."""
        if not math.isfinite(float(s)):
            raise ValueError(f"scale factor must be finite, got {s!r}")
        return self._with({k: t * float(s) for k, t in self.directions.items()}, f"scaled({float(s)!r})")

    def select(self, layers: Iterable[int]) -> SteeringVector:
        """Copy keeping only ``layers`` (each must be present)."""
        wanted = sorted(set(layers))
        missing = [layer for layer in wanted if layer not in self.directions]
        if missing:
            raise ValueError(f"layers {missing} not in this vector; it has {self.layers}")
        return self._with({k: self.directions[k] for k in wanted}, f"select({wanted})")

    # ------------------------------------------------------------------ steering edits
    def _pick(self, layers: int | Iterable[int] | None) -> list[int]:
        if layers is None:
            return self.layers
        wanted = [layers] if isinstance(layers, int) else list(layers)
        for layer in wanted:
            if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
                raise ValueError(f"layers must be ints, got {layer!r}")
        missing = sorted({int(x) for x in wanted} - set(self.directions))
        if missing:
            raise ValueError(f"layers {missing} not in this vector; it has {self.layers}")
        if not wanted:
            raise ValueError(f"layers is empty; this vector has {self.layers}")
        return sorted({int(x) for x in wanted})

    def edits(self, scale: float | None = None, where: str = "all", layers: int | Iterable[int] | None = None) -> list:
        """``AddVector`` edits adding ``scale * direction`` (default: ``self.scale``) at each
        layer (default: all of this vector's layers). ``where``: "all", "prompt" or
        "generated" positions. ``workbench.generate(..., steer=[vec])`` calls this."""
        from ..edits import AddVector

        s = self.scale if scale is None else scale
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(float(s)):
            raise ValueError(f"scale must be a finite number, got {s!r}")
        return [AddVector(layer, self.directions[layer], float(s), where) for layer in self._pick(layers)]

    def ablation_edits(
        self, strength: float = 1.0, where: str = "all", layers: int | Iterable[int] | None = None
    ) -> list:
        """``Ablate`` edits projecting each layer's (unit) direction out of the residual:
        ``h - strength * (h . u) u`` (directional ablation, refusal-direction style)."""
        from ..edits import Ablate

        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(float(strength)):
            raise ValueError(f"strength must be a finite number, got {strength!r}")
        return [Ablate(layer, self.directions[layer], float(strength), where) for layer in self._pick(layers)]

    def steer(self, scale: float | None = None, where: str = "all", layers: int | Iterable[int] | None = None) -> Steer:
        """This vector bound to a scale / positions / layers, for ``generate(..., steer=[...])``."""
        spec = Steer(self, "add", self.scale if scale is None else scale, where, None if layers is None else tuple(self._pick(layers)))
        spec.edits()  # validate now, not mid-generation
        return spec

    def ablate(self, strength: float = 1.0, where: str = "all", layers: int | Iterable[int] | None = None) -> Steer:
        """Directional ablation of this vector's directions, for ``generate(..., steer=[...])``."""
        spec = Steer(self, "ablate", strength, where, None if layers is None else tuple(self._pick(layers)))
        spec.edits()
        return spec

    @classmethod
    def random_like(cls, other: SteeringVector, seed: int = 0) -> SteeringVector:
        """Gaussian random directions with the same per-layer L2 norm as ``other`` (a control).

        Deterministic in ``seed``: one ``torch.Generator`` draws the layers in ascending order.
        """
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for layer in other.layers:
            r = torch.randn(other.d_model, generator=gen, dtype=torch.float64)
            target = float(other.directions[layer].double().norm())
            out[layer] = (r * (target / float(r.norm()))).float()
        meta = {"control": "random_like", "seed": seed, "source_method": other.method}
        return replace(other, directions=out, method="random", metadata=meta)

    # ------------------------------------------------------------------ safetensors
    def _header(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "model_name": self.model_name,
            "model_family": self.model_family,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "position": self.position,
            "scale": self.scale,
            "metadata": self.metadata,
            "layers": self.layers,
            "written_by": f"workbench {workbench_version()}",
        }

    def save(self, path: PathLike) -> None:
        """Write a safetensors file atomically (temp file in the same dir, then ``os.replace``)."""
        from safetensors.torch import save as st_save

        self.validate()  # directions are mutable tensors: re-check before writing
        tensors = {f"layer.{layer}": t.contiguous() for layer, t in self.directions.items()}
        blob = st_save(tensors, metadata={FORMAT_KEY: json.dumps(self._header(), allow_nan=False)})

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(blob)

        _atomic_write(path, write)

    @classmethod
    def load(
        cls, path: PathLike, *, expect_d_model: int | None = None, expect_family: str | None = None
    ) -> SteeringVector:
        """Read a file written by ``save``. Refuses anything else with a ValueError; never unpickles."""
        from safetensors import safe_open

        with open(path, "rb") as f:
            head = f.read(8)
        try:
            with safe_open(os.fspath(path), framework="pt", device="cpu") as st:
                meta = st.metadata() or {}
                tensors = {name: st.get_tensor(name) for name in st.keys()}
        except Exception as err:
            # Sniff only after safetensors refused it: its 8-byte length prefix can start with anything.
            if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
                raise _not_ours(path, "it looks like a PyTorch/pickle (.pt) file, which is never unpickled here") from None
            if head.startswith(b"GGUF"):
                raise _not_ours(path, "it is a GGUF file; use SteeringVector.from_gguf") from None
            raise _not_ours(path, f"not a readable safetensors file ({type(err).__name__}: {err})") from None
        if FORMAT_KEY not in meta:
            raise _not_ours(path, f"safetensors file without the {FORMAT_KEY!r} metadata key")
        try:
            header = json.loads(meta[FORMAT_KEY])
        except json.JSONDecodeError as err:
            raise _not_ours(path, f"{FORMAT_KEY!r} metadata is not valid JSON ({err})") from None
        if not isinstance(header, dict):
            raise _not_ours(path, f"{FORMAT_KEY!r} metadata is not a JSON object")
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{os.fspath(path)}: unsupported steering vector format version {version!r}; "
                f"this workbench reads version {FORMAT_VERSION}"
            )
        missing = [k for k in _HEADER_FIELDS if k not in header]
        if missing:
            raise ValueError(f"{os.fspath(path)}: steering vector header lacks {missing}")
        unknown = sorted(set(header) - set(_HEADER_FIELDS) - {"format_version", "layers", "written_by"})
        if unknown:
            warnings.warn(f"{os.fspath(path)}: ignoring unknown steering vector header keys {unknown}")
        directions: dict[int, Tensor] = {}
        for name, t in tensors.items():
            m = _TENSOR_NAME.fullmatch(name)
            if m is None:
                raise ValueError(f"{os.fspath(path)}: unexpected tensor {name!r}; expected names 'layer.<int>'")
            directions[int(m.group(1))] = t
        if "layers" in header and sorted(header["layers"]) != sorted(directions):
            raise ValueError(
                f"{os.fspath(path)}: header lists layers {header['layers']} but tensors hold {sorted(directions)}"
            )
        _check_expected(path, header["d_model"], header["model_family"], expect_d_model, expect_family)
        try:
            return cls(directions=directions, **{k: header[k] for k in _HEADER_FIELDS})
        except ValueError as err:
            raise ValueError(f"{os.fspath(path)}: invalid steering vector: {err}") from None

    # ------------------------------------------------------------------ GGUF (llama.cpp)
    def to_gguf(
        self,
        path: PathLike,
        *,
        model_hint: str | None = None,
        multiplier: float | None = None,
        workbench_metadata: bool = True,
    ) -> None:
        """Write a llama.cpp control vector (the layout repeng's ``export_gguf`` writes).

        arch ``controlvector``; KVs ``controlvector.model_hint`` (default: ``model_family``)
        and ``controlvector.layer_count``; F32 tensors ``direction.{L}`` for each layer ``L``
        (same index as our keys, see module doc; layer 0 is refused because llama.cpp
        rejects ``direction.0``). Directions are raw unless ``multiplier`` is given, which
        is multiplied in (llama.cpp then applies ``--control-vector-scaled FILE s`` on top).
        ``workbench_metadata`` adds one extra string KV (``workbench.steering_vector``, JSON)
        so ``from_gguf`` can restore every field; set False for a byte-for-byte repeng layout.
        """
        import gguf

        self.validate()
        if 0 in self.directions:
            raise ValueError(
                "llama.cpp control vectors cannot steer the output of block 0 (it rejects "
                "'direction.0'); drop it first, e.g. vector.select(l for l in vector.layers if l)"
            )
        mult = 1.0 if multiplier is None else float(multiplier)
        if not math.isfinite(mult):
            raise ValueError(f"multiplier must be finite, got {multiplier!r}")
        arrays = {
            layer: (t if multiplier is None else t * mult).numpy().astype(np.float32, copy=False)
            for layer, t in self.directions.items()
        }
        bad = [layer for layer, a in arrays.items() if not np.isfinite(a).all()]
        if bad:
            raise ValueError(f"multiplier {mult} makes layers {bad} non-finite")
        header = {**self._header(), "gguf_multiplier": multiplier}

        def write(tmp: str) -> None:
            writer = gguf.GGUFWriter(tmp, GGUF_ARCH)
            try:
                writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint or self.model_family)
                writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(arrays))
                if workbench_metadata:
                    writer.add_string(GGUF_WORKBENCH_KEY, json.dumps(header, allow_nan=False))
                for layer, a in arrays.items():
                    writer.add_tensor(f"direction.{layer}", a)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_tensors_to_file()
            finally:
                writer.close()

        _atomic_write(path, write)

    @classmethod
    def from_gguf(
        cls,
        path: PathLike,
        *,
        model_name: str | None = None,
        method: str | None = None,
        position: str | None = None,
        n_layers: int | None = None,
        expect_d_model: int | None = None,
        expect_family: str | None = None,
    ) -> SteeringVector:
        """Read a llama.cpp/repeng control vector. Fields stored by ``to_gguf`` are restored;
        explicit arguments override them. Without them: family = model_hint, model_name =
        model_hint, method = "gguf", position = "-1". Directions are read as stored (a
        multiplier baked in at export stays in; it is recorded as ``metadata['gguf_multiplier']``).
        """
        import gguf

        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError(f"{os.fspath(path)} is not a GGUF file (bad magic)")
        try:
            reader = gguf.GGUFReader(os.fspath(path))
            fields = {name: fld.contents() for name, fld in reader.fields.items()}
            raw = [(t.name, int(t.tensor_type), np.array(t.data, dtype=np.float32, copy=True)) for t in reader.tensors]
        except Exception as err:
            raise ValueError(f"{os.fspath(path)}: unreadable GGUF file ({type(err).__name__}: {err})") from None
        del reader
        arch = fields.get("general.architecture")
        if arch != GGUF_ARCH:
            raise ValueError(f"{os.fspath(path)}: GGUF architecture is {arch!r}, not {GGUF_ARCH!r}; not a control vector")
        hint = fields.get(f"{GGUF_ARCH}.model_hint")
        if not isinstance(hint, str):
            raise ValueError(f"{os.fspath(path)}: control vector lacks the {GGUF_ARCH}.model_hint string")
        directions: dict[int, Tensor] = {}
        for name, ttype, data in raw:
            m = _GGUF_TENSOR_NAME.fullmatch(name)
            if m is None:
                raise ValueError(f"{os.fspath(path)}: unexpected tensor {name!r}; expected 'direction.<int>'")
            if ttype not in (int(gguf.GGMLQuantizationType.F32), int(gguf.GGMLQuantizationType.F16)):
                raise ValueError(f"{os.fspath(path)}: tensor {name!r} has GGML type {ttype}; expected F32")
            if data.ndim != 1:
                raise ValueError(f"{os.fspath(path)}: tensor {name!r} has shape {data.shape}; expected 1-D")
            directions[int(m.group(1))] = torch.from_numpy(data)
        if not directions:
            raise ValueError(f"{os.fspath(path)}: control vector has no direction tensors")
        if 0 in directions:
            warnings.warn(f"{os.fspath(path)}: has 'direction.0', which llama.cpp rejects")
        count = fields.get(f"{GGUF_ARCH}.layer_count")
        if count is not None and count != len(directions):
            warnings.warn(f"{os.fspath(path)}: layer_count={count} but {len(directions)} direction tensors")

        stored: dict[str, Any] = {}
        if GGUF_WORKBENCH_KEY in fields:
            try:
                stored = json.loads(fields[GGUF_WORKBENCH_KEY])
            except (TypeError, json.JSONDecodeError):
                warnings.warn(f"{os.fspath(path)}: ignoring unreadable {GGUF_WORKBENCH_KEY} metadata")
                stored = {}
        d_model = next(iter(directions.values())).shape[0]
        family = stored.get("model_family", hint)
        _check_expected(path, d_model, family, expect_d_model, expect_family)
        if stored:
            metadata = dict(stored.get("metadata") or {})
        else:
            metadata = {"source": "gguf", "model_hint": hint}
        if stored.get("gguf_multiplier") is not None:
            metadata["gguf_multiplier"] = stored["gguf_multiplier"]
        try:
            return cls(
                directions=directions,
                method=method or stored.get("method", "gguf"),
                model_name=model_name if model_name is not None else stored.get("model_name", hint),
                model_family=family,
                d_model=d_model,
                n_layers=n_layers if n_layers is not None else stored.get("n_layers"),
                position=position or stored.get("position", "-1"),
                scale=stored.get("scale", 1.0),
                metadata=metadata,
            )
        except ValueError as err:
            raise ValueError(f"{os.fspath(path)}: invalid control vector: {err}") from None


def _check_expected(
    path: PathLike, d_model: Any, family: Any, expect_d_model: int | None, expect_family: str | None
) -> None:
    if expect_d_model is not None and d_model != expect_d_model:
        raise ValueError(
            f"{os.fspath(path)}: vector has d_model={d_model}, but the model has d_model={expect_d_model}"
        )
    if expect_family is not None and family != expect_family:
        raise ValueError(
            f"{os.fspath(path)}: vector was made for model family {family!r}, expected {expect_family!r}"
        )


@dataclass(frozen=True)
class Steer:
    """A steering operator ready for the generation loop: ``op`` "add" (``scale * v``) or
    "ablate" (project ``v`` out with ``amount`` = strength), on ``where`` positions, at
    ``layers`` (None: all of the vector's layers). ``edits()`` builds the edits."""

    vector: SteeringVector
    op: str
    amount: float
    where: str = "all"
    layers: tuple[int, ...] | None = None

    def edits(self) -> list:
        if self.op == "add":
            return self.vector.edits(self.amount, self.where, self.layers)
        if self.op == "ablate":
            return self.vector.ablation_edits(self.amount, self.where, self.layers)
        raise ValueError(f"op must be 'add' or 'ablate', got {self.op!r}")

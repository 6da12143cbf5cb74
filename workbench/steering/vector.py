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
unpickles, and reads headers before data: a truncated safetensors file or a model GGUF
passed as a control vector is refused (``workbench.errors.FileFormatError``, naming the
file and the field) before any tensor is read.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import numbers
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor

from .._fileformat import check_file, safetensors_header
from ..errors import FileFormatError, InputError
from ..paths import atomic_write_file

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


def _not_ours(path: PathLike, why: str) -> FileFormatError:
    return FileFormatError(f"{os.fspath(path)} is not a steering vector file: {why}")


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
            raise InputError(f"directions must be a dict[int, Tensor], got {type(self.directions).__name__}")
        converted: dict[int, Tensor] = {}
        for layer, t in self.directions.items():
            if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
                raise InputError(f"layer keys must be ints, got {layer!r} ({type(layer).__name__})")
            if isinstance(t, np.ndarray):
                t = torch.from_numpy(np.array(t))
            if not isinstance(t, Tensor):
                raise InputError(f"direction for layer {layer} must be a Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise InputError(f"direction for layer {layer} must be floating point, got {t.dtype}")
            converted[int(layer)] = t.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
        self.directions = dict(sorted(converted.items()))
        if isinstance(self.scale, numbers.Real) and not isinstance(self.scale, bool):
            self.scale = float(self.scale)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise InputError (a ValueError) naming the bad value and what is valid. Run again
        before writing."""
        for name in ("method", "model_name", "model_family", "position"):
            value = getattr(self, name)
            if not isinstance(value, str) or (name != "model_name" and not value):
                raise InputError(f"{name} must be a non-empty str, got {value!r}")
        if isinstance(self.d_model, bool) or not isinstance(self.d_model, int) or self.d_model < 1:
            raise InputError(f"d_model must be a positive int, got {self.d_model!r}")
        if self.n_layers is not None and (
            isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int) or self.n_layers < 1
        ):
            raise InputError(f"n_layers must be a positive int or None, got {self.n_layers!r}")
        if not isinstance(self.scale, float) or not math.isfinite(self.scale):
            raise InputError(f"scale must be a finite number, got {self.scale!r}")
        if not isinstance(self.metadata, dict):
            raise InputError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise InputError(f"metadata must be JSON-serialisable (no NaN/inf): {err}") from None
        if not self.directions:
            raise InputError("a steering vector needs at least one layer; directions is empty")
        valid = f"0..{self.n_layers - 1}" if self.n_layers is not None else "any int >= 0"
        for layer, t in self.directions.items():
            if layer < 0 or (self.n_layers is not None and layer >= self.n_layers):
                raise InputError(f"layer {layer} is out of range; valid layers: {valid} (n_layers={self.n_layers})")
            if t.ndim != 1 or t.shape[0] != self.d_model:
                raise InputError(
                    f"direction for layer {layer} has shape {tuple(t.shape)}; expected ({self.d_model},) = (d_model,)"
                )
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise InputError(
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
                raise InputError(f"direction for layer {layer} is zero; cannot normalize")
            out[layer] = (t.double() / norm).float()
        return self._with(out, "normalized")

    def scaled(self, s: float) -> SteeringVector:
        """Copy with directions multiplied by ``s`` (baked in). ``scale`` is left unchanged;
        to change only the default multiplier use ``dataclasses.replace(v, scale=s)``."""
        if not math.isfinite(float(s)):
            raise InputError(f"scale factor must be finite, got {s!r}")
        return self._with({k: t * float(s) for k, t in self.directions.items()}, f"scaled({float(s)!r})")

    def select(self, layers: Iterable[int]) -> SteeringVector:
        """Copy keeping only ``layers`` (each must be present)."""
        wanted = sorted(set(layers))
        missing = [layer for layer in wanted if layer not in self.directions]
        if missing:
            raise InputError(f"layers {missing} not in this vector; it has {self.layers}")
        return self._with({k: self.directions[k] for k in wanted}, f"select({wanted})")

    # ------------------------------------------------------------------ steering edits
    def _pick(self, layers: int | Iterable[int] | None) -> list[int]:
        if layers is None:
            return self.layers
        wanted = [layers] if isinstance(layers, int) else list(layers)
        for layer in wanted:
            if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
                raise InputError(f"layers must be ints, got {layer!r}")
        missing = sorted({int(x) for x in wanted} - set(self.directions))
        if missing:
            raise InputError(f"layers {missing} not in this vector; it has {self.layers}")
        if not wanted:
            raise InputError(f"layers is empty; this vector has {self.layers}")
        return sorted({int(x) for x in wanted})

    def edits(self, scale: float | None = None, where: str = "all", layers: int | Iterable[int] | None = None) -> list:
        """``AddVector`` edits adding ``scale * direction`` (default: ``self.scale``) at each
        layer (default: all of this vector's layers). ``where``: "all", "prompt" or
        "generated" positions. ``workbench.generate(..., steer=[vec])`` calls this."""
        from ..edits import AddVector

        s = self.scale if scale is None else scale
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(float(s)):
            raise InputError(f"scale must be a finite number, got {s!r}")
        return [AddVector(layer, self.directions[layer], float(s), where) for layer in self._pick(layers)]

    def ablation_edits(
        self, strength: float = 1.0, where: str = "all", layers: int | Iterable[int] | None = None
    ) -> list:
        """``Ablate`` edits projecting each layer's (unit) direction out of the residual:
        ``h - strength * (h . u) u`` (directional ablation, refusal-direction style)."""
        from ..edits import Ablate

        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(float(strength)):
            raise InputError(f"strength must be a finite number, got {strength!r}")
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

    def save(self, path: PathLike, *, overwrite: bool = True) -> None:
        """Write a safetensors file atomically (temp file in the same dir, then moved into
        place). ``overwrite=False`` refuses (OutputExistsError) when ``path`` exists."""
        from safetensors.torch import save as st_save

        self.validate()  # directions are mutable tensors: re-check before writing
        tensors = {f"layer.{layer}": t.contiguous() for layer, t in self.directions.items()}
        blob = st_save(tensors, metadata={FORMAT_KEY: json.dumps(self._header(), allow_nan=False)})

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(blob)

        atomic_write_file(path, write, overwrite=overwrite)

    @classmethod
    def load(
        cls, path: PathLike, *, expect_d_model: int | None = None, expect_family: str | None = None
    ) -> SteeringVector:
        """Read a file written by ``save``; never unpickles.

        The header is read and checked first (truncation, tensor names, dtypes and shapes,
        the model it was made for), then the tensors. Refusals: MissingFileError (no such
        file), FileFormatError naming the file and the field (a folder, an empty, truncated
        or corrupt file, another kind of file, bad metadata, NaN values), InputError when
        the vector was made for another model (``expect_d_model`` / ``expect_family``)."""
        from safetensors import safe_open

        p = check_file(path, "steering vector")
        meta, entries = safetensors_header(p, "steering vector")
        if FORMAT_KEY not in meta:
            raise _not_ours(p, f"safetensors file without the {FORMAT_KEY!r} metadata key (not written by SteeringVector.save)")
        try:
            header = json.loads(meta[FORMAT_KEY])
        except json.JSONDecodeError as err:
            raise _not_ours(p, f"{FORMAT_KEY!r} metadata is not valid JSON ({err})") from None
        if not isinstance(header, dict):
            raise _not_ours(p, f"{FORMAT_KEY!r} metadata is not a JSON object")
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise FileFormatError(
                f"{p}: unsupported steering vector format version {version!r} (field 'format_version'); "
                f"this workbench reads version {FORMAT_VERSION}"
            )
        missing = [k for k in _HEADER_FIELDS if k not in header]
        if missing:
            raise FileFormatError(f"{p}: steering vector header lacks {missing} (it needs {list(_HEADER_FIELDS)})")
        unknown = sorted(set(header) - set(_HEADER_FIELDS) - {"format_version", "layers", "written_by"})
        if unknown:
            warnings.warn(f"{p}: ignoring unknown steering vector header keys {unknown}")
        d_model, family = header["d_model"], header["model_family"]
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise FileFormatError(f"{p}: invalid steering vector: header field 'd_model' must be a positive int, got {d_model!r}")
        if not isinstance(family, str) or not family:
            raise FileFormatError(f"{p}: invalid steering vector: header field 'model_family' must be a non-empty str, got {family!r}")
        layers: dict[int, str] = {}
        for name, info in entries.items():
            m = _TENSOR_NAME.fullmatch(name)
            if m is None:
                raise FileFormatError(f"{p}: unexpected tensor {name!r}; expected names 'layer.<int>'")
            if info["dtype"] not in _FLOAT_DTYPES:
                raise FileFormatError(
                    f"{p}: tensor {name!r} has dtype {info['dtype']}; a steering vector holds floats "
                    f"({', '.join(sorted(_FLOAT_DTYPES))}; written as F32)"
                )
            if info["shape"] != [d_model]:
                raise FileFormatError(f"{p}: tensor {name!r} has shape {info['shape']}; expected [{d_model}] ([d_model], from the header)")
            layers[int(m.group(1))] = name
        if "layers" in header and (not isinstance(header["layers"], list) or sorted(map(str, header["layers"])) != sorted(map(str, layers))):
            raise FileFormatError(f"{p}: header field 'layers' lists {header['layers']!r} but the tensors hold {sorted(layers)}")
        _check_expected(p, d_model, family, expect_d_model, expect_family)
        try:
            with safe_open(p, framework="pt", device="cpu") as st:
                directions = {layer: st.get_tensor(name) for layer, name in layers.items()}
        except Exception as err:  # the header was whole; the data is not
            raise FileFormatError(f"{p}: the safetensors steering vector file is corrupt ({type(err).__name__}: {err})") from None
        try:
            return cls(directions=directions, **{k: header[k] for k in _HEADER_FIELDS})
        except ValueError as err:
            raise FileFormatError(f"{p}: invalid steering vector: {err}") from None

    # ------------------------------------------------------------------ GGUF (llama.cpp)
    def to_gguf(
        self,
        path: PathLike,
        *,
        model_hint: str | None = None,
        multiplier: float | None = None,
        workbench_metadata: bool = True,
        overwrite: bool = True,
    ) -> None:
        """Write a llama.cpp control vector (the layout repeng's ``export_gguf`` writes).

        arch ``controlvector``; KVs ``controlvector.model_hint`` (default: ``model_family``)
        and ``controlvector.layer_count``; F32 tensors ``direction.{L}`` for each layer ``L``
        (same index as our keys, see module doc; layer 0 is refused because llama.cpp
        rejects ``direction.0``). Directions are raw unless ``multiplier`` is given, which
        is multiplied in (llama.cpp then applies ``--control-vector-scaled FILE s`` on top).
        ``workbench_metadata`` adds one extra string KV (``workbench.steering_vector``, JSON)
        so ``from_gguf`` can restore every field; set False for a byte-for-byte repeng layout.
        ``overwrite=False`` refuses (OutputExistsError) when ``path`` exists.
        """
        import gguf

        self.validate()
        if 0 in self.directions:
            raise InputError(
                "llama.cpp control vectors cannot steer the output of block 0 (it rejects "
                "'direction.0'); drop it first, e.g. vector.select(l for l in vector.layers if l)"
            )
        mult = 1.0 if multiplier is None else float(multiplier)
        if not math.isfinite(mult):
            raise InputError(f"multiplier must be finite, got {multiplier!r}")
        arrays = {
            layer: (t if multiplier is None else t * mult).numpy().astype(np.float32, copy=False)
            for layer, t in self.directions.items()
        }
        bad = [layer for layer, a in arrays.items() if not np.isfinite(a).all()]
        if bad:
            raise InputError(f"multiplier {mult} makes layers {bad} non-finite")
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

        atomic_write_file(path, write, overwrite=overwrite)

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

        The metadata and tensor list are read and checked first (a model GGUF is refused at
        its ``general.architecture`` key, before any tensor is read); then only the
        ``direction.<layer>`` tensors are read. Refusals as in ``load``."""
        p = check_file(path, "control vector")
        g = _read_gguf_layout(p)
        fields, infos = g.fields, g.tensors
        hint = fields.get(f"{GGUF_ARCH}.model_hint")
        if not isinstance(hint, str) or not hint:
            raise FileFormatError(
                f"{p}: control vector field {GGUF_ARCH}.model_hint must be a non-empty string, got {_shown(hint)}"
            )
        if not infos:
            raise FileFormatError(f"{p}: control vector has no direction tensors; expected 'direction.<layer>' tensors")
        layer_of: dict[int, _GGUFTensor] = {}
        for t in infos:
            m = _GGUF_TENSOR_NAME.fullmatch(t.name)
            if m is None:
                raise FileFormatError(f"{p}: unexpected tensor {t.name!r}; a control vector holds only 'direction.<layer>' tensors")
            if t.ggml_type not in _GGUF_FLOAT:
                raise FileFormatError(f"{p}: tensor {t.name!r} has GGML type {_ggml_name(t.ggml_type)}; expected F32 (or F16)")
            if len(t.dims) != 1:
                raise FileFormatError(f"{p}: tensor {t.name!r} has shape {list(t.dims)}; expected 1-D [d_model]")
            layer_of[int(m.group(1))] = t
        widths = sorted({t.dims[0] for t in infos})
        if len(widths) != 1:
            raise FileFormatError(f"{p}: direction tensors have different lengths {widths}; all must be d_model long")
        if 0 in layer_of:
            warnings.warn(f"{p}: has 'direction.0', which llama.cpp rejects")
        count = fields.get(f"{GGUF_ARCH}.layer_count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise FileFormatError(f"{p}: field {GGUF_ARCH}.layer_count must be an integer, got {_shown(count)}")
        if count is not None and count != len(layer_of):
            warnings.warn(f"{p}: layer_count={count} but {len(layer_of)} direction tensors")

        stored: dict[str, Any] = {}
        if GGUF_WORKBENCH_KEY in fields:
            raw = fields[GGUF_WORKBENCH_KEY]
            if not isinstance(raw, str):
                raise FileFormatError(f"{p}: field {GGUF_WORKBENCH_KEY} must be a JSON string, got {_shown(raw)}")
            try:
                stored = json.loads(raw)
            except json.JSONDecodeError as err:
                raise FileFormatError(f"{p}: field {GGUF_WORKBENCH_KEY} is not valid JSON ({err})") from None
            if not isinstance(stored, dict):
                raise FileFormatError(f"{p}: field {GGUF_WORKBENCH_KEY} must hold a JSON object, got {type(stored).__name__}")
            if stored.get("metadata") is not None and not isinstance(stored["metadata"], dict):
                raise FileFormatError(f"{p}: field {GGUF_WORKBENCH_KEY}: 'metadata' must be a JSON object, got {stored['metadata']!r}")
        d_model = widths[0]
        family = stored.get("model_family", hint)
        if not isinstance(family, str) or not family:
            raise FileFormatError(f"{p}: field {GGUF_WORKBENCH_KEY}: 'model_family' must be a non-empty string, got {family!r}")
        _check_expected(p, d_model, family, expect_d_model, expect_family)
        directions = {layer: torch.from_numpy(g.read(t)) for layer, t in sorted(layer_of.items())}
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
            raise FileFormatError(f"{p}: invalid control vector: {err}") from None


# --------------------------------------------------------------------------- GGUF layout

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_GGUF_F32, _GGUF_F16 = 0, 1  # GGMLQuantizationType values
_GGUF_FLOAT = {_GGUF_F32: "f4", _GGUF_F16: "f2"}
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_MAX_DIMS = 4
CONTROL_VECTOR_LAYOUT = (
    "a control vector has general.architecture = 'controlvector', a controlvector.model_hint string "
    "and one 1-D F32 tensor 'direction.<layer>' per steered layer"
)


@dataclass(frozen=True)
class _GGUFTensor:
    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section


@dataclass
class _GGUFLayout:
    path: str
    endian: str
    fields: dict[str, Any]  # scalars and strings; arrays as ("array", element type, count)
    tensors: list[_GGUFTensor]
    data_start: int
    size: int

    def read(self, t: _GGUFTensor) -> np.ndarray:
        """One tensor's values as float32 (a control vector tensor: F32 or F16, 1-D)."""
        dtype = np.dtype(self.endian + _GGUF_FLOAT[t.ggml_type])
        count = int(np.prod(t.dims)) if t.dims else 1
        start = self.data_start + t.offset
        if start + count * dtype.itemsize > self.size:
            raise FileFormatError(
                f"{self.path}: the GGUF file is truncated: tensor {t.name!r} needs bytes {start}..{start + count * dtype.itemsize} "
                f"but the file has {self.size}"
            )
        with open(self.path, "rb") as f:
            f.seek(start)
            data = np.fromfile(f, dtype=dtype, count=count)
        return data.astype(np.float32)


def _shown(value: Any) -> str:
    if isinstance(value, tuple) and value[:1] == ("array",):
        return f"an array of {value[2]} values"
    return "nothing" if value is None else repr(value)


def _ggml_name(t: int) -> str:
    try:
        import gguf

        return gguf.GGMLQuantizationType(t).name
    except Exception:  # unknown number, or gguf not installed
        return str(t)


class _Cursor:
    """Sequential reads of a GGUF header with every length checked against the file."""

    def __init__(self, f: Any, path: str, size: int, endian: str):
        import struct

        self.f, self.path, self.size, self.endian, self.struct = f, path, size, endian, struct

    def take(self, n: int, where: str) -> bytes:
        pos = self.f.tell()
        if n < 0 or pos + n > self.size:
            raise FileFormatError(
                f"{self.path}: GGUF metadata is truncated or corrupt at {where}: {n} bytes needed at offset {pos}, "
                f"the file has {self.size}"
            )
        return self.f.read(n)

    def num(self, code: str, where: str) -> Any:
        fmt = self.endian + code
        return self.struct.unpack(fmt, self.take(self.struct.calcsize(fmt), where))[0]

    def string(self, where: str, limit: int | None = None) -> str:
        n = self.num("Q", where)
        if limit is not None and n > limit:
            raise FileFormatError(f"{self.path}: GGUF metadata is corrupt at {where}: a string of {n} bytes (at most {limit} expected)")
        raw = self.take(n, where)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FileFormatError(f"{self.path}: GGUF metadata is corrupt at {where}: the string is not UTF-8") from None

    def value(self, vtype: int, where: str, depth: int = 0) -> Any:
        if vtype in _GGUF_SCALARS:
            return self.num(_GGUF_SCALARS[vtype], where)
        if vtype == _GGUF_STRING:
            return self.string(where)
        if vtype == _GGUF_ARRAY and depth < 2:
            itype = self.num("I", where)
            count = self.num("Q", where)
            if count > self.size:
                raise FileFormatError(f"{self.path}: GGUF metadata is corrupt at {where}: an array of {count} values in a {self.size}-byte file")
            if itype in _GGUF_SCALARS:  # skip the values: nothing here needs an array
                self.take(count * self.struct.calcsize(_GGUF_SCALARS[itype]), where)
            else:
                for _ in range(count):
                    self.value(itype, where, depth + 1)
            return ("array", itype, count)
        raise FileFormatError(f"{self.path}: GGUF metadata is corrupt at {where}: unknown value type {vtype}")


def _read_gguf_layout(path: str) -> _GGUFLayout:
    """The metadata and tensor list of a GGUF control vector, read from its header alone
    (no tensor data). A file whose general.architecture is not 'controlvector' (a model)
    is refused as soon as that key is read."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != b"GGUF":
            raise FileFormatError(f"{path} is not a GGUF file (it does not start with 'GGUF'); {CONTROL_VECTOR_LAYOUT}")
        raw_version = f.read(4)
        if len(raw_version) < 4:
            raise FileFormatError(f"{path}: the GGUF file is truncated (it ends inside the version field)")
        endian = "<"
        version = int.from_bytes(raw_version, "little")
        if version & 0xFFFF == 0:  # written for the other byte order
            endian, version = ">", int.from_bytes(raw_version, "big")
        if version not in (2, 3):
            raise FileFormatError(f"{path}: GGUF version {version} is not read here (field 'version'; versions 2 and 3 are)")
        cur = _Cursor(f, path, size, endian)
        n_tensors = cur.num("Q", "the tensor count")
        n_kv = cur.num("Q", "the metadata count")
        if n_kv > size or n_tensors > size:
            raise FileFormatError(f"{path}: GGUF header is corrupt: it claims {n_kv} metadata keys and {n_tensors} tensors in {size} bytes")
        fields: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}", limit=65536)
            vtype = cur.num("I", f"the type of metadata key {key!r}")
            value = cur.value(vtype, f"metadata key {key!r}")
            if key in fields:
                raise FileFormatError(f"{path}: GGUF metadata is corrupt: key {key!r} appears twice")
            fields[key] = value
            if key == "general.architecture":
                if not isinstance(value, str):
                    raise FileFormatError(f"{path}: GGUF field general.architecture must be a string, got {_shown(value)}")
                if value != GGUF_ARCH:
                    raise FileFormatError(
                        f"{path}: GGUF architecture is {value!r} (field general.architecture), not {GGUF_ARCH!r}: this is "
                        f"a model or another kind of GGUF file, not a control vector; {CONTROL_VECTOR_LAYOUT}"
                    )
        if "general.architecture" not in fields:
            raise FileFormatError(f"{path}: GGUF file has no general.architecture field; {CONTROL_VECTOR_LAYOUT}")
        tensors = []
        for j in range(n_tensors):
            name = cur.string(f"the name of tensor #{j}", limit=65536)
            n_dims = cur.num("I", f"tensor {name!r}")
            if n_dims > _GGUF_MAX_DIMS:
                raise FileFormatError(f"{path}: GGUF tensor {name!r} claims {n_dims} dimensions (at most {_GGUF_MAX_DIMS})")
            dims = tuple(cur.num("Q", f"tensor {name!r}") for _ in range(n_dims))
            ttype = cur.num("I", f"tensor {name!r}")
            offset = cur.num("Q", f"tensor {name!r}")
            tensors.append(_GGUFTensor(name, dims, ttype, offset))
        align = fields.get("general.alignment", 32)
        if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise FileFormatError(f"{path}: GGUF field general.alignment must be a power of two, got {_shown(align)}")
        pos = f.tell()
    data_start = pos + (-pos % align)
    return _GGUFLayout(path, endian, fields, tensors, data_start, size)


def _check_expected(
    path: PathLike, d_model: Any, family: Any, expect_d_model: int | None, expect_family: str | None
) -> None:
    if expect_d_model is not None and d_model != expect_d_model:
        raise InputError(
            f"{os.fspath(path)}: vector has d_model={d_model}, but the model has d_model={expect_d_model}"
        )
    if expect_family is not None and family != expect_family:
        raise InputError(
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
        raise InputError(f"op must be 'add' or 'ablate', got {self.op!r}")

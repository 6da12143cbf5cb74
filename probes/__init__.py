"""Versioned contrast sets ("probe sets") for steering-vector extraction.

Each set lives in a JSONL file named ``<name>.v<N>.jsonl``.  The first line may
be a header object ``{"_meta": {...}}``; every other non-blank line is a pair::

    {"id": "sentiment-0001", "positive": "...", "negative": "...",
     "split": "train", "topic": "restaurant"}

Discovery
---------
Files are looked up, on every call (so a dropped-in file shows up at once), in

1. folders added with :func:`register_dir` (most recently added first),
2. folders named in the ``WORKBENCH_PROBES`` environment variable
   (``os.pathsep``-separated, in order),
3. the folder of this package (the sets shipped with the project).

If the same ``<name>.v<N>`` exists in several folders, the first one in that
order wins, so users can shadow a shipped set.  ``load_set(name)`` returns the
highest version; ``load_set(name, version=2)`` a specific one;
``load_set("path/to/file.jsonl")`` loads any file directly.

This module uses only the standard library and never imports ``workbench``.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Pair",
    "ProbeSet",
    "ProbeSetError",
    "UnknownProbeSetError",
    "list_sets",
    "list_versions",
    "load_set",
    "load_file",
    "register_dir",
    "unregister_dir",
    "search_dirs",
    "set_path",
    "ENV_VAR",
    "PACKAGE_DIR",
]

ENV_VAR = "WORKBENCH_PROBES"
PACKAGE_DIR = Path(__file__).resolve().parent
SPLITS = ("train", "test")

_FILE_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_\-]*)\.v(?P<version>\d+)\.jsonl$")
_REQUIRED = ("id", "positive", "negative")
_META_KEYS = {
    "name",
    "version",
    "description",
    "positive_label",
    "negative_label",
    "concept_words",
    "neutral_prompts",
}

_registered: list[Path] = []


class ProbeSetError(ValueError):
    """A probe-set file is malformed (message names the file and line)."""


class UnknownProbeSetError(ProbeSetError, LookupError):
    """No registered probe set (or version) by that name."""


@dataclass(frozen=True)
class Pair:
    id: str
    positive: str
    negative: str
    split: str = "train"
    topic: str = ""


@dataclass
class ProbeSet:
    name: str
    version: int
    description: str = ""
    positive_label: str = "positive"
    negative_label: str = "negative"
    concept_words: list[str] = field(default_factory=list)
    neutral_prompts: list[str] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    path: Path | None = None
    has_meta: bool = False

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)

    @property
    def key(self) -> str:
        """``"<name>.v<version>"``, handy for provenance records."""
        return f"{self.name}.v{self.version}"

    def split(self, split: str | None) -> list[Pair]:
        if split is None:
            return list(self.pairs)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} or None")
        return [p for p in self.pairs if p.split == split]

    def train(self) -> list[Pair]:
        return self.split("train")

    def test(self) -> list[Pair]:
        return self.split("test")

    def as_tuples(self, split: str | None = None) -> list[tuple[str, str]]:
        """``[(positive, negative), ...]`` for the given split (all pairs when None)."""
        return [(p.positive, p.negative) for p in self.split(split)]

    def positives(self, split: str | None = None) -> list[str]:
        return [p.positive for p in self.split(split)]

    def negatives(self, split: str | None = None) -> list[str]:
        return [p.negative for p in self.split(split)]


# --------------------------------------------------------------------------- discovery


def register_dir(path: str | os.PathLike) -> Path:
    """Add a folder of ``*.vN.jsonl`` files to the registry (searched before the shipped sets)."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise NotADirectoryError(f"probe folder does not exist or is not a directory: {p}")
    if p in _registered:
        _registered.remove(p)
    _registered.insert(0, p)
    return p


def unregister_dir(path: str | os.PathLike) -> None:
    """Remove a folder added with :func:`register_dir` (no error if it was not registered)."""
    p = Path(path).expanduser().resolve()
    if p in _registered:
        _registered.remove(p)


def search_dirs() -> list[Path]:
    """Folders searched for probe sets, highest priority first."""
    dirs: list[Path] = list(_registered)
    for part in os.environ.get(ENV_VAR, "").split(os.pathsep):
        part = part.strip()
        if part:
            dirs.append(Path(part).expanduser().resolve())
    dirs.append(PACKAGE_DIR)
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def _index() -> dict[str, dict[int, Path]]:
    index: dict[str, dict[int, Path]] = {}
    for d in search_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            m = _FILE_RE.match(f.name)
            if not m or not f.is_file():
                continue
            versions = index.setdefault(m["name"], {})
            versions.setdefault(int(m["version"]), f)  # first folder wins
    return index


def list_sets() -> list[str]:
    """Names of all registered probe sets, sorted."""
    return sorted(_index())


def list_versions(name: str) -> list[int]:
    """Versions available for ``name``, ascending."""
    index = _index()
    if name not in index:
        raise _unknown(name, index)
    return sorted(index[name])


def _unknown(name: str, index: dict[str, dict[int, Path]]) -> UnknownProbeSetError:
    avail = ", ".join(sorted(index)) or "(none)"
    return UnknownProbeSetError(
        f"unknown probe set {name!r}; available: {avail}. "
        f"Drop a '<name>.v1.jsonl' into one of: {', '.join(str(d) for d in search_dirs())}"
    )


def set_path(name: str, version: int | None = None) -> Path:
    """Path of the file that backs ``name`` (latest version unless given)."""
    index = _index()
    if name not in index:
        raise _unknown(name, index)
    versions = index[name]
    if version is None:
        version = max(versions)
    if int(version) not in versions:
        raise UnknownProbeSetError(
            f"probe set {name!r} has no version {version}; available versions: {sorted(versions)}"
        )
    return versions[int(version)]


def _looks_like_path(name: str) -> bool:
    return name.endswith(".jsonl") or os.sep in name or (os.altsep is not None and os.altsep in name)


def load_set(name: str | os.PathLike, version: int | None = None) -> ProbeSet:
    """Load a registered probe set by name (latest version by default) or a JSONL file by path."""
    if isinstance(name, os.PathLike) or _looks_like_path(str(name)):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"probe-set file not found: {path}")
        ps = load_file(path)
        if version is not None and ps.version != int(version):
            raise UnknownProbeSetError(f"{path}: file holds version {ps.version}, not {version}")
        return ps
    return load_file(set_path(str(name), version))


# --------------------------------------------------------------------------- parsing


def _auto_split(pair_id: str) -> str:
    """Deterministic ~75/25 split for user files that leave ``split`` out."""
    return "test" if zlib.crc32(pair_id.encode("utf-8")) % 4 == 0 else "train"


def _str_list(value, where: str, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProbeSetError(f"{where}: _meta.{key} must be a list of strings")
    return list(value)


def load_file(path: str | os.PathLike) -> ProbeSet:
    """Parse and validate one probe-set JSONL file."""
    path = Path(path)
    m = _FILE_RE.match(path.name)
    file_name = m["name"] if m else path.name.removesuffix(".jsonl")
    file_version = int(m["version"]) if m else None

    meta: dict | None = None
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ProbeSetError(f"{path}: not valid UTF-8 ({e})") from e

    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProbeSetError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(obj, dict):
            raise ProbeSetError(f"{where}: expected a JSON object, got {type(obj).__name__}")

        if "_meta" in obj:
            if meta is not None or pairs:
                raise ProbeSetError(f"{where}: the _meta header must be the first line of the file")
            meta = obj["_meta"]
            if not isinstance(meta, dict):
                raise ProbeSetError(f"{where}: _meta must be a JSON object")
            unknown = set(meta) - _META_KEYS
            if unknown:
                raise ProbeSetError(
                    f"{where}: unknown _meta field(s) {sorted(unknown)}; allowed: {sorted(_META_KEYS)}"
                )
            continue

        missing = [k for k in _REQUIRED if k not in obj]
        if missing:
            raise ProbeSetError(f"{where}: missing field(s) {missing}; each pair needs {list(_REQUIRED)}")
        for k in ("id", "positive", "negative"):
            if not isinstance(obj[k], str) or not obj[k].strip():
                raise ProbeSetError(f"{where}: field {k!r} must be a non-empty string")
        pid = obj["id"]
        if obj["positive"] == obj["negative"]:
            raise ProbeSetError(f"{where}: pair {pid!r} has identical positive and negative text")
        if pid in seen:
            raise ProbeSetError(f"{where}: duplicate id {pid!r} (first seen on line {seen[pid]})")
        seen[pid] = lineno
        split = obj.get("split")
        if split is None:
            split = _auto_split(pid)
        elif split not in SPLITS:
            raise ProbeSetError(f"{where}: split must be one of {list(SPLITS)}, got {split!r}")
        topic = obj.get("topic", "")
        if not isinstance(topic, str):
            raise ProbeSetError(f"{where}: field 'topic' must be a string")
        pairs.append(Pair(id=pid, positive=obj["positive"], negative=obj["negative"], split=split, topic=topic))

    if not pairs:
        raise ProbeSetError(f"{path}: no pairs found")

    where = f"{path}:1"
    meta_d = meta or {}
    name = meta_d.get("name", file_name)
    if not isinstance(name, str) or not name:
        raise ProbeSetError(f"{where}: _meta.name must be a non-empty string")
    if m and name != file_name:
        raise ProbeSetError(f"{where}: _meta.name {name!r} does not match the file name {path.name!r}")
    version = meta_d.get("version", file_version if file_version is not None else 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ProbeSetError(f"{where}: _meta.version must be an integer >= 1, got {version!r}")
    if file_version is not None and version != file_version:
        raise ProbeSetError(
            f"{where}: _meta.version {version} does not match the file name {path.name!r}"
        )
    for key in ("description", "positive_label", "negative_label"):
        if key in meta_d and not isinstance(meta_d[key], str):
            raise ProbeSetError(f"{where}: _meta.{key} must be a string")

    return ProbeSet(
        name=name,
        version=version,
        description=meta_d.get("description", ""),
        positive_label=meta_d.get("positive_label", "positive"),
        negative_label=meta_d.get("negative_label", "negative"),
        concept_words=_str_list(meta_d.get("concept_words"), where, "concept_words"),
        neutral_prompts=_str_list(meta_d.get("neutral_prompts"), where, "neutral_prompts"),
        pairs=pairs,
        path=path,
        has_meta=meta is not None,
    )


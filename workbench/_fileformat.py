"""Checks on files before they are parsed: is it there, is it a file, and is a safetensors
file whole.

`safetensors_header` reads only the 8-byte length and the JSON header of a safetensors
file (never the tensor data) and checks that every tensor's bytes lie inside the file, so
a truncated or corrupt file is reported as such, naming the file, before anything is
loaded. A file that is not safetensors at all is told apart by its first bytes (a
PyTorch zip / pickle, GGUF, empty) only after the safetensors structure was refused: the
8-byte length of a real safetensors file can start with any byte. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .errors import FileFormatError, InputError, MissingFileError

MAX_SAFETENSORS_HEADER = 100_000_000  # the limit the safetensors library itself enforces


def check_file(path: Any, what: str) -> str:
    """`path` as a string, refusing an empty path, a missing file and a folder (each named)."""
    p = os.fspath(path) if path is not None else ""
    if not p:
        raise InputError(f"no {what} path given")
    if os.path.isdir(p):
        raise FileFormatError(f"{p} is a folder, not a {what} file; give the path of the file itself")
    if not os.path.exists(p):
        raise MissingFileError(f"{what} file {p} does not exist")
    return p


def sniff(head: bytes) -> str | None:
    """What the first bytes of a file that is not safetensors suggest it is."""
    if head.startswith(b"PK\x03\x04"):
        return "it looks like a PyTorch (.pt, zip) file, which is never unpickled here"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it looks like a pickle file, which is never unpickled here"
    if head.startswith(b"GGUF"):
        return "it is a GGUF file (read it with SteeringVector.from_gguf / steering.load_vector)"
    return None


def safetensors_header(path: str, what: str) -> tuple[dict[str, str], dict[str, dict]]:
    """(metadata, tensors) of the safetensors file `path`: tensors maps each name to its
    header entry (`dtype`, `shape`, `data_offsets`). Reads only the header. Raises
    FileFormatError naming the file when it is empty, truncated, corrupt or another kind."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
        if size == 0:
            raise FileFormatError(f"{path}: the {what} file is empty (0 bytes)")
        n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
        looks_safetensors = len(head) >= 9 and head[8:9] == b"{" and 2 <= n <= MAX_SAFETENSORS_HEADER
        if not looks_safetensors:
            kind = sniff(head)
            if kind is not None:
                raise FileFormatError(f"{path} is not a {what} file: {kind}")
            if size < 8:
                raise FileFormatError(f"{path}: the {what} file is {size} bytes, too short to be safetensors (truncated?)")
            raise FileFormatError(
                f"{path} is not a {what} file: it is not safetensors (it does not start with a safetensors "
                "header: an 8-byte length followed by a JSON object)"
            )
        if 8 + n > size:
            raise FileFormatError(
                f"{path}: the safetensors {what} file is truncated: its header is {n} bytes but the file "
                f"ends {size - 8} bytes after the length field (copy the file again)"
            )
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileFormatError(f"{path}: the safetensors {what} file is corrupt: its header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{path}: the safetensors {what} file is corrupt: its header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise FileFormatError(f"{path}: the safetensors {what} file is corrupt: '__metadata__' must map strings to strings")
    data_size = size - 8 - n
    for name, info in header.items():
        ok = (
            isinstance(info, dict)
            and isinstance(info.get("dtype"), str)
            and isinstance(info.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"])
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in info["data_offsets"])
            and info["data_offsets"][0] <= info["data_offsets"][1]
        )
        if not ok:
            raise FileFormatError(
                f"{path}: the safetensors {what} file is corrupt: the header entry of tensor {name!r} needs "
                "'dtype', 'shape' and 'data_offsets' [begin, end]"
            )
        end = info["data_offsets"][1]
        if end > data_size:
            raise FileFormatError(
                f"{path}: the safetensors {what} file is truncated: tensor {name!r} ends at byte {end} of the data "
                f"but the file holds only {data_size} data bytes (copy the file again)"
            )
    return meta, header

"""Arguments shared by several commands."""

from __future__ import annotations

import argparse
import json
import math
import os


def add_model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("model", nargs="?", default="smollm2-135m", help="registry name, local path or hub id (default: smollm2-135m)")
    else:
        p.add_argument("--model", default="smollm2-135m", help="registry name, local path or hub id (default: smollm2-135m)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default: auto)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run (off by default)")


def finite_float(text: str) -> float:
    """argparse type: a finite number ("nan" and "inf" parse as floats but would switch
    features off or blow up silently)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def check_input_file(path: str, flag: str, what: str) -> str:
    """An input file named on the command line, checked before a model is loaded: it must
    exist (MissingFileError) and be a file, not a folder (FileFormatError)."""
    from ..errors import FileFormatError, MissingFileError

    if not os.path.exists(path):
        raise MissingFileError(f"{flag} {path!r} does not exist; give the path of a {what} file")
    if os.path.isdir(path):
        raise FileFormatError(f"{flag} {path!r} is a folder, not a {what} file; give the path of the file itself")
    return path


def check_token_id(value: int | None, flag: str, bench) -> int | None:
    """A token id given on the command line: an integer in [0, vocab size) of `bench`."""
    from ..errors import InputError

    if value is None:
        return None
    vocab = int(bench.arch.vocab_size)
    if not 0 <= value < vocab:
        raise InputError(f"{flag} {value} is not a token id of {bench.name} (vocab size {vocab}: valid ids are 0..{vocab - 1})")
    return value


def load_from_args(args):
    from ..models import load

    return load(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))

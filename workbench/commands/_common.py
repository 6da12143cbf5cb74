"""Arguments shared by several commands."""

from __future__ import annotations

import argparse
import json


def add_model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("model", nargs="?", default="smollm2-135m", help="registry name, local path or hub id (default: smollm2-135m)")
    else:
        p.add_argument("--model", default="smollm2-135m", help="registry name, local path or hub id (default: smollm2-135m)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default: auto)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run (off by default)")


def load_from_args(args):
    from ..models import load

    return load(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))

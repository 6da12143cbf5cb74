"""`workbench demo`: a real generation and a logit-lens table on a model (default: the
embedded SmolLM2), streamed to the terminal."""

from __future__ import annotations

import sys
import time

from ._common import add_model_args, load_from_args


def register(sub) -> None:
    p = sub.add_parser("demo", help="load a model, stream a generation and print a logit-lens table")
    add_model_args(p)
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--lens-prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from ..generate import generate_stream
    from ..lens import logit_lens

    t = time.perf_counter()
    bench = load_from_args(args)
    print(f"loaded {bench!r} in {time.perf_counter() - t:.1f} s")
    print(f"\n> {args.prompt}\n")
    for step in generate_stream(bench, args.prompt, max_new_tokens=args.max_new_tokens, decode_stream=True):
        sys.stdout.write(step.text[0])
        sys.stdout.flush()
    layers = sorted({round(i * (bench.arch.n_layers - 1) / 6) for i in range(7)})
    print(f"\n\nlogit lens of {args.lens_prompt!r} (next-token readout of each layer's residual):\n")
    print(logit_lens(bench, args.lens_prompt, layers, k=4).table())
    return 0

"""`workbench info|generate|lens|models`."""

from __future__ import annotations

import sys

from ._common import add_model_args, finite_float, load_from_args, print_json


def register(sub) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=_models)

    p = sub.add_parser("info", help="architecture summary of a model")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser("generate", help="generate text (streamed)")
    add_model_args(p, positional=False)
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=finite_float, default=0.0)
    p.add_argument("--top-p", type=finite_float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--raw", action="store_true", help="raw text, no chat template")
    p.add_argument("--fast", choices=("auto", "on", "off"), default="auto",
                   help="static-state / CUDA-graph decode path: auto = on a GPU (default), on = also on the CPU, off = eager forward")
    p.set_defaults(func=_generate)

    p = sub.add_parser("lens", help="logit lens: top next tokens read from each layer's residual")
    add_model_args(p, positional=False)
    p.add_argument("prompt")
    p.add_argument("--layer", type=int, action="append", help="layer(s) to read (repeatable; default: all)")
    p.add_argument("--position", type=int, default=-1)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--chat", action="store_true", help="render the prompt as a user turn first")
    p.set_defaults(func=_lens)


def _models(args) -> int:
    from ..models import DEFAULT_MODEL, available_models

    for name, desc in available_models().items():
        print(f"{name:22s} {desc}{'  [default]' if name == DEFAULT_MODEL else ''}")
    return 0


def _info(args) -> int:
    bench = load_from_args(args)
    a = bench.arch
    if args.json:
        print_json({"name": bench.name, "source": bench.source, **a.to_dict()})
        return 0
    kinds = {}
    for t in a.layer_types:
        kinds[t] = kinds.get(t, 0) + 1
    print(f"model          {bench.name}  ({bench.source})")
    print(f"family         {a.family}")
    print(f"layers         {a.n_layers}  ({', '.join(f'{n} x {k}' for k, n in kinds.items())})")
    print(f"attention at   {list(a.attention_layers)}")
    print(f"d_model        {a.d_model}   heads {a.n_heads} (kv {a.n_kv_heads}, head_dim {a.head_dim})")
    print(f"vocab          {a.vocab_size}   context {a.max_positions}")
    print(f"embedding RMS  {a.embed_rms:.4f}   mean row norm {a.embed_norm:.3f}   (over the {a.embed_rows} non-zero rows)")
    print(f"layer_at(0.75) {a.layer_at(0.75)}")
    return 0


def _generate(args) -> int:
    from ..generate import generate_stream

    bench = load_from_args(args)
    for step in generate_stream(
        bench,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        chat=not args.raw,
        decode_stream=True,
        fast={"auto": "auto", "on": True, "off": False}[args.fast],
    ):
        sys.stdout.write(step.text[0])
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _lens(args) -> int:
    from ..lens import logit_lens

    bench = load_from_args(args)
    res = logit_lens(bench, args.prompt, args.layer, position=args.position, k=args.k, chat=args.chat)
    print(res.table())
    return 0

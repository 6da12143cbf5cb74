"""`workbench steer extract|sweep|generate|export`: steering vectors from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import InputError

from ._common import add_model_args, check_input_file, finite_float, load_from_args, print_json


def register(sub) -> None:
    p = sub.add_parser("steer", help="steering vectors: extract, sweep layers, steered generation, export")
    ss = p.add_subparsers(dest="steer_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    e = ss.add_parser("extract", help="extract a steering vector from contrast pairs; writes safetensors (or GGUF)")
    add_model_args(e, positional=False)
    _pair_args(e)
    e.add_argument("--layer", type=int, action="append", help="layer(s) to extract (repeatable; default: every layer)")
    e.add_argument("--scale", type=finite_float, default=1.0, help="default multiplier stored in the vector")
    e.add_argument("--out", required=True, help="output file: .safetensors (default format) or .gguf")
    e.set_defaults(func=_extract)

    s = ss.add_parser("sweep", help="per-layer quality of a method over all layers in one batched pass")
    add_model_args(s, positional=False)
    _pair_args(s)
    s.add_argument("--layer", type=int, action="append", help="layer(s) to sweep (repeatable; default: every layer)")
    s.add_argument("--test-fraction", type=finite_float, default=0.25, help="held-out share when the pairs carry no split")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--plot", help="write the sweep figure as HTML here")
    s.add_argument("--save-best", help="write the best layer's vector (fit on the train pairs) here")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.set_defaults(func=_sweep)

    g = ss.add_parser("generate", help="steered generation (with the KL side-effect report)")
    add_model_args(g, positional=False)
    g.add_argument("prompt")
    g.add_argument("--vector", action="append", required=True, help="steering vector file (.safetensors or .gguf; repeatable)")
    g.add_argument("--scale", type=finite_float, action="append", help="multiplier per --vector (default: the vector's own)")
    g.add_argument("--layer", type=int, action="append", help="only these layers of the vector(s)")
    g.add_argument("--where", choices=("all", "prompt", "generated"), default="all", help="positions to steer")
    g.add_argument("--ablate", action="store_true", help="project the direction(s) out instead of adding them")
    g.add_argument("--compare", action="store_true", help="also print the unsteered generation")
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--temperature", type=finite_float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--raw", action="store_true", help="raw text, no chat template")
    g.add_argument("--concept-words", help="comma-separated words whose log-probability shift to report")
    g.set_defaults(func=_generate)

    x = ss.add_parser("export", help="convert a vector: safetensors -> GGUF (llama.cpp control vector) or back")
    x.add_argument("vector", help="input file (.safetensors from workbench, or a .gguf control vector)")
    x.add_argument("--out", required=True, help="output file (.gguf when the input is safetensors, else .safetensors)")
    x.add_argument("--multiplier", type=finite_float, default=None, help="bake this multiplier into a GGUF export")
    x.add_argument("--layer", type=int, action="append", help="export only these layers")
    x.add_argument("--model-hint", default=None, help="controlvector.model_hint (default: the model family)")
    x.set_defaults(func=_export)


def _pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", required=True, help="probe set name (e.g. sentiment) or a JSONL file of pairs")
    p.add_argument("--split", choices=("train", "test", "all"), default="all", help="probe-set split to use")
    p.add_argument("--method", default="mean_diff", help="mean_diff (default), pca or logistic")
    p.add_argument("--normalize", action="store_true", help="unit-norm directions")
    p.add_argument("--position", default="-1", help="token position: -1 (last, default), an int, 'mean', or a slice a:b")
    p.add_argument("--chat", action="store_true", help="render each prompt as a user turn first")
    p.add_argument("--batch-size", type=int, default=16)


def parse_position(text: str):
    """'-1' -> -1, 'mean' -> 'mean', '2:5' / ':3' / '-4:' -> slice."""
    t = text.strip()
    if t in ("mean", "all"):
        return "mean"
    if ":" in t:
        parts = t.split(":")
        if len(parts) > 3:
            raise InputError(f"position slice {text!r} has too many ':'; use start:stop[:step]")
        try:
            return slice(*(int(x) if x.strip() else None for x in parts))
        except ValueError:
            raise InputError(f"position slice {text!r} must hold integers, e.g. 2:5 or -4:") from None
    try:
        return int(t)
    except ValueError:
        raise InputError(f"position must be an int, 'mean' or a slice a:b, got {text!r}") from None


def _pairs(args):
    import probes

    from ..steering.extract import resolve_pairs

    ps = probes.load_set(args.pairs)
    return ps, resolve_pairs(ps, None if args.split == "all" else args.split)


def _method(args):
    from ..steering.methods import get_method

    return get_method(args.method, normalize=args.normalize)


def _check_out(path: str, suffixes: tuple[str, ...]) -> None:
    import os

    from ..errors import MissingFileError, check_writable_target

    if not path.endswith(suffixes):
        raise InputError(f"output file {path!r} must end with one of {', '.join(suffixes)}")
    check_writable_target(path, "output file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise MissingFileError(f"output folder {parent!r} of {path!r} does not exist; create it first")


def _write_vector(vec, path: str, **gguf_kwargs) -> None:
    if path.endswith(".gguf"):
        vec.to_gguf(path, **gguf_kwargs)
    else:
        vec.save(path)


def _extract(args) -> int:
    from ..steering.extract import extract

    _check_out(args.out, (".safetensors", ".gguf"))
    position = parse_position(args.position)
    method = _method(args)
    _, plist = _pairs(args)
    bench = load_from_args(args)
    if args.layer:
        for layer in args.layer:
            bench.arch.check_layer(layer)
    vec = extract(bench, plist, args.layer, method, position, chat=args.chat, batch_size=args.batch_size,
                  progress=True, scale=args.scale)
    vec = _with_probe_set(vec, plist.probe_set)
    _write_vector(vec, args.out)
    print(f"extracted {vec.method} vector from {len(plist)} pairs at layers {vec.layers} of {bench.name}")
    for layer in vec.layers:
        print(f"  layer {layer:3d}  ||v|| = {float(vec.directions[layer].norm()):.4g}")
    print(f"wrote {args.out}")
    return 0


def _with_probe_set(vec, probe_set):
    import dataclasses

    if probe_set and not vec.metadata.get("probe_set"):
        return dataclasses.replace(vec, metadata={**vec.metadata, "probe_set": probe_set})
    return vec


def _sweep(args) -> int:
    from ..steering.extract import sweep

    if args.plot:
        _check_out(args.plot, (".html",))
    if args.save_best:
        _check_out(args.save_best, (".safetensors", ".gguf"))
    position = parse_position(args.position)
    method = _method(args)
    _, plist = _pairs(args)
    bench = load_from_args(args)
    res = sweep(bench, plist, args.layer, method, position, test_fraction=args.test_fraction, seed=args.seed,
                chat=args.chat, batch_size=args.batch_size, progress=True)
    rows = res.to_rows()
    if args.json:
        print_json({"best_layer": res.best_layer, "n_train": len(res.train_index), "n_test": len(res.test_index), "rows": rows})
    else:
        print(f"{'layer':>5} {'magnitude':>10} {'consistency':>11} {'probe_acc':>9} {'gap':>8}")
        for r in rows:
            mark = "  <- best" if r["best"] else ""
            print(f"{r['layer']:5d} {r['magnitude']:10.4g} {r['consistency']:11.3f} {r['probe_accuracy']:9.3f} {r['gap']:8.3f}{mark}")
        print(f"best layer: {res.best_layer} ({len(res.train_index)} train / {len(res.test_index)} test pairs, {res.result.method})")
    if args.plot:
        from ..paths import atomic_write_text

        atomic_write_text(args.plot, res.figure().to_html(include_plotlyjs="cdn"))
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    if args.save_best:
        _write_vector(_with_probe_set(res.best_vector(), plist.probe_set), args.save_best)
        print(f"wrote {args.save_best}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _generate(args) -> int:
    from ..generate import generate_stream
    from ..steering.apply import as_edits, compare_stream, load_vector, steer_report

    for path in args.vector:
        check_input_file(path, "--vector", "steering vector (.safetensors or .gguf)")
    bench = load_from_args(args)
    vecs = [load_vector(path, bench) for path in args.vector]
    scales = args.scale or []
    if len(scales) not in (0, 1, len(vecs)):
        raise InputError(f"give one --scale, or one per --vector ({len(vecs)}); got {len(scales)}")
    specs = []
    for i, vec in enumerate(vecs):
        layers = [layer for layer in args.layer if layer in vec.directions] if args.layer else None
        if args.layer and not layers:
            raise InputError(f"{args.vector[i]}: none of --layer {args.layer} is in the vector (it has {vec.layers})")
        if args.ablate:
            specs.append(vec.ablate(scales[min(i, len(scales) - 1)] if scales else 1.0, args.where, layers))
        else:
            specs.append(vec.steer(scales[min(i, len(scales) - 1)] if scales else None, args.where, layers))
    as_edits(specs, bench)
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                  chat=not args.raw, decode_stream=True)
    for spec in specs:
        what = "ablate" if args.ablate else f"add x{spec.amount:g}"
        print(f"[{what} {spec.vector.method} at layers {list(spec.layers or spec.vector.layers)}, where={args.where}]")
    if args.compare:  # the web app's side-by-side: one batched run, plain row and steered row
        kwargs.pop("decode_stream")
        plain, steered = "", ""
        for plain, steered in compare_stream(bench, args.prompt, specs, **kwargs):
            pass
        print(f"--- unsteered ---\n{plain}\n--- steered ---\n{steered}")
    else:
        _stream(generate_stream(bench, args.prompt, steer=specs, **kwargs))
    words = [w if w.startswith(" ") else " " + w for w in args.concept_words.split(",")] if args.concept_words else None
    rep = steer_report(bench, specs, concept_words=words)
    print(rep.summary())
    return 0


def _stream(steps) -> None:
    for step in steps:
        sys.stdout.write(step.text[0])
        sys.stdout.flush()
    sys.stdout.write("\n")


def _export(args) -> int:
    from ..steering.apply import load_vector

    check_input_file(args.vector, "vector", "steering vector (.safetensors or .gguf)")
    vec = load_vector(args.vector)
    to_gguf = not args.vector.endswith(".gguf") and not _is_gguf(args.vector)
    _check_out(args.out, (".gguf",) if to_gguf else (".safetensors",))
    if args.layer:
        vec = vec.select(args.layer)
    if to_gguf:
        vec.to_gguf(args.out, model_hint=args.model_hint, multiplier=args.multiplier)
        what = "llama.cpp control vector (GGUF)"
    else:
        if args.multiplier is not None:
            vec = vec.scaled(args.multiplier)
        vec.save(args.out)
        what = "workbench steering vector (safetensors)"
    print(json.dumps({"layers": vec.layers, "d_model": vec.d_model, "family": vec.model_family}))
    print(f"wrote {args.out} ({what})")
    return 0


def _is_gguf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"

"""`workbench sinks`: attention-sink statistics of prompts (optionally vs a random prefix)."""

from __future__ import annotations

import json

from ..errors import InputError
from ._common import add_model_args, check_input_file, finite_float, load_from_args, print_json


def register(sub) -> None:
    p = sub.add_parser("sinks", help="attention sinks: alpha_0 per layer/head, sink rate, massive activations")
    add_model_args(p, positional=False)
    p.add_argument("prompt", nargs="*", help="prompt(s); or use --prompt-file")
    p.add_argument("--prompt-file", help="text file, one prompt per line")
    p.add_argument("--eps", type=finite_float, default=0.3, help="sink threshold on alpha_0, in (0, 1) (default 0.3)")
    p.add_argument("-k", type=int, default=4, help="leading key positions tracked (default 4)")
    p.add_argument("--chat", action="store_true", help="render each prompt as a user turn first")
    p.add_argument("--prefix-len", type=int, default=0, help="also run with this many random prefix vectors and compare")
    p.add_argument("--prefix-seed", type=int, default=0)
    p.add_argument("--prefix-scale", type=finite_float, default=1.0)
    p.add_argument("--placement", choices=["start", "after_bos"], default="start")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--out", help="write the summary and per-layer/head alpha as JSON (atomic)")
    p.add_argument("--html", help="write the figures as one HTML file (atomic)")
    p.set_defaults(func=_sinks)


def _prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        check_input_file(args.prompt_file, "--prompt-file", "text")
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise InputError("give at least one prompt (positional) or --prompt-file")
    return prompts


def _sinks(args) -> int:
    from ..paths import atomic_write_text
    from ..prefix import RandomPrefix
    from ..sinks import check_eps, compare_prefix, inspect

    check_eps(args.eps)
    prompts = _prompts(args)
    if args.prefix_len < 0:
        raise InputError(f"--prefix-len must be >= 0 (0 = no prefix comparison), got {args.prefix_len}")
    prefix = RandomPrefix(args.prefix_len, args.prefix_seed, args.prefix_scale, args.placement) if args.prefix_len else None
    bench = load_from_args(args)
    comp = None
    if prefix is not None:
        comp = compare_prefix(bench, prompts, prefix, args.eps, k=args.k, chat=args.chat, progress=True)
        report = comp.without
    else:
        report = inspect(bench, prompts, args.eps, k=args.k, chat=args.chat, progress=True)
    summary = {"sinks": report.summary(), **({"prefix": comp.summary()} if comp is not None else {})}
    if args.json:
        print_json(summary)
    else:
        print(report.table())
        if comp is not None:
            s = comp.summary()
            print(
                f"with a {args.prefix_len}-vector prefix at {s['prefix_positions']}: attention on the first token "
                f"{s['mean_bos_mass_without']:.3f} -> {s['mean_bos_mass_with']:.3f}, on the prefix {s['mean_prefix_mass']:.3f}; "
                f"sink rate {s['sink_rate_without']:.3f} -> {s['sink_rate_with']:.3f}"
            )
    if args.out:
        payload = {**summary, "alpha": report.alpha.tolist(), "layer_types": list(report.layer_types), "tokens": report.tokens}
        atomic_write_text(args.out, json.dumps(payload, default=str, allow_nan=True) + "\n")
        print(f"wrote {args.out}")
    if args.html:
        from ..viz import sinks as vs

        figs = [vs.sink_heatmap(report), vs.sink_rate_curve(report), vs.first_token_norm_curve(report)]
        if comp is not None:
            figs.append(vs.prefix_comparison(comp))
        html = "\n".join(f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs))
        atomic_write_text(args.html, f"<html><body>{html}</body></html>\n")
        print(f"wrote {args.html}")
    return 0

"""`workbench prefix eval`: random-prefix multi-seed evaluation on a task."""

from __future__ import annotations

import json

from ..errors import InputError
from ..tasks import list_tasks
from ._common import add_model_args, finite_float, load_from_args, print_json


def register(sub) -> None:
    p = sub.add_parser("prefix", help="random-prefix perturbation (evaluation on a task)")
    psub = p.add_subparsers(dest="prefix_command", metavar="SUBCOMMAND")
    e = psub.add_parser("eval", help="accuracy per prefix seed, mean, oracle coverage vs greedy and sampled baselines")
    add_model_args(e, positional=False)
    e.add_argument("--task", default="arith-easy", help=f"{'|'.join(list_tasks())} or a GSM8K-format .jsonl path")
    e.add_argument("--n-problems", type=int, default=20)
    e.add_argument("--task-seed", type=int, default=None)
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="prefix seeds (default: 0 1 2 3)")
    e.add_argument("--n-samples", type=int, default=None, help="sampled no-prefix runs (default: as many as seeds)")
    e.add_argument("--prefix-len", type=int, default=2, help="number of random vectors (default 2)")
    e.add_argument("--scale", type=finite_float, default=1.0, help="RMS as a multiple of the embedding RMS (default 1)")
    e.add_argument("--placement", choices=["start", "after_bos"], default="start")
    e.add_argument("--temperature", type=finite_float, default=0.7, help="temperature of the sampled baseline")
    e.add_argument("--top-p", type=finite_float, default=1.0)
    e.add_argument("--max-new-tokens", type=int, default=128)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--raw", action="store_true", help="no chat template")
    e.add_argument("--out", help="write the summary and every attempt as JSON (atomic)")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.set_defaults(func=_eval)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _eval(args) -> int:
    from ..paths import atomic_write_text
    from ..prefix import RandomPrefix, evaluate_prefix
    from ..tasks import load_task

    RandomPrefix(n=args.prefix_len, seed=0, scale=args.scale, placement=args.placement)  # reject bad input before loading
    if args.n_problems < 1:
        raise InputError(f"--n-problems must be >= 1, got {args.n_problems}")
    problems = load_task(args.task, n=args.n_problems, seed=args.task_seed)
    bench = load_from_args(args)
    res = evaluate_prefix(
        bench,
        problems,
        seeds=args.seeds,
        n_samples=args.n_samples,
        n=args.prefix_len,
        scale=args.scale,
        placement=args.placement,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        chat=not args.raw,
        progress=True,
    )
    s = res.summary()
    if args.json:
        print_json(s)
    else:
        print(f"task {args.task}: {s['n_problems']} problems, model {bench.name}")
        print(f"greedy, no prefix          accuracy {s['baseline_accuracy']:.3f}")
        for seed, acc in zip(s["seeds"], s["per_seed_accuracy"]):
            print(f"prefix seed {seed:<6}         accuracy {acc:.3f}")
        print(f"prefix mean accuracy {s['mean_accuracy']:.3f}   oracle coverage ({len(s['seeds'])} seeds) {s['oracle_coverage']:.3f}")
        if s["n_samples"]:
            print(
                f"sampled T={args.temperature} mean accuracy {s['sampled_mean_accuracy']:.3f}   "
                f"coverage ({s['n_samples']} samples) {s['sampled_coverage']:.3f}"
            )
    if args.out:
        payload = {"summary": s, "attempts": {k: [a.to_dict() for a in v] for k, v in res.attempts.items()}}
        atomic_write_text(args.out, json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0

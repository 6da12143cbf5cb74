"""`workbench bench NAME`: benchmarks, reported as ratios measured in one run.

Each benchmark is a module `workbench/bench/<name>.py` with `add_arguments(parser)` and
`run(args) -> dict`; results print as a table and can be saved as JSON (`--out`).
"""

from __future__ import annotations

import importlib
import json
import pkgutil


def register(sub) -> None:
    from .. import bench as bench_pkg

    p = sub.add_parser("bench", help="benchmarks (ratios against a baseline in the same run)")
    names = sub_bench = p.add_subparsers(dest="bench", metavar="NAME")
    for info in sorted(pkgutil.iter_modules(bench_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{bench_pkg.__name__}.{info.name}")
        bp = sub_bench.add_parser(info.name.replace("_", "-"), help=(mod.__doc__ or "").strip().splitlines()[0])
        bp.add_argument("--out", help="write the result as JSON to this file (atomic)")
        mod.add_arguments(bp)
        bp.set_defaults(func=_runner(mod))
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    del names


def _runner(mod):
    def run(args) -> int:
        from ..bench._report import print_report
        from ..paths import atomic_write_text

        result = mod.run(args)
        print_report(result)
        if args.out:
            atomic_write_text(args.out, json.dumps(result, indent=2, default=str) + "\n")
            print(f"wrote {args.out}")
        return 0

    return run

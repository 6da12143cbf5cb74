"""`workbench latent run|eval|inspect`: latent reasoning from the command line."""

from __future__ import annotations

import json

from ..tasks import list_tasks
from ._common import add_model_args, check_token_id, finite_float, load_from_args, print_json

METHODS = ("coconut", "projection", "latent-head", "soft", "trained")


def _add_policy_args(p, multiple: bool = False) -> None:
    if multiple:
        p.add_argument("--methods", default="coconut,soft,cot,no-think",
                       help=f"comma-separated: {', '.join(METHODS)}, cot, no-think (default: coconut,soft,cot,no-think)")  # fmt: skip
    else:
        p.add_argument("--method", choices=METHODS, default="coconut")
    p.add_argument("--head", help="head file/folder or hub reference (projection / latent-head), or a recipe's final folder (trained)")
    p.add_argument("--steps", type=int, default=None, help="latent steps (fixed count, or the budget)")
    p.add_argument("--chunk-size", type=int, default=None, help="latent head: positions per latent vector")
    p.add_argument("--max-internal-tokens", type=int, default=None, help="latent head: budget in positions")
    p.add_argument("--think-close-id", type=int, default=None, help="latent head: the </think> token id")
    p.add_argument("--soft-temperature", type=finite_float, default=0.6)
    p.add_argument("--soft-top-k", type=int, default=15)
    p.add_argument("--soft-top-p", type=finite_float, default=0.95)
    p.add_argument("--cold-entropy", type=finite_float, default=0.01)
    p.add_argument("--cold-patience", type=int, default=8)
    p.add_argument("--end-marker", default=None, help="coconut / projection: token fed after the last latent step")


def check_policy_args(args, methods) -> None:
    """What can be refused before a model is loaded: counts that must be positive (an
    explicit `--steps 0` is an error, never the default), a missing --head, ids < 0."""
    from ..errors import InputError, check_int

    for flag, attr in (("--steps", "steps"), ("--chunk-size", "chunk_size"), ("--max-internal-tokens", "max_internal_tokens")):
        v = getattr(args, attr, None)
        if v is not None:
            check_int(v, flag, low=1)
    if getattr(args, "think_close_id", None) is not None:
        check_int(args.think_close_id, "--think-close-id", low=0)
    for method in methods:
        if method in ("projection", "latent-head", "trained") and not args.head:
            need = {"projection": "PATH (a projection_head.safetensors)", "latent-head": "PATH (latent_head.safetensors or its folder)",
                    "trained": "FOLDER (the 'final' folder a latent training recipe wrote)"}[method]  # fmt: skip
            raise InputError(f"--method {method} needs --head {need}")


def make_policy(args, method: str, bench=None):
    from .. import latent
    from ..errors import InputError

    steps = args.steps  # None: the method's default; an explicit count is passed through as given
    if bench is not None:
        check_token_id(args.think_close_id, "--think-close-id", bench)
    if method == "coconut":
        return latent.Coconut(steps=6 if steps is None else steps, end=args.end_marker)
    if method == "projection":
        if not args.head:
            raise InputError("--method projection needs --head PATH (a projection_head.pt / .safetensors)")
        return latent.ProjectionHead.load(args.head, steps=6 if steps is None else steps, end=args.end_marker)
    if method == "latent-head":
        if not args.head:
            raise InputError("--method latent-head needs --head PATH (latent_head.safetensors or its folder)")
        pol = latent.LatentHead.load(
            args.head, think_close_token_id=args.think_close_id, max_internal_tokens=args.max_internal_tokens, chunk_size=args.chunk_size
        )
        return pol if steps is None else pol.with_steps(steps)
    if method == "soft":
        return latent.SoftThinking(
            max_steps=64 if steps is None else steps, temperature=args.soft_temperature, top_k=args.soft_top_k, top_p=args.soft_top_p,
            cold_entropy=args.cold_entropy, cold_patience=args.cold_patience,
        )  # fmt: skip
    if method == "trained":
        if not args.head:
            raise InputError("--method trained needs --head FOLDER (the 'final' folder a latent training recipe wrote)")
        spec, _model = latent.load_policy(args.head)
        if spec == "cot":  # a model fine-tuned for explicit CoT (upft): scored as the CoT baseline
            return spec
        return spec if steps is None else spec.with_steps(steps)
    raise InputError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def register(sub) -> None:
    p = sub.add_parser("latent", help="latent reasoning: run, evaluate, inspect heads")
    lsub = p.add_subparsers(dest="latent_cmd", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])

    r = lsub.add_parser("run", help="run a prompt through a latent loop and read out each latent step")
    add_model_args(r, positional=False)
    r.add_argument("prompt")
    _add_policy_args(r)
    r.add_argument("--max-new-tokens", type=int, default=64)
    r.add_argument("--temperature", type=finite_float, default=0.0)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--raw", action="store_true", help="raw text, no chat template")
    r.add_argument("-k", type=int, default=5, help="tokens shown per readout")
    r.add_argument("--json", action="store_true")
    r.add_argument("--html", help="write the per-step figures as one HTML file")
    r.set_defaults(func=_run)

    e = lsub.add_parser("eval", help="accuracy / steps / exits / time per method vs CoT and no-thinking baselines")
    add_model_args(e, positional=False)
    _add_policy_args(e, multiple=True)
    e.add_argument("--task", default="arith-easy", help=f"{'|'.join(list_tasks())} or a GSM8K-format .jsonl")
    e.add_argument("-n", type=int, default=20, help="number of problems")
    e.add_argument("--seed", type=int, default=None)
    e.add_argument("--max-new-tokens", type=int, default=96)
    e.add_argument("--think-budget", type=int, default=128, help="CoT baseline: thinking tokens allowed")
    e.add_argument("--out", help="folder for results.jsonl, summary.json, summary.txt")
    e.set_defaults(func=_eval)

    t = lsub.add_parser("results", help="the README results table: train every latent recipe per seed on a micro model, score all methods "
                        "(run it again to resume a stopped table)")
    t.add_argument("--out", default="runs/latent-results", help="folder for the recipe runs, cells, results.json and results.md (per task)")
    t.add_argument("--task", default="arith", help="arith (arithmetic word problems) or graph (ProsQA-style graph reasoning)")
    t.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds per recipe (default 0,1,2)")
    t.add_argument("-n", type=int, default=100, help="held-out problems per difficulty")
    t.add_argument("--model", default=None, help="base model (a thinking model with </think>; default: the task's micro model)")
    t.add_argument("--no-soft", action="store_true", help="leave out the training-free soft-thinking row")
    t.add_argument("--retrain", action="store_true", help="train the recipes and score the cells again even if their output exists")
    from ..latent.results import RECIPE_ROWS

    t.add_argument("--recipes", default=None, help=f"comma-separated subset of {','.join(r for _, r in RECIPE_ROWS)}")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--runs", default=None, help="folder for the trained recipe runs (default: --out); with the cells in --out kept, "
                   "a (row, seed) scored before is not trained again")
    t.add_argument("--set", action="append", default=[], metavar="RECIPE.KEY=VALUE",
                   help="override a recipe's config field (value as JSON), e.g. coconut.epochs_per_stage=1; repeatable; recorded in the table")
    t.set_defaults(func=_results)

    i = lsub.add_parser("inspect", help="validate a head file against a model and list its tensors and config")
    add_model_args(i, positional=False)
    i.add_argument("head")
    i.add_argument("--kind", choices=("latent-head", "projection"), default="latent-head")
    i.set_defaults(func=_inspect)


def _run(args) -> int:
    from .. import latent
    from ..errors import InputError

    check_policy_args(args, [args.method])
    bench = load_from_args(args)
    pol = make_policy(args, args.method, bench)
    if pol == "cot":
        raise InputError(
            f"{args.head} holds a model fine-tuned for explicit chain-of-thought (method 'cot', e.g. upft), not a latent policy: "
            "generate with `workbench generate` on the model folder its latent_policy.json names, or score it with "
            "`workbench latent eval --method trained`"
        )
    tr = latent.run(bench, args.prompt, pol, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                    chat=not args.raw, k=args.k)  # fmt: skip
    if args.json:
        print_json({
            "method": tr.method, "exit": tr.exit, "exit_detail": tr.exit_detail, "latent_steps": tr.latent_steps,
            "latent_positions": tr.latent_positions, "visible_ids": tr.visible_ids, "text": tr.text,
            "steps": [{"index": s.index, "norm_ratio": s.norm_ratio, "entropy": s.entropy, "top_ids": s.top_ids.tolist(),
                       "top_probs": s.top_probs.tolist(), "nearest_ids": None if s.nearest_ids is None else s.nearest_ids.tolist(),
                       "superposition_n_eff": s.superposition.n_eff if s.superposition else None,
                       "superposition_error": s.superposition.rel_error if s.superposition else None,
                       "superposition_ids": s.superposition.ids.tolist() if s.superposition else None,
                       "superposition_weights_raw": s.superposition.weights.tolist() if s.superposition else None,
                       "fed_mixture_ids": None if s.mixture_ids is None else s.mixture_ids.tolist(),
                       "fed_mixture_weights": None if s.mixture_weights is None else s.mixture_weights.tolist(),
                       "superposition_truth_recall": s.superposition.truth_recall if s.superposition else None,
                       "superposition_truth_l1": s.superposition.truth_l1 if s.superposition else None} for s in tr.steps],
        })  # fmt: skip
    else:
        print(tr.table(bench.tokenizer, k=args.k))
    if args.html:
        from ..paths import atomic_write_text
        from ..viz.latent import step_figures

        html = "".join(f.to_html(full_html=False, include_plotlyjs="cdn" if n == 0 else False) for n, f in enumerate(step_figures(tr, bench.tokenizer)))
        atomic_write_text(args.html, f"<html><body>{html}</body></html>\n")
        print(f"wrote {args.html}")
    return 0


def _eval(args) -> int:
    from ..errors import InputError, check_int
    from ..latent.eval import evaluate, table
    from ..tasks import load_task

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not names:
        raise InputError(f"--methods {args.methods!r} names no method; valid: {', '.join(METHODS)}, cot, no-think")
    for m in names:
        if m not in METHODS and m not in ("cot", "no-think", "no_think"):
            raise InputError(f"unknown method {m!r}; valid: {', '.join(METHODS)}, cot, no-think")
    check_policy_args(args, [m for m in names if m in METHODS])
    check_int(args.n, "-n", low=1)
    problems = load_task(args.task, n=args.n, seed=args.seed)
    bench = load_from_args(args)
    methods = {}
    for m in names:
        if m in ("cot", "no-think", "no_think"):
            methods[m.replace("-", "_")] = m.replace("-", "_")
        else:
            methods[m] = make_policy(args, m, bench)
    _rows, summary = evaluate(bench, methods, problems, max_new_tokens=args.max_new_tokens, think_budget=args.think_budget, out_dir=args.out)
    print(table(summary))
    if args.out:
        print(f"wrote {args.out}/results.jsonl, summary.json, summary.txt")
    return 0


def _results(args) -> int:
    from ..latent.results import results
    from ..train.config import parse_overrides

    from ..errors import InputError

    recipes = tuple(r.strip() for r in args.recipes.split(",")) if args.recipes else None
    try:
        seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    overrides: dict[str, dict] = {}
    for item in args.set:
        key, sep, _ = item.partition("=")
        recipe, dot, field = key.partition(".")
        if not sep or not dot or not recipe or not field:
            raise InputError(f"--set takes RECIPE.KEY=VALUE (e.g. coconut.epochs_per_stage=1), got {item!r}")
        overrides.setdefault(recipe.strip(), {}).update(parse_overrides([f"{field}={item.partition('=')[2]}"]))
    report = results(args.out, task=args.task, seeds=seeds, n=args.n, model=args.model, retrain=args.retrain, recipes=recipes,
                     batch_size=args.batch_size, training_free=not args.no_soft, runs_dir=args.runs, overrides=overrides or None)  # fmt: skip
    from ..latent.results import markdown

    print(markdown(report))
    print(f"wrote {args.out}/{args.task}/results.json, results.md")
    return 0


def _inspect(args) -> int:
    from ..latent.heads import LATENT_HEAD_FILE, PROJECTION_FILE, HeadFile, latent_head_from_tensors, projection_from_tensors

    f = HeadFile.read(args.head, LATENT_HEAD_FILE if args.kind == "latent-head" else PROJECTION_FILE)
    print(f"file    {f.path}")
    print(f"config  {json.dumps(f.config)}")
    n = sum(t.numel() for t in f.tensors.values())
    print(f"tensors {len(f.tensors)} ({n / 1e6:.2f} M parameters)")
    for k, t in sorted(f.tensors.items()):
        print(f"  {k:60s} {list(t.shape)} {str(t.dtype).removeprefix('torch.')}")
    bench = load_from_args(args)
    if args.kind == "latent-head":
        latent_head_from_tensors(bench.hf, f.tensors, f"latent head {f.path}")
    else:
        projection_from_tensors(f.tensors, bench.arch.d_model, f"projection head {f.path}")
    print(f"OK: matches {bench.name} (d_model {bench.arch.d_model}, vocab {bench.arch.vocab_size})")
    return 0

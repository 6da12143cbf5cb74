"""Steering: batched extraction over all layers vs one trace per pair, and steered vs plain generation speed."""

from __future__ import annotations

from ._report import environment, interleaved, median


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="auto")
    p.add_argument("--probe-set", default="sentiment", help="pairs come from this probe set (cycled if short)")
    p.add_argument("--pairs", type=int, default=64, help="number of contrast pairs to extract from")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per trace in the batched pass")
    p.add_argument("--extract-repeats", type=int, default=2)
    p.add_argument("--gen-tokens", type=int, default=32, help="new tokens per generation")
    p.add_argument("--gen-batch", type=int, default=1, help="prompts per generation")
    p.add_argument("--gen-repeats", type=int, default=5)
    p.add_argument("--scale", type=float, default=4.0)


def run(args) -> dict:
    import probes

    from ..generate import generate_full
    from ..models import load
    from ..steering.extract import extract, resolve_pairs
    from ..trace import capture

    if args.pairs < 2:
        raise ValueError(f"--pairs must be >= 2, got {args.pairs}")
    bench = load(args.model, device=args.device)
    a = bench.arch
    ps = probes.load_set(args.probe_set)
    base = ps.as_tuples()
    pairs = [base[i % len(base)] for i in range(args.pairs)]
    plist = resolve_pairs(pairs)
    all_layers = list(range(a.n_layers))

    def batched():
        return extract(bench, plist, all_layers, batch_size=args.batch_size)

    def per_pair():
        out = []
        for p, n in pairs:  # one trace per pair: both prompts, every layer
            acts = capture(bench, [p, n], all_layers, -1, batch_size=2)
            out.append({l: acts[l][0] - acts[l][1] for l in all_layers})
        return out

    ext = interleaved({"batched_all_layers": batched, "one_trace_per_pair": per_pair}, args.extract_repeats, warmup=1)

    layer = a.layer_at(0.5)
    vec = batched().select([layer])
    prompts = (ps.neutral_prompts or ["Tell me about your day."]) * args.gen_batch
    prompts = prompts[: args.gen_batch]
    kw = dict(max_new_tokens=args.gen_tokens, stop_ids=set(), chat=True)  # no early stop: equal token counts
    n_tokens = args.gen_tokens * args.gen_batch

    gen = interleaved(
        {
            "plain_generation": lambda: generate_full(bench, prompts, **kw),
            "steered_generation": lambda: generate_full(bench, prompts, steer=[vec.steer(args.scale)], **kw),
            "steered_ablation_generation": lambda: generate_full(bench, prompts, steer=[vec.steer(args.scale), vec.ablate()], **kw),
        },
        args.gen_repeats,
        warmup=1,
    )
    t_b, t_p = median(ext["batched_all_layers"]), median(ext["one_trace_per_pair"])
    rows = [
        {"variant": "extract_batched_all_layers", "median_s": t_b, "pairs": args.pairs, "layers": a.n_layers},
        {"variant": "extract_one_trace_per_pair", "median_s": t_p, "pairs": args.pairs, "layers": a.n_layers},
    ]
    t_plain = median(gen["plain_generation"])
    for k, ts in gen.items():
        t = median(ts)
        rows.append({"variant": k, "median_s": t, "tokens_per_s": n_tokens / t, "ratio_vs_plain": t_plain / t})
    return {
        "benchmark": "steering",
        "environment": environment(),
        "config": {
            "model": args.model,
            "pairs": args.pairs,
            "batch_size": args.batch_size,
            "gen_tokens": args.gen_tokens,
            "gen_batch": args.gen_batch,
            "steer_layer": layer,
            "scale": args.scale,
        },
        "rows": rows,
        "summary": {
            "extraction_speedup_batched_vs_per_pair": t_p / t_b,
            "steered_tokens_per_s_ratio": t_plain / median(gen["steered_generation"]),
            "steered_ablation_tokens_per_s_ratio": t_plain / median(gen["steered_ablation_generation"]),
            "target": "steered tokens/s >= 0.9x plain",
        },
    }

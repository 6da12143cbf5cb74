"""Latent-step cost: one latent step vs one ordinary decode step at the same cache length.

Both run through the one generation loop from the same prompt: the plain run decodes
`--steps` tokens (no stop), the latent runs take `--steps` latent steps (COCONUT, soft
thinking, and a random-initialised latent head with chunk_size 1). The time between
consecutive loop steps is recorded per step index (so cache lengths match), runs are
interleaved round by round, and the median over rounds is taken per step index.
Reported: latent/plain per-step ratio (target <= 1.25; the reference latent-head runtime
reports about 1.21x) and flatness = mean cost of the last quarter of steps / first quarter
(about 1 when steps are cached, growing with the step count if they were recomputed).

`run_overhead`: what `latent.run` (readout off) costs on top of the loop it drives: whole
runs of COCONUT (`--run-latents` latents, then `--run-tokens` visible tokens, the same stop
ids) through `latent.run` and through `generate_stream` with the same bound policy,
interleaved, median over `--repeats` rounds (target <= 1.05).
"""

from __future__ import annotations

import statistics
import time

import torch

from ._report import environment, sync


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=64, help="prompt length in tokens")
    p.add_argument("--steps", type=int, default=48, help="latent / decode steps per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--methods", default="coconut,latent_head,soft_thinking")
    p.add_argument("--run-latents", type=int, default=6, help="COCONUT latents in the run-overhead measurement")
    p.add_argument("--run-tokens", type=int, default=32, help="visible tokens in the run-overhead measurement")


def _step_times(stream) -> list[float]:
    out, t = [], None
    sync()
    t = time.perf_counter()
    for _ in stream:
        sync()
        now = time.perf_counter()
        out.append(now - t)
        t = now
    return out[1:]  # the first interval includes the prompt forward


def run(args) -> dict:
    from ..generate import generate_stream
    from ..latent import Coconut, LatentHead, SoftThinking
    from ..latent.heads import random_latent_head_tensors
    from ..models import load

    bench = load(args.model, device=args.device)
    a = bench.arch
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(a.vocab_size, 30000), (1, args.tokens), generator=g).tolist()
    n = args.steps
    from ..latent.policies import token_id

    close = token_id(bench.tokenizer, "</think>") or 0
    specs = {
        "coconut": Coconut(steps=n),
        "latent_head": LatentHead(random_latent_head_tensors(bench.hf), think_close_token_id=close, max_internal_tokens=n, chunk_size=1),
        "soft_thinking": SoftThinking(max_steps=n, cold_patience=0),
    }
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in specs:
            raise ValueError(f"unknown method {m!r}; valid: {', '.join(specs)}")

    def plain():
        return _step_times(generate_stream(bench, ids, max_new_tokens=n + 1, stop_ids=set()))

    def latent_run(m):
        def f():
            runner = specs[m].bind(bench, 1)
            return _step_times(generate_stream(bench, ids, max_new_tokens=1, stop_ids=set(), policy=runner))[:n - 1]
        return f

    fns = {"plain_decode": plain, **{m: latent_run(m) for m in methods}}
    for fn in fns.values():  # warm-up
        fn()
    per: dict[str, list[list[float]]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, fn in fns.items():
            per[k].append(fn())
    med = {k: [statistics.median(r[i] for r in v) for i in range(min(len(r) for r in v))] for k, v in per.items()}
    base = med["plain_decode"]
    rows, summary = [], {}
    for k, ts in med.items():
        m = min(len(ts), len(base))
        ratio = statistics.median(ts[i] / base[i] for i in range(m))
        q = max(m // 4, 1)
        flat = (sum(ts[m - q : m]) / q) / (sum(ts[:q]) / q)
        rows.append({"variant": k, "median_step_ms": statistics.median(ts) * 1e3, "ratio_vs_decode": ratio, "last_q_over_first_q": flat})
        if k != "plain_decode":
            summary[f"{k}_step_ratio"] = ratio
            summary[f"{k}_flatness"] = flat
    summary["target"] = "step ratio <= 1.25 (reference latent-head runtime: ~1.21x); flatness ~1; run_overhead <= 1.05"
    over = run_overhead(bench, ids, args.run_latents, args.run_tokens, args.repeats)
    rows.append({"variant": "latent.run vs generate_stream (COCONUT, readout off)", **over})
    summary["run_overhead"] = over["ratio"]
    return {
        "benchmark": "latent",
        "environment": environment(),
        "config": {"model": args.model, "tokens": args.tokens, "steps": n, "repeats": args.repeats, "methods": methods,
                   "run_latents": args.run_latents, "run_tokens": args.run_tokens},
        "rows": rows,
        "summary": summary,
    }


def run_overhead(bench, ids: list[list[int]], latents: int, tokens: int, repeats: int) -> dict:
    """Median whole-run seconds of `latent.run(readout=False)` and of `generate_stream`
    driven by the same bound COCONUT policy and stop ids (so both produce the same tokens),
    interleaved round by round; ratio = run / loop."""
    from ..generate import generate_stream
    from ..latent import Coconut, run
    from ..latent.policies import stop_ids

    stops = stop_ids(bench)

    def loop() -> float:
        policy = Coconut(steps=latents).bind(bench, len(ids))
        sync()
        t = time.perf_counter()
        for _ in generate_stream(bench, ids, max_new_tokens=tokens, stop_ids=stops, policy=policy):
            pass
        sync()
        return time.perf_counter() - t

    def wrapped() -> float:
        sync()
        t = time.perf_counter()
        run(bench, ids, Coconut(steps=latents), max_new_tokens=tokens, readout=False)
        sync()
        return time.perf_counter() - t

    loop(), wrapped()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        a.append(loop())
        b.append(wrapped())
    la, lb = statistics.median(a), statistics.median(b)
    return {"loop_s": la, "run_s": lb, "ratio": lb / la}

"""Real-scale decode speed against the memory-bandwidth roofline.

On the Qwen3.5-27B-shaped random model (bf16, one GPU) by default: prefill time for
`--prefill` tokens; decode tokens/s at each batch size in `--batches`, plain, steered at one
layer and at several layers, and latent steps/s (COCONUT and a random-initialised latent
head), all through the workbench's one generation loop; peak memory. Two baselines in the same run:
the same loop on the eager transformers forward (`plain_eager`) and plain transformers
`generate` (`hf_generate`), the reference the fast path is measured against. The roofline is
`measured bandwidth / weight bytes` tokens/s at batch 1 (every decode step reads every
weight once), with the bandwidth measured in the same run by a large device-to-device copy.
The summary's `roofline_fraction_b1_steered` is steered batch-1 tokens/s over that roofline.

Also runs on a CPU with a small model (`--device cpu --model qwen3.5-tiny`) to check the
plumbing; `--out results/NAME.json` keeps the JSON (the repository keeps GPU results in
`workbench/bench/results/`).
"""

from __future__ import annotations

import time

import torch

from ..memory import weight_bytes
from ._report import environment, sync


def add_arguments(p) -> None:
    p.add_argument("--model", default="qwen3.5-27b-random")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--prefill", type=int, default=2048, help="prompt tokens for the prefill timing")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens before decoding")
    p.add_argument("--new", type=int, default=32, help="tokens (or latent steps) decoded per timing")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--steer-layers", type=int, default=4, help="layers steered in the 'several layers' variant")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fast", choices=("auto", "on", "off"), default="auto",
                   help="decode path for every variant: the static-state / CUDA-graph path (on; auto = on a GPU) or the eager forward (off)")


def measure_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), best of a few."""
    n = nbytes // 4
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    a.fill_(1.0)
    best = float("inf")
    for _ in range(5):
        sync()
        t = time.perf_counter()
        b.copy_(a)
        sync()
        best = min(best, time.perf_counter() - t)
    del a, b
    return 2 * n * 4 / best


def _kernels() -> dict:
    """Versions of the optional fast kernels (absent: None)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("flash-linear-attention", "fla-core", "causal-conv1d"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def run(args) -> dict:
    from ..edits import AddVector
    from ..generate import generate_stream
    from ..latent import Coconut, LatentHead
    from ..latent.heads import random_latent_head_tensors
    from ..models import load

    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("bench gpu: CUDA was requested but this machine has no GPU; run it with --device cpu --model qwen3.5-tiny to check the plumbing")
    bench = load(args.model, device=args.device, dtype=args.dtype)
    dev = next(bench.hf.parameters()).device
    a = bench.arch
    W = weight_bytes(bench.hf)
    bw = measure_bandwidth(dev, min(1 << 30, max(64 << 20, W // 4)))
    roofline = bw / W
    g = torch.Generator().manual_seed(0)
    lo, hi = 100, min(a.vocab_size, 30000)
    batches = [int(b) for b in str(args.batches).split(",") if b.strip()]
    d, L = a.d_model, a.n_layers
    vec = torch.randn(d, generator=g)
    vec = vec / vec.norm() * float(a.embed_norm or 1.0)
    mid = a.layer_at(0.75)
    several = sorted({min(L - 1, max(0, mid + k - args.steer_layers // 2)) for k in range(args.steer_layers)})
    variants = {
        "plain": dict(),
        "steered_1_layer": dict(edits=[AddVector(mid, vec, 4.0)]),
        f"steered_{len(several)}_layers": dict(edits=[AddVector(l, vec, 4.0 / len(several)) for l in several]),
    }
    from ..latent.policies import token_id

    close = token_id(bench.tokenizer, "</think>") or 0
    latents = {
        "latent_coconut": Coconut(steps=args.new),
        "latent_head": LatentHead(random_latent_head_tensors(bench.hf, seed=0), think_close_token_id=close, max_internal_tokens=args.new),
    }
    fast = {"auto": "auto", "on": True, "off": False}[args.fast]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def timed(fn) -> float:
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t)
        return best

    # prefill: one forward over --prefill tokens at batch 1 (last-position logits only)
    ids = torch.randint(lo, hi, (1, args.prefill), generator=g).to(dev)
    with torch.no_grad():
        prefill_s = timed(lambda: bench.hf(input_ids=ids, logits_to_keep=1))
    rows = [{"variant": "prefill", "batch": 1, "tokens": args.prefill, "seconds": prefill_s, "tokens_per_s": args.prefill / prefill_s}]
    summary: dict[str, float] = {"weight_gib": W / 2**30, "bandwidth_gb_s": bw / 1e9, "roofline_tokens_per_s_b1": roofline, "prefill_s": prefill_s}
    for B in batches:
        prompts = torch.randint(lo, hi, (B, args.prompt), generator=g).tolist()
        n = args.new

        def decode(kw=None, policy=None, path=fast):
            def f():
                steps = 0
                for _ in generate_stream(bench, prompts, max_new_tokens=(1 if policy else n), stop_ids=set(), policy=policy() if policy else None, fast=path, **(kw or {})):
                    steps += 1
                return steps

            return f

        # one prompt forward + (n - 1) decode steps: time both, subtract the prompt-only run
        base_s = timed(lambda: list(generate_stream(bench, prompts, max_new_tokens=1, stop_ids=set(), fast=fast)))
        for name, kw in variants.items():
            s = timed(decode(kw)) - base_s
            tps = B * (n - 1) / s
            rows.append({"variant": name, "batch": B, "tokens": n - 1, "seconds": s, "tokens_per_s": tps})
            summary[f"{name}_b{B}_tokens_per_s"] = tps
        if fast is not False:  # baseline 1: the same loop on the eager forward
            eager_base = timed(lambda: list(generate_stream(bench, prompts, max_new_tokens=1, stop_ids=set(), fast=False)))
            s = timed(decode(path=False)) - eager_base
            rows.append({"variant": "plain_eager", "batch": B, "tokens": n - 1, "seconds": s, "tokens_per_s": B * (n - 1) / s})
            summary[f"plain_eager_b{B}_tokens_per_s"] = B * (n - 1) / s
        # baseline 2: plain transformers generate (greedy, exactly n new tokens)
        ids_b = torch.tensor(prompts, device=dev)
        hf_gen = lambda k: bench.hf.generate(input_ids=ids_b, attention_mask=torch.ones_like(ids_b), max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=0)  # noqa: E731
        with torch.no_grad():
            s = timed(lambda: hf_gen(n)) - timed(lambda: hf_gen(1))
        rows.append({"variant": "hf_generate", "batch": B, "tokens": n - 1, "seconds": s, "tokens_per_s": B * (n - 1) / s})
        summary[f"hf_generate_b{B}_tokens_per_s"] = B * (n - 1) / s
        for name, spec in latents.items():
            s = timed(decode(policy=lambda spec=spec, B=B: spec.bind(bench, B))) - base_s
            rate = B * n / s
            rows.append({"variant": name, "batch": B, "tokens": n, "seconds": s, "steps_per_s": rate})
            summary[f"{name}_b{B}_steps_per_s"] = rate
    if 1 in batches:
        plain = summary["plain_b1_tokens_per_s"]
        summary["roofline_fraction_b1_plain"] = plain / roofline
        summary["roofline_fraction_b1_steered"] = summary["steered_1_layer_b1_tokens_per_s"] / roofline
        summary["steered_overhead_b1"] = plain / summary["steered_1_layer_b1_tokens_per_s"]
        summary["latent_coconut_overhead_b1"] = plain / summary["latent_coconut_b1_steps_per_s"]
        summary["roofline_fraction_b1_hf_generate"] = summary["hf_generate_b1_tokens_per_s"] / roofline
        if "plain_eager_b1_tokens_per_s" in summary:
            summary["fast_vs_eager_b1"] = plain / summary["plain_eager_b1_tokens_per_s"]
    from .. import fastdecode

    decs = list(fastdecode._DECODERS.get(bench.hf, {}).values())
    summary["fast_path"] = {
        "requested": args.fast,
        "used": bool(decs),
        "cuda_graphs": bool(decs) and all(d.graphs and d.graph_error is None for d in decs),
        "graph_error": next((d.graph_error for d in decs if d.graph_error), None),
        "unsupported_reason": fastdecode.unsupported_reason(bench.hf),
    }
    if dev.type == "cuda":
        summary["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    summary["targets"] = "roofline_fraction_b1_steered >= 0.5; steering / latent overhead <= 1.1x"
    return {
        "benchmark": "gpu",
        "environment": {**environment(), "weights_dtype": str(next(bench.hf.parameters()).dtype), **_kernels()},
        "config": {k: getattr(args, k) for k in ("model", "device", "dtype", "prefill", "prompt", "new", "batches", "steer_layers", "repeats", "fast")},
        "rows": rows,
        "summary": summary,
    }

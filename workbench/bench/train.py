"""Training throughput and memory: AdamW vs APOLLO-Mini (full fine-tuning) vs LoRA.

Same recipe for every variant: next-token cross-entropy on the same batches, the decoder
blocks trainable (full fine-tuning) or LoRA adapters on every projection. Steps are timed
interleaved (one step of each variant per round), so machine drift hits all alike; ratios
are against AdamW in the same run. Memory: bytes held by trainable parameters, their
gradients and the optimizer state (exact tensor accounting, any device), plus the CUDA
peak per variant on a GPU.
"""

from __future__ import annotations

import copy

import torch

from ._report import environment, interleaved, median


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64, help="tokens per sequence")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per variant")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--train-modules", default=r"layers\.", help="regex of fully fine-tuned parameters (default: all decoder blocks)")


def _variant(hf, name: str, args):
    from ..train.config import TrainConfig
    from ..train.loop import prepare_trainable, trainable_parameters
    from ..train.optim import make_optimizer

    if name == "lora":
        cfg = TrainConfig(lora_rank=args.lora_rank, optimizer="adamw", progress=False)
    else:
        cfg = TrainConfig(train_modules=[args.train_modules], optimizer=name, progress=False)
    model = prepare_trainable(copy.deepcopy(hf), cfg)
    model.train()
    named = trainable_parameters(model)
    opt = make_optimizer(named, cfg)
    return model, named, opt


def run(args) -> dict:
    from ..models import load
    from ..train.optim import optimizer_state_bytes

    bench = load(args.model, device=args.device, dispatch=False)
    dev = bench.device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(bench.arch.vocab_size, 30000), (args.batch, args.tokens), generator=g).to(dev)
    n_tokens = ids.numel()
    variants = {}
    for name in ("adamw", "apollo-mini", "lora"):
        variants[name] = _variant(bench.hf, name, args)

    def step_fn(name):
        model, named, opt = variants[name]

        def step():
            opt.zero_grad(set_to_none=False)  # keep gradients allocated: count them as held
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()

        return step

    peaks = {}
    if dev.type == "cuda":
        for name in variants:  # one warm step each, measuring its peak on its own
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            step_fn(name)()
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated(dev) - base
    times = interleaved({n: step_fn(n) for n in variants}, args.repeats, warmup=1)
    rows = []
    for name, (model, named, opt) in variants.items():
        t = median(times[name])
        p_bytes = sum(p.numel() * p.element_size() for _, p in named)
        g_bytes = sum(p.grad.numel() * p.grad.element_size() for _, p in named if p.grad is not None)
        o_bytes = optimizer_state_bytes(opt)
        row = {
            "variant": name,
            "trainable_params": sum(p.numel() for _, p in named),
            "step_s": t,
            "tokens_per_s": n_tokens / t,
            "optimizer_state_MiB": o_bytes / 2**20,
            "train_state_MiB": (p_bytes + g_bytes + o_bytes) / 2**20,
        }
        if name in peaks:
            row["cuda_step_peak_MiB"] = peaks[name] / 2**20
        rows.append(row)
    by = {r["variant"]: r for r in rows}
    a = by["adamw"]
    summary = {
        "apollo_vs_adamw_optimizer_state": by["apollo-mini"]["optimizer_state_MiB"] / a["optimizer_state_MiB"],
        "apollo_vs_adamw_tokens_per_s": by["apollo-mini"]["tokens_per_s"] / a["tokens_per_s"],
        "lora_vs_adamw_tokens_per_s": by["lora"]["tokens_per_s"] / a["tokens_per_s"],
        "apollo_vs_adamw_train_state": by["apollo-mini"]["train_state_MiB"] / a["train_state_MiB"],
        "lora_vs_adamw_train_state": by["lora"]["train_state_MiB"] / a["train_state_MiB"],
    }
    if peaks:
        summary["apollo_vs_adamw_cuda_peak"] = peaks["apollo-mini"] / peaks["adamw"]
        summary["lora_vs_adamw_cuda_peak"] = peaks["lora"] / peaks["adamw"]
    return {
        "benchmark": "train",
        "environment": environment(),
        "config": {"model": args.model, "batch": args.batch, "tokens": args.tokens, "repeats": args.repeats, "lora_rank": args.lora_rank, "train_modules": args.train_modules},
        "rows": rows,
        "summary": summary,
    }

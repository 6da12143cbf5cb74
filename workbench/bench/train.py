"""Training throughput and memory: AdamW vs APOLLO-Mini (full fine-tuning) vs LoRA, and the micro model's training step (today's path vs the fast kernels).

Same recipe for every variant: next-token cross-entropy on the same batches, the decoder
blocks trainable (full fine-tuning) or LoRA adapters on every projection. Steps are timed
interleaved (one step of each variant per round), so machine drift hits all alike; ratios
are against AdamW in the same run. Memory: bytes held by trainable parameters, their
gradients and the optimizer state (exact tensor accounting, any device), plus the CUDA
peak per variant on a GPU.

Micro-model section (`--sections micro`): the Qwen3.5 micro model built as
`workbench train micro` builds it (`compact_model`, the compact-vocabulary loss, batch 32 of
the real arithmetic data), trained for a few steps twice from the same weights, round by
round: "today" (transformers' pure-PyTorch Gated DeltaNet chunk rule and conv, one padded
forward) and "fast" (`workbench.train.speed`: the whole-sequence parallel delta rule, the
shifted-sum conv, length-bucketed forwards without a cache). Reported: seconds per step,
real (unpadded) training tokens/s, achieved GFLOP/s against the FLOP estimate of
`micro_step_flops` (useful work only, so padding does not count), the fast/today ratio and
the largest loss difference between the two runs.
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
    p.add_argument("--sections", default="optimizers,micro", help="comma list: optimizers (AdamW/APOLLO/LoRA on --model), micro (micro-model step: today vs fast kernels)")
    p.add_argument("--micro-steps", type=int, default=6, help="timed training steps per micro variant (after one warm-up step)")
    p.add_argument("--micro-n-train", type=int, default=2000, help="arithmetic problems to draw batches from (the recipe uses 24000; same length distribution)")


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
    sections = [x.strip() for x in str(getattr(args, "sections", "optimizers,micro")).split(",") if x.strip()]
    bad = [x for x in sections if x not in ("optimizers", "micro")]
    if bad or not sections:
        from ..errors import InputError

        raise InputError(f"--sections takes a comma list of optimizers, micro; got {getattr(args, 'sections', '')!r}")
    out: dict = {"benchmark": "train", "environment": environment(), "config": {}, "rows": [], "summary": {}}
    if "optimizers" in sections:
        res = run_optimizers(args)
        out["config"].update(res["config"])
        out["rows"] += res["rows"]
        out["summary"].update(res["summary"])
    if "micro" in sections:
        res = run_micro(args)
        out["config"]["micro"] = res["config"]
        out["rows"] += res["rows"]
        out["summary"].update(res["summary"])
    return out


def run_optimizers(args) -> dict:
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
        "config": {"model": args.model, "batch": args.batch, "tokens": args.tokens, "repeats": args.repeats, "lora_rank": args.lora_rank, "train_modules": args.train_modules},
        "rows": rows,
        "summary": summary,
    }


# --------------------------------------------------------------------------- micro model


def micro_step_flops(model, lengths: list[int], n_target: int) -> float:
    """FLOPs of one training step (forward + backward = 3 x forward) of the micro model on
    rows of `lengths` real tokens with `n_target` loss positions, counting useful work only
    (no padding):

        6 * N * sum(L)                          dense weights: N non-embedding parameters
      + 6 * H * d_head * sum(L^2)               per full-attention layer (causal half of QK^T, AV)
      + 18 * H_v * d_k * d_v * sum(L)           per Gated DeltaNet layer (the recurrence: read,
                                                delta, write of a d_k x d_v state per token)
      + 6 * d * U * n_target                    compact unembedding (U rows) at loss positions
    """
    c = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name and "lm_head" not in name)
    tokens = sum(lengths)
    sq = sum(L * L for L in lengths)
    n_attn = sum(t == "full_attention" for t in c.layer_types)
    n_gdn = sum(t == "linear_attention" for t in c.layer_types)
    U = model.get_output_embeddings().weight.shape[0]
    return float(
        6 * n * tokens
        + n_attn * 6 * c.num_attention_heads * c.head_dim * sq
        + n_gdn * 18 * c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim * tokens
        + 6 * c.hidden_size * U * n_target
    )


def micro_loss_fn(n_zero: int):
    """`micro.micro_loss` with its forward through `speed.hidden_states` (bucketed inside
    `fast_training()`, the one padded forward outside it): the fast variant."""
    from ..train.arith import pad_right, restricted_ce
    from ..train.loop import StepLoss
    from ..train.speed import hidden_states

    def loss_fn(model, batch):
        ids, mask = pad_right([b[0].tolist() for b in batch])
        target = mask.clone()
        for i, (_, n_prompt) in enumerate(batch):
            target[i, :n_prompt] = False
        h = hidden_states(model.model, ids, mask)
        sel = target[:, 1:]
        loss = restricted_ce(h[:, :-1][sel], ids[:, 1:][sel], model.get_output_embeddings().weight, n_zero)
        return StepLoss(loss, tokens=int(mask.sum()), metrics={"target_tokens": float(sel.sum())})

    return loss_fn


def run_micro(args) -> dict:
    import contextlib
    import time

    from ..tokenizers import qwen35_tokenizer
    from ..train.loop import batch_indices, prepare_trainable, trainable_parameters
    from ..train.micro import MicroConfig, build_data, compact_model, micro_loss, tok_vocab_size
    from ..train.optim import lr_at, make_optimizer, set_lr
    from ..train.speed import fast_training, training_autocast

    steps = max(1, int(getattr(args, "micro_steps", 6)))
    cfg = MicroConfig(out_dir="unused", progress=False, n_train=int(getattr(args, "micro_n_train", 2000)))
    data = build_data(qwen35_tokenizer(), cfg)
    n_zero = tok_vocab_size() - len(data.vocab)
    base = compact_model(cfg, len(data.vocab))
    losses = {"today": micro_loss(n_zero), "fast": micro_loss_fn(n_zero), "fast-bf16": micro_loss_fn(n_zero)}
    contexts = {"today": contextlib.nullcontext, "fast": fast_training, "fast-bf16": fast_training}
    # the forward's precision, as the trainer sets it (autocast around the loss only)
    precision = {"today": cfg, "fast": cfg, "fast-bf16": cfg.replace(autocast="bf16")}
    state = {}
    for name in losses:
        model = prepare_trainable(copy.deepcopy(base), cfg)
        model.train()
        named = trainable_parameters(model)
        state[name] = (model, named, make_optimizer(named, cfg))
    times: dict[str, list[float]] = {k: [] for k in losses}
    loss_log: dict[str, list[float]] = {k: [] for k in losses}
    flops, tokens = [], []
    with torch.random.fork_rng(devices=[]):
        for s in range(steps + 1):  # step 0 warms up
            batch = [data.examples[i] for i in batch_indices(len(data.examples), s, 0, cfg)]
            lengths = [len(b[0]) for b in batch]
            n_target = sum(len(b[0]) - max(b[1], 1) for b in batch)
            if s:
                flops.append(micro_step_flops(state["today"][0], lengths, n_target))
                tokens.append(sum(lengths))
            for name in losses:
                model, named, opt = state[name]
                t0 = time.perf_counter()
                with contexts[name]():
                    set_lr(opt, lr_at(s, cfg))
                    opt.zero_grad(set_to_none=True)
                    with training_autocast(precision[name], model):
                        res = losses[name](model, batch)
                    res.loss.backward()
                    torch.nn.utils.clip_grad_norm_([p for _, p in named], cfg.max_grad_norm)
                    opt.step()
                dt = time.perf_counter() - t0
                loss_log[name].append(float(res.loss.detach()))
                if s:
                    times[name].append(dt)
    rows = []
    for name in losses:
        t = median(times[name])
        rows.append({
            "variant": f"micro-{name}",
            "step_s": t,
            "tokens_per_s": median(tokens) / t,
            "gflop_per_s": median(flops) / t / 1e9,
            "first_loss": loss_log[name][0],
        })  # fmt: skip
    by = {r["variant"]: r for r in rows}
    summary = {
        "micro_fast_vs_today_step_speedup": by["micro-today"]["step_s"] / by["micro-fast"]["step_s"],
        "micro_today_tokens_per_s": by["micro-today"]["tokens_per_s"],
        "micro_fast_tokens_per_s": by["micro-fast"]["tokens_per_s"],
        "micro_today_gflop_per_s": by["micro-today"]["gflop_per_s"],
        "micro_fast_gflop_per_s": by["micro-fast"]["gflop_per_s"],
        "micro_step_gflop": median(flops) / 1e9,
        "micro_first_step_loss_diff": abs(loss_log["fast"][0] - loss_log["today"][0]),
        "micro_max_loss_diff": max(abs(a - b) for a, b in zip(loss_log["fast"], loss_log["today"])),
        "micro_fast_bf16_vs_today_step_speedup": by["micro-today"]["step_s"] / by["micro-fast-bf16"]["step_s"],
        "micro_fast_bf16_vs_fast_step_speedup": by["micro-fast"]["step_s"] / by["micro-fast-bf16"]["step_s"],
        "micro_fast_bf16_tokens_per_s": by["micro-fast-bf16"]["tokens_per_s"],
        "micro_fast_bf16_gflop_per_s": by["micro-fast-bf16"]["gflop_per_s"],
        "micro_bf16_first_step_loss_diff": abs(loss_log["fast-bf16"][0] - loss_log["today"][0]),
        "micro_bf16_max_loss_diff": max(abs(a - b) for a, b in zip(loss_log["fast-bf16"], loss_log["today"])),
    }
    config = {"steps": steps, "n_train": cfg.n_train, "batch": cfg.batch_size, "threads": torch.get_num_threads(), "compact_vocab": len(data.vocab)}
    return {"config": config, "rows": rows, "summary": summary}

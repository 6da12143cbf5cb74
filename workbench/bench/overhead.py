"""nnsight overhead: capture trace and steered forward vs the plain HF forward (ratios)."""

from __future__ import annotations

import torch

from ._report import environment, interleaved, median


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=128, help="prompt length in tokens")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="auto")


def run(args) -> dict:
    from ..edits import AddVector, apply_edits
    from ..inputs import pad_left
    from ..models import load
    from ..trace import trace_batch

    bench = load(args.model, device=args.device)
    a = bench.arch
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(a.vocab_size, 30000), (args.batch, args.tokens), generator=g)
    batch = pad_left(ids.tolist(), bench.tokenizer.pad_token_id).to(bench.device)
    layer = a.layer_at(0.5)
    v = torch.randn(a.d_model, generator=g) * a.embed_rms
    edit = AddVector(layer, v, 4.0)
    all_layers = list(range(a.n_layers))
    hf = bench.hf

    # Every variant computes last-position logits only (`logits_to_keep=1`), as the
    # workbench's traces do, so the ratios measure nnsight and hooks, not the LM head.
    @torch.no_grad()
    def plain():
        return hf(**batch.model_kwargs(), logits_to_keep=1).logits

    @torch.no_grad()
    def hooked_steer():
        with apply_edits(hf, [edit]):
            return hf(**batch.model_kwargs(), logits_to_keep=1).logits

    fns = {
        "plain_hf_forward": plain,
        "nnsight_capture_1_layer": lambda: trace_batch(bench, batch, [layer], "last"),
        "nnsight_capture_all_layers": lambda: trace_batch(bench, batch, all_layers, "last"),
        "nnsight_steered_forward": lambda: trace_batch(bench, batch, [], "last", [edit], want_logits=True),
        "hook_steered_forward": hooked_steer,
    }
    times = interleaved(fns, args.repeats)
    base = median(times["plain_hf_forward"])
    rows = [
        {"variant": k, "median_ms": median(t) * 1e3, "ratio_vs_plain": median(t) / base} for k, t in times.items()
    ]
    ratios = {r["variant"]: r["ratio_vs_plain"] for r in rows}
    return {
        "benchmark": "overhead",
        "environment": environment(),
        "config": {"model": args.model, "tokens": args.tokens, "batch": args.batch, "repeats": args.repeats, "steer_layer": layer},
        "rows": rows,
        "summary": {
            "capture_ratio": ratios["nnsight_capture_1_layer"],
            "capture_all_layers_ratio": ratios["nnsight_capture_all_layers"],
            "steered_forward_ratio": ratios["nnsight_steered_forward"],
            "target": "<= 1.10 for a full-prompt forward on the default model",
        },
    }

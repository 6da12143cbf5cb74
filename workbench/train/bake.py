"""Baking a steering vector into the weights: exact folds where the algebra allows, and
distillation (the general route) through the shared trainer.

Exact folds (no training; the result loads in stock transformers):

* `fold_ablation(hf, u)`: directional ablation by orthogonalisation. Every matrix that
  writes into the residual stream (token embedding, attention `o_proj`, Qwen3.5 DeltaNet
  `linear_attn.out_proj`, MLP `down_proj`, and their biases) is replaced by
  (I - u u^T) W, and a tied unembedding is untied (kept as the original matrix). Since the
  residual stream is the sum of those writes, the folded model equals the hooked model
  that projects u out of the embedding output and out of the output of every attention /
  DeltaNet and MLP sub-block, i.e. the residual stream at every point a block reads it
  (Arditi et al.'s "ablate at every layer and position"). It is NOT the same as `Ablate`
  on block outputs only (the MLP of a block reads the stream before that block's output
  is projected); `tests/test_train_bake.py` checks both statements.
* `fold_offset(hf, layer, v, scale)`: a constant residual offset h_L <- h_L + scale * v at
  every position of block `layer`'s output (`AddVector(layer, v, scale, where="all")`)
  becomes the bias of that block's MLP `down_proj` (the block's last write). Only where the
  architecture and its stock loader keep such a bias: Llama-family configs with
  `mlp_bias=True` (biases on every MLP projection, zero except that one). Qwen3.5's MLP has
  no bias option, so there the training route below is the one that yields a stock
  checkpoint.

Distillation (`bake`): teacher = the same weights with the steering hooks (on every
position), student = a copy with LoRA adapters (or chosen modules) trained by
`loop.train` to match the teacher's next-token distributions (KL(teacher || student) at
every real token of a prompt corpus), optionally plus a hidden-state loss at the steered
layer(s). LoRA is merged and the result saved with `save_pretrained` + tokenizer, so
`AutoModelForCausalLM.from_pretrained(out_dir / "model")` loads it. `bake_report` measures
the acceptance numbers on held-out prompts.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError
from .._lazy import callable_module
from ..arch import decoder_layers, text_config
from ..edits import AddVector, Ablate, apply_edits
from ..inputs import pad_left
from ..paths import atomic_dir, atomic_write_text
from .config import TrainConfig
from .loop import StepLoss, prepare_trainable, train

MODEL_DIR = "model"
REPORT_FILE = "bake_report.json"


# --------------------------------------------------------------------------- exact folds


def residual_writers(hf: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, Linear) of every matrix that writes into the residual stream, per block: the
    attention output (`self_attn.o_proj` or Qwen3.5's `linear_attn.out_proj`) and the MLP
    output (`mlp.down_proj`). ValueError for a block layout this does not know."""
    out = []
    for i, block in enumerate(decoder_layers(hf)):
        attn = None
        for path in ("self_attn.o_proj", "linear_attn.out_proj"):
            mod = block.get_submodule(path) if _has(block, path) else None
            if isinstance(mod, nn.Linear):
                attn = (f"layers.{i}.{path}", mod)
        mlp = block.get_submodule("mlp.down_proj") if _has(block, "mlp.down_proj") else None
        if attn is None or not isinstance(mlp, nn.Linear):
            raise InputError(
                f"block {i} ({type(block).__name__}) has no attention output projection (self_attn.o_proj / "
                "linear_attn.out_proj) or no mlp.down_proj; exact folds support Llama- and Qwen3.5-style blocks"
            )
        out += [attn, (f"layers.{i}.mlp.down_proj", mlp)]
    return out


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _unit(direction: Tensor, d_model: int) -> Tensor:
    d = torch.as_tensor(direction).detach().double().flatten()
    if d.numel() != d_model:
        raise InputError(f"direction has size {d.numel()}, but this model's d_model is {d_model}")
    if not torch.isfinite(d).all() or d.norm() == 0:
        raise InputError("direction must be a finite, non-zero vector")
    return d / d.norm()


def _untie(hf: nn.Module) -> None:
    """Give the output head its own copy of the embedding matrix (and say so in the config)."""
    head = hf.get_output_embeddings()
    emb = hf.get_input_embeddings()
    if head is not None and head.weight is emb.weight:
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
    for cfg in {id(hf.config): hf.config, id(text_config(hf.config)): text_config(hf.config)}.values():
        if getattr(cfg, "tie_word_embeddings", False):
            cfg.tie_word_embeddings = False


@torch.no_grad()
def fold_ablation(hf: nn.Module, direction: Tensor) -> nn.Module:
    """A copy of `hf` with the unit direction of `direction` projected out of every
    residual-stream write (see the module doc for exactly which hooked model it equals)."""
    d_model = hf.get_input_embeddings().weight.shape[-1]
    u = _unit(direction, d_model)
    out = copy.deepcopy(hf)
    _untie(out)
    emb = out.get_input_embeddings().weight
    uu = u.to(emb.device)
    emb.copy_((emb.double() - torch.outer(emb.double() @ uu, uu)).to(emb.dtype))  # rows: e <- P e
    for _, lin in residual_writers(out):
        W = lin.weight.double()  # [d_model, in]
        lin.weight.copy_((W - torch.outer(uu, uu @ W)).to(lin.weight.dtype))  # W <- P W
        if lin.bias is not None:
            b = lin.bias.double()
            lin.bias.copy_((b - (b @ uu) * uu).to(lin.bias.dtype))
    return out


@torch.no_grad()
def fold_offset(hf: nn.Module, layer: int, vector: Tensor, scale: float = 1.0) -> nn.Module:
    """A copy of `hf` whose block `layer` adds `scale * vector` to its output at every
    position, through a `down_proj` bias (Llama-family configs with `mlp_bias`)."""
    cfg = text_config(hf.config)
    layers = decoder_layers(hf)
    if not 0 <= int(layer) < len(layers):
        raise InputError(f"layer {layer} is out of range; valid layers are 0..{len(layers) - 1}")
    if not hasattr(cfg, "mlp_bias"):
        raise InputError(
            f"{type(hf).__name__} ({cfg.model_type}) has no MLP bias that stock transformers would load; an additive "
            "steering vector cannot be folded exactly here. Bake it by distillation instead (workbench.train.bake)."
        )
    d_model = hf.get_input_embeddings().weight.shape[-1]
    v = torch.as_tensor(vector).detach().flatten()
    if v.numel() != d_model:
        raise InputError(f"vector has size {v.numel()}, but this model's d_model is {d_model}")
    if not torch.isfinite(v).all() or not math.isfinite(float(scale)):
        raise InputError("vector and scale must be finite")
    out = copy.deepcopy(hf)
    ocfg = text_config(out.config)
    for i, block in enumerate(decoder_layers(out)):
        for name in ("gate_proj", "up_proj", "down_proj"):
            lin = getattr(block.mlp, name, None)
            if not isinstance(lin, nn.Linear):
                raise InputError(f"block {i} has no mlp.{name}; fold_offset supports Llama-style MLPs")
            if lin.bias is None:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype, device=lin.weight.device), requires_grad=False)
    down = decoder_layers(out)[int(layer)].mlp.down_proj
    down.bias.add_((float(scale) * v.double()).to(down.bias.dtype).to(down.bias.device))
    ocfg.mlp_bias = True
    if ocfg is not out.config:
        out.config.mlp_bias = True
    return out


def save_model(hf: nn.Module, tokenizer: Any, folder: str | Path, meta: dict | None = None) -> Path:
    """`save_pretrained` model + tokenizer (+ `bake_report.json`) into `folder`, atomically."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        hf.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if meta is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return folder


# --------------------------------------------------------------------------- distillation


@dataclass
class BakeConfig(TrainConfig):
    """`TrainConfig` plus what to bake and on what.

    vector: path of a steering vector file (.safetensors / .gguf) when baking from the
        command line (the Python API takes the vector object). scale: multiplier (None:
        the vector's own). layers: the vector's layers to use (None: all). ablate: bake
        directional ablation instead of addition.
    mode: "distil" (train; any architecture) or "fold" (exact: ablation on any supported
        architecture, addition where a bias can hold it).
    probe_set: default corpus and concept words: the set's train prompts (both sides) plus
        half the neutral prompts train; its test prompts and the other neutral prompts
        are held out. corpus_file: a text file of extra training prompts (one per line).
    hidden_weight: weight of the hidden-state loss at the steered layer(s) (0: KL only).
    max_tokens: prompts are cut to this many tokens.
    """

    recipe: str = "bake"
    vector: str = ""
    scale: float | None = None
    layers: list[int] | None = None
    ablate: bool = False
    mode: str = "distil"
    probe_set: str = "sentiment"
    corpus_file: str = ""
    concept_words: list[str] | None = None
    hidden_weight: float = 0.0
    max_tokens: int = 48
    steps: int = 120
    batch_size: int = 8
    lr: float = 2e-3
    lora_rank: int = 8
    lora_alpha: float = 16.0
    warmup_steps: int = 10
    schedule: str = "cosine"
    ckpt_every: int = 40

    def validate(self) -> None:
        super().validate()
        if self.mode not in ("distil", "fold"):
            raise InputError(f"mode must be 'distil' or 'fold', got {self.mode!r}")
        if self.hidden_weight < 0 or not math.isfinite(self.hidden_weight):
            raise InputError(f"hidden_weight must be >= 0, got {self.hidden_weight!r}")
        if self.max_tokens < 2:
            raise InputError(f"max_tokens must be >= 2, got {self.max_tokens!r}")


def steering_edits(bench: Any, steer: Any, *, scale: float | None = None, layers: Sequence[int] | None = None, ablate: bool = False) -> list:
    """Steering spec (SteeringVector, Steer, edits, a vector file path) -> edits acting on
    every position, checked against `bench` (a vector for another model is refused)."""
    from ..steering.apply import as_edits, load_vector
    from ..steering.vector import SteeringVector

    if isinstance(steer, (str, Path)):
        steer = load_vector(steer, bench)
    if isinstance(steer, SteeringVector):
        steer = steer.ablation_edits(layers=layers) if ablate else steer.edits(scale=scale, layers=layers)
    edits = as_edits(steer, bench)
    if not edits:
        raise InputError("the steering spec has no edits to bake")
    out = []
    for e in edits:
        if not isinstance(e, (AddVector, Ablate)):
            raise InputError(f"cannot bake a {type(e).__name__} edit; only AddVector and Ablate")
        out.append(e if e.where == "all" else type(e)(**{**{k: getattr(e, k) for k in e.__dataclass_fields__}, "where": "all"}))
    return out


def load_probe_set(name: str):
    """The probe set `name` (a registered name or a JSONL file); InputError naming the field
    and the available sets when there is none (probes' own error is a plain ValueError)."""
    import probes

    try:
        return probes.load_set(name)
    except (probes.ProbeSetError, FileNotFoundError) as e:
        raise InputError(f"probe_set: {e}") from None


def default_corpus(probe_set: str) -> tuple[list[str], list[str], list[str]]:
    """(train prompts, held-out prompts, held-out neutral prompts) from a probe set."""
    ps = load_probe_set(probe_set)
    train_p = [t for p in ps.train() for t in (p.positive, p.negative)]
    test_p = [t for p in ps.test() for t in (p.positive, p.negative)]
    neutral = list(ps.neutral_prompts)
    half = len(neutral) // 2
    return train_p + neutral[:half], test_p, neutral[half:]


def _tokenise(tokenizer: Any, prompts: Sequence[str], max_tokens: int) -> list[list[int]]:
    rows = []
    for p in prompts:
        ids = tokenizer(p)["input_ids"][:max_tokens]
        if len(ids) >= 2:
            rows.append(ids)
    return rows


def _block_output_hook(store: dict, key: int):
    def hook(module, args, output):
        store[key] = output[0] if isinstance(output, tuple) else output

    return hook


def distil_loss(teacher: nn.Module, edits: Sequence[Any], pad_id: int, hidden_weight: float = 0.0):
    """loss_fn for `loop.train`: KL(teacher+edits || student) over every real token of the
    batch (mean per token), plus `hidden_weight` x the relative squared error of the
    steered layers' outputs."""
    steered_layers = sorted({e.layer for e in edits})

    def loss_fn(student: nn.Module, rows: list[list[int]]) -> StepLoss:
        batch = pad_left(rows, pad_id)
        dev = next(student.parameters()).device
        kw = {k: v.to(dev) for k, v in batch.model_kwargs().items()}
        mask = batch.attention_mask.to(dev).bool()
        t_h: dict[int, Tensor] = {}
        s_h: dict[int, Tensor] = {}
        handles = []
        try:
            with torch.no_grad(), apply_edits(teacher, edits):
                if hidden_weight > 0:
                    handles = [decoder_layers(teacher)[l].register_forward_hook(_block_output_hook(t_h, l)) for l in steered_layers]
                t_logits = teacher(**kw).logits.float()
            for h in handles:
                h.remove()
            handles = []
            base = student.get_base_model() if hasattr(student, "get_base_model") else student
            if hidden_weight > 0:
                handles = [decoder_layers(base)[l].register_forward_hook(_block_output_hook(s_h, l)) for l in steered_layers]
            s_logits = student(**kw).logits.float()
        finally:
            for h in handles:
                h.remove()
        t_lp = torch.log_softmax(t_logits, -1)
        s_lp = torch.log_softmax(s_logits, -1)
        kl = (t_lp.exp() * (t_lp - s_lp)).sum(-1)  # [b, T]
        kl = kl[mask].mean()
        loss = kl
        metrics = {"kl": float(kl.detach())}
        if hidden_weight > 0:
            hl = sum(((s_h[l] - t_h[l]).pow(2).sum(-1)[mask] / t_h[l].pow(2).sum(-1)[mask].clamp_min(1e-6)).mean() for l in steered_layers)
            hl = hl / len(steered_layers)
            loss = loss + hidden_weight * hl
            metrics["hidden_loss"] = float(hl.detach())
        return StepLoss(loss, int(mask.sum()), metrics)

    return loss_fn


@torch.no_grad()
def last_logits(hf: nn.Module, tokenizer: Any, prompts: Sequence[str], edits: Sequence[Any] = (), batch_size: int = 16) -> Tensor:
    """Float32 [n, vocab] next-token logits after each raw prompt (plain HF forward, left
    padded), with `edits` hooked in when given."""
    rows = [tokenizer(p)["input_ids"] for p in prompts]
    outs = []
    dev = next(hf.parameters()).device
    with apply_edits(hf, list(edits)):
        for s in range(0, len(rows), batch_size):
            b = pad_left(rows[s : s + batch_size], tokenizer.pad_token_id)
            outs.append(hf(**{k: v.to(dev) for k, v in b.model_kwargs().items()}).logits[:, -1].float().cpu())
    return torch.cat(outs)


def _kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """[n] KL(p || q) in nats, float64."""
    lp = torch.log_softmax(p_logits.double(), -1)
    lq = torch.log_softmax(q_logits.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


@dataclass
class BakeReport:
    """Acceptance numbers on held-out prompts (next-token distributions after each prompt).

    kl_baked_steered: mean KL(baked || steered); kl_original_steered: mean KL(original ||
        steered); kl_ratio their quotient (target <= 0.2).
    concept_shift_steered / concept_shift_baked: mean change of log P(concept words) vs the
        original model; concept_retained their quotient (target >= 0.7).
    side_effect_kl_baked / side_effect_kl_steered: mean KL(original || baked / steered) on
        held-out neutral prompts.
    """

    n_prompts: int
    kl_baked_steered: float
    kl_original_steered: float
    concept_shift_steered: float | None
    concept_shift_baked: float | None
    n_neutral: int = 0
    side_effect_kl_baked: float | None = None
    side_effect_kl_steered: float | None = None
    meta: dict = field(default_factory=dict)

    @property
    def kl_ratio(self) -> float:
        return self.kl_baked_steered / self.kl_original_steered if self.kl_original_steered > 0 else float("inf")

    @property
    def concept_retained(self) -> float | None:
        if self.concept_shift_steered in (None, 0) or self.concept_shift_baked is None:
            return None
        return self.concept_shift_baked / self.concept_shift_steered

    def passes(self, kl_ratio: float = 0.2, retained: float = 0.7) -> bool:
        r = self.concept_retained
        return self.kl_ratio <= kl_ratio and (r is None or r >= retained)

    def to_dict(self) -> dict:
        return {**asdict(self), "kl_ratio": self.kl_ratio, "concept_retained": self.concept_retained}

    def summary(self) -> str:
        s = (
            f"held-out prompts: {self.n_prompts}; KL(baked||steered) {self.kl_baked_steered:.4f} vs "
            f"KL(original||steered) {self.kl_original_steered:.4f} nats (ratio {self.kl_ratio:.3f})"
        )
        if self.concept_retained is not None:
            r = self.concept_retained
            more = " (the baked model moves them further than the steering did)" if r > 1 else ""
            s += (
                f"; the concept words' log-probability moves by {self.concept_shift_baked:+.3f} nats in the baked model and "
                f"{self.concept_shift_steered:+.3f} under the steering it learned from: {r:.0%} of the steered shift retained{more}"
            )
        if self.side_effect_kl_baked is not None:
            s += f"; side-effect KL on {self.n_neutral} neutral prompts: baked {self.side_effect_kl_baked:.4f}, steered {self.side_effect_kl_steered:.4f}"
        return s


def bake_report(
    original: nn.Module,
    baked: nn.Module,
    tokenizer: Any,
    edits: Sequence[Any],
    prompts: Sequence[str],
    *,
    concept_words: Sequence[str] | None = None,
    neutral_prompts: Sequence[str] = (),
) -> BakeReport:
    """Compare `baked` (no hooks) with `original` + `edits` (the steered teacher) and with
    `original` itself on held-out `prompts` (and `neutral_prompts` for side effects)."""
    from ..steering.apply import concept_logprob, concept_token_ids

    prompts = list(prompts)
    if not prompts:
        raise InputError("bake_report needs at least one held-out prompt")
    orig = last_logits(original, tokenizer, prompts)
    steer = last_logits(original, tokenizer, prompts, edits)
    bk = last_logits(baked, tokenizer, prompts)
    rep = BakeReport(
        n_prompts=len(prompts),
        kl_baked_steered=float(_kl(bk, steer).mean()),
        kl_original_steered=float(_kl(orig, steer).mean()),
        concept_shift_steered=None,
        concept_shift_baked=None,
    )
    if concept_words:
        ids = concept_token_ids(tokenizer, concept_words)
        base = concept_logprob(orig, ids).mean()
        rep.concept_shift_steered = float(concept_logprob(steer, ids).mean() - base)
        rep.concept_shift_baked = float(concept_logprob(bk, ids).mean() - base)
    if neutral_prompts:
        n_orig = last_logits(original, tokenizer, neutral_prompts)
        rep.n_neutral = len(neutral_prompts)
        rep.side_effect_kl_baked = float(_kl(n_orig, last_logits(baked, tokenizer, neutral_prompts)).mean())
        rep.side_effect_kl_steered = float(_kl(n_orig, last_logits(original, tokenizer, neutral_prompts, edits)).mean())
    return rep


@dataclass
class BakeResult:
    """model: the baked transformers model (LoRA merged, no hooks needed). model_dir: where
    it was saved (stock `from_pretrained` loads it). report: acceptance numbers. train:
    the trainer's result (None for exact folds)."""

    model: nn.Module
    model_dir: Path
    report: BakeReport | None
    train: Any = None


def bake(
    bench: Any,
    steer: Any,
    cfg: BakeConfig,
    *,
    corpus: Sequence[str] | None = None,
    heldout: Sequence[str] | None = None,
    neutral: Sequence[str] | None = None,
    on_step: Any = None,
    cancel: Any = None,
    resume: bool = False,
) -> BakeResult:
    """Bake `steer` into a copy of `bench.hf`; `bench` itself is never changed.

    mode "fold": exact (ablation anywhere; addition on architectures with an MLP bias).
    mode "distil": train with `loop.train` (LoRA or `train_modules`) on `corpus` (default:
    from `cfg.probe_set`, plus `cfg.corpus_file` lines). Saves to `<out_dir>/model` and
    reports on `heldout` / `neutral` (defaults from the probe set)."""
    edits = steering_edits(bench, steer, scale=cfg.scale, layers=cfg.layers, ablate=cfg.ablate)
    d_train, d_held, d_neutral = default_corpus(cfg.probe_set)
    if corpus is None:
        corpus = list(d_train)
        if cfg.corpus_file:
            try:
                corpus += [l.strip() for l in Path(cfg.corpus_file).read_text().splitlines() if l.strip()]
            except OSError as e:
                raise InputError(f"cannot read corpus_file {cfg.corpus_file!r}: {e}") from None
    heldout = list(d_held if heldout is None else heldout)
    neutral = list(d_neutral if neutral is None else neutral)
    concept = cfg.concept_words
    if concept is None:
        concept = list(load_probe_set(cfg.probe_set).concept_words)
    out = Path(cfg.out_dir)
    hf = bench.hf
    tr = None
    if cfg.mode == "fold":
        baked = _fold(hf, edits)
    else:
        rows = _tokenise(bench.tokenizer, list(corpus), cfg.max_tokens)
        if not rows:
            raise InputError("the bake corpus is empty (no prompt of at least 2 tokens); give prompts to train on")
        student = prepare_trainable(copy.deepcopy(hf), cfg)
        loss_fn = distil_loss(hf, edits, bench.tokenizer.pad_token_id, cfg.hidden_weight)
        tr = train(student, rows, loss_fn, cfg, on_step=on_step, cancel=cancel, resume=resume)
        if tr.status != "done":
            return BakeResult(student, out, None, tr)
        baked = student.merge_and_unload() if hasattr(student, "merge_and_unload") else student
        baked.eval()
        for p in baked.parameters():
            p.requires_grad_(False)
    report = bake_report(hf, baked, bench.tokenizer, edits, heldout, concept_words=concept, neutral_prompts=neutral)
    meta = {"report": report.to_dict(), "config": cfg.to_dict(), "edits": [_edit_meta(e) for e in edits], "base_model": bench.name}
    model_dir = save_model(baked, bench.tokenizer, out / MODEL_DIR, meta)
    atomic_write_text(out / REPORT_FILE, json.dumps(meta, indent=1, default=str) + "\n")
    return BakeResult(baked, model_dir, report, tr)


def _fold(hf: nn.Module, edits: Sequence[Any]) -> nn.Module:
    if len(edits) != 1:
        raise InputError(f"an exact fold takes one edit (one layer); got {len(edits)}. Select one layer, or use mode='distil'")
    e = edits[0]
    if isinstance(e, Ablate):
        if e.strength != 1.0:
            raise InputError(f"an exact ablation fold needs strength 1.0, got {e.strength}")
        return fold_ablation(hf, e.direction)
    return fold_offset(hf, e.layer, e.vector, e.scale)


def _edit_meta(e: Any) -> dict:
    kind = type(e).__name__
    vec = getattr(e, "vector", getattr(e, "direction", None))
    return {"type": kind, "layer": e.layer, "scale": getattr(e, "scale", getattr(e, "strength", None)), "norm": float(vec.norm()) if vec is not None else None}


__all__ = [
    "residual_writers",
    "fold_ablation",
    "fold_offset",
    "save_model",
    "BakeConfig",
    "steering_edits",
    "default_corpus",
    "distil_loss",
    "last_logits",
    "bake_report",
    "BakeReport",
    "BakeResult",
    "bake",
]


callable_module(__name__, "bake")

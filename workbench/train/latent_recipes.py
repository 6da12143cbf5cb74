"""Latent-reasoning recipes on the shared trainer: COCONUT curriculum, projection-head
distillation (CODI / QThink style), latent-head training (the `latent_head.safetensors`
format, frozen base), pause tokens (`pause`: before the explicit chain of thought;
`pause-answer`: Goyal et al. 2023, pauses then the answer with no chain) and one training
path that is not latent: `upft` (Ji et al. 2025, the model fine-tuned on the first tokens
of its own sampled answers, evaluated with explicit CoT).

Every recipe trains on the built-in arithmetic task in the layout of `train.arith` (the
prompt the evaluation uses, ending in `<think>\\n`), feeds its continuous inputs exactly as
the latent engine will at inference, and saves what the engine loads, with a
`latent_policy.json` that `workbench.latent.load_policy(folder)` turns back into a policy:

    out/
      latent_policy.json          method, steps, markers, which model to run on
      model/                      fine-tuned weights (coconut, upft; projection/pause when the base trains)
      projection_head.safetensors | latent_head.safetensors + adapter_config.json | pause_tokens.safetensors

(`upft` writes `{"method": "cot", "model": "model"}`: explicit CoT on the fine-tuned model,
which `latent.results` scores as the CoT baseline on that model.)

Latent vectors are computed one at a time, each from a forward over everything before it
(no cache, so gradients flow back through every latent step, as in COCONUT), then one
forward over the whole sequence gives the loss on the text after the latents.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, check_float, check_int
from ..paths import atomic_dir, atomic_write_text
from ..inputs import pad_left
from .arith import EVAL_SETS, ArithData, Encoded, VocabView, encode_problems, eval_problems, pad_right
from .loop import StepLoss, prepare_trainable, train
from .trajectories import head_tensors, recorder_for

POLICY_FILE = "latent_policy.json"
CLOSE = "</think>"


# --------------------------------------------------------------------------- configs


@dataclass
class LatentRecipeConfig(ArithData):
    """Shared options of the latent recipes (on top of the trainer's and the data's,
    `ArithData`). The base model's own
    parameters train when `train_modules` (regular expressions) or `lora_rank` say so;
    `train_modules=[]` keeps it frozen. `eval_n` held-out problems per eval set are scored
    through the latent engine at the end (0: skip). `probe_n` fixed held-out problems run
    through the latent engine at every checkpoint, their latent steps kept in
    `<out_dir>/trajectories.jsonl` (`train.trajectories`; 0: off; training is the same
    either way)."""

    model: str = ""  # "": the task's micro model (qwen3.5-micro, qwen3.5-micro-graph)
    out_dir: str = "runs/latent"
    eval_n: int = 32
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    # the decoder blocks and the final norm; the (tied, 248k-row) embedding stays as it is
    train_modules: list[str] = field(default_factory=lambda: [r"\.layers\.", r"^model\.norm\."])
    ckpt_every: int = 100
    probe_n: int = 3

    def __post_init__(self) -> None:
        if self.model == "" and isinstance(getattr(self, "task", None), str):
            from .micro import MODEL_NAMES

            self.model = MODEL_NAMES.get(self.task, "")  # an unknown task is refused by validate
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if self.eval_n < 0:
            raise InputError(f"eval_n must be >= 0, got {self.eval_n}")
        check_int(self.probe_n, "probe_n (held-out problems whose latent steps are recorded at every checkpoint; 0: off)", low=0, high=64)
        if not self.model:
            raise InputError("model is empty; give a model name or folder (default: the task's micro model)")


@dataclass
class CoconutConfig(LatentRecipeConfig):
    """COCONUT: stage k (1..stages) replaces the first k reasoning steps with
    k x c latent thoughts (every row gets k x c, so inference uses a fixed count),
    the optimizer reset at every stage. The final stage has no explicit step left: that
    model runs as `Coconut(steps=stages * c, end="</think>")`. `stage0` first fine-tunes
    on the explicit chains (the micro model already is).

    Paper-grade defaults (Hao et al. 2024): c = `thoughts_per_step`, 0 meaning the paper's
    value for the task (2 on arithmetic, as for GSM8k; 1 on the graph task, as for ProsQA);
    `stages` = `max_stage`, 0 meaning max_reasoning_steps on arithmetic and 6 on the graph
    task; each stage runs `epochs_per_stage` epochs over the `n_train` problems (3, the
    paper's GSM8k setting) unless `steps` (> 0) gives the optimizer steps per stage."""

    MIN_STEPS: ClassVar[int] = 0  # steps = 0: epochs_per_stage decides

    recipe: str = "coconut"
    out_dir: str = "runs/coconut"
    thoughts_per_step: int = 0
    max_stage: int = 0
    stage0: bool = False
    steps: int = 0
    epochs_per_stage: float = 3.0
    stage_eval_n: int = 32  # held-out problems per eval set scored after every stage (the per-stage curve; 0: none)

    def validate(self) -> None:
        super().validate()
        if self.stage_eval_n < 0:
            raise InputError(f"stage_eval_n must be >= 0 (0: no per-stage evaluation), got {self.stage_eval_n}")
        if self.thoughts_per_step < 0:
            raise InputError(f"thoughts_per_step must be >= 1 (0: the paper's value for the task), got {self.thoughts_per_step}")
        if self.max_stage < 0:
            raise InputError(f"max_stage must be >= 0 (0: the task's default), got {self.max_stage}")
        check_float(self.epochs_per_stage, "epochs_per_stage", low=0.0, low_open=True)

    @property
    def c(self) -> int:
        """Latent thoughts per replaced reasoning step."""
        return self.thoughts_per_step or (1 if getattr(self, "task", "arith") == "graph" else 2)

    @property
    def stages(self) -> int:
        return self.max_stage or (6 if getattr(self, "task", "arith") == "graph" else self.max_reasoning_steps)

    @property
    def steps_per_stage(self) -> int:
        """`steps` when given, else ceil(epochs_per_stage x n_train / (batch_size x grad_accum))."""
        if self.steps > 0:
            return self.steps
        import math

        return max(1, math.ceil(self.epochs_per_stage * self.n_train / (self.batch_size * self.grad_accum)))


TEACHERS = ("frozen", "shared")


@dataclass
class ProjectionConfig(LatentRecipeConfig):
    """Projection head (CODI / QThink): `latent_steps` latents `proj(last hidden)`, then
    `</think>` and the answer. Loss: answer cross-entropy + `distill_weight` x the
    smooth-L1 distance (over every layer, each divided by the teacher's std) between the
    student's hidden states at the position that predicts the answer and the teacher's at
    the same position of the explicit chain.

    `teacher`: "frozen" (default) - a frozen copy of the starting model reads the chain, no
    teacher loss; "shared" - CODI's: the model being trained reads the chain, and its own
    cross-entropy on the chain and answer (everything after the prompt) is added with
    weight `teacher_ce_weight` (CODI's `ref_loss_factor`, 1.0). Either way the teacher's
    hidden states are a target only (detached, as CODI's): the distillation term trains
    the student path, not the teacher's."""

    recipe: str = "projection-head"
    out_dir: str = "runs/projection-head"
    latent_steps: int = 6  # CODI's K = 6 latent thoughts
    head_hidden: int = 0
    distill_weight: float = 1.0  # CODI's distill_loss_factor: 1 (GPT-2 scripts), 20 (LLaMA-1B scripts)
    teacher: str = "frozen"
    teacher_ce_weight: float = 1.0  # teacher="shared" only
    steps: int = 200

    def validate(self) -> None:
        super().validate()
        if self.latent_steps < 1:
            raise InputError(f"latent_steps must be >= 1, got {self.latent_steps}")
        check_float(self.distill_weight, "distill_weight", low=0.0)
        if self.teacher not in TEACHERS:
            raise InputError(f"teacher must be 'frozen' (a frozen copy of the starting model) or 'shared' (CODI: the model being trained, with its own loss on the chain), got {self.teacher!r}")
        check_float(self.teacher_ce_weight, "teacher_ce_weight", low=0.0)
        if self.teacher == "frozen" and self.teacher_ce_weight != 1.0:
            raise InputError(f"teacher_ce_weight ({self.teacher_ce_weight}) weighs the shared teacher's own loss; a frozen teacher has none: set teacher='shared' or leave teacher_ce_weight at 1.0")
        if self.teacher == "shared":
            if self.recipe != "projection-head":
                raise InputError(f"teacher='shared' is the projection-head recipe's (CODI's) teacher; {self.recipe!r} has its own teacher: use teacher='frozen'")
            if not self.train_modules and not self.lora_rank:
                raise InputError("teacher='shared' trains the model itself on the explicit chain (CODI): set train_modules (non-empty) or lora_rank > 0, or use teacher='frozen' with a frozen base")


CURRICULA = ("steps", "none")


@dataclass
class LatentHeadConfig(LatentRecipeConfig):
    """Latent head on a frozen base: a problem with n reasoning steps thinks for
    n x `thoughts_per_step` latent steps of `chunk_size` positions each. Loss: the
    cross-entropy of `</think>` and the answer after the last latent step, plus
    `exit_weight` x -log(1 - p(`</think>`)) after every earlier one (so the model's own
    argmax ends thinking at the right time: self-exit). `max_internal_tokens` is the
    budget written to adapter_config.json.

    `curriculum="steps"` (default) gets there in stages, as COCONUT does: the `steps`
    optimizer steps are split evenly over `curriculum_stages` stages (0: one per reasoning
    step of the longest training problem; `curriculum_stage`), and at stage k < last a
    problem with n steps thinks for min(k, n) x `thoughts_per_step` latent steps, then
    reads its remaining steps as explicit text inside `<think>` before the suffix
    (`curriculum_rows`); the last stage is the fully latent loss above. With explicit steps
    left, the exit term covers every latent step (none may end thinking). `"none"`: fully
    latent from the first step.

    `head_init="passthrough"` (default) starts the head as a pass-through of the greedy
    token's embedding (`workbench.latent.heads.passthrough_init_`: training starts from
    greedy chain-of-thought with hidden tokens, each fed at about the mean embedding RMS);
    `"random"`: fc and to_embed N(0, 0.02), the rest as the layer classes build it.
    `pairing` (default "same", the reference runtime's: prompt token t with hidden t) is
    how the head's cache is prefilled over the prompt, in training and in the
    adapter_config.json written (see `workbench.latent.LatentHead`)."""

    recipe: str = "latent-head"
    out_dir: str = "runs/latent-head"
    thoughts_per_step: int = 1
    chunk_size: int = 1
    max_internal_tokens: int = 16
    exit_weight: float = 1.0
    head_intermediate: int = 0
    head_init: str = "passthrough"
    pairing: str = "same"
    curriculum: str = "steps"
    curriculum_stages: int = 0
    train_modules: list[str] = field(default_factory=list)
    lr: float = 2e-3
    steps: int = 200

    def validate(self) -> None:
        super().validate()
        if self.train_modules or self.lora_rank:
            raise InputError("the latent head trains on a frozen base: train_modules must be [] and lora_rank 0")
        if self.curriculum not in CURRICULA:
            raise InputError(f"curriculum must be 'steps' (stage k: the first k reasoning steps latent, the rest explicit) or 'none' (all latent from the start), got {self.curriculum!r}")
        check_int(self.curriculum_stages, "curriculum_stages (0: one stage per reasoning step of the longest training problem)", low=0)
        if self.curriculum == "none" and self.curriculum_stages:
            raise InputError(f"curriculum_stages ({self.curriculum_stages}) is for curriculum='steps'; with curriculum='none' leave it at 0")
        if self.head_init not in ("passthrough", "random"):
            raise InputError(f"head_init must be 'passthrough' or 'random', got {self.head_init!r}")
        if self.pairing not in ("same", "next"):
            raise InputError(f"pairing must be 'same' (token t with hidden t) or 'next' (token t+1 with hidden t), got {self.pairing!r}")
        if self.thoughts_per_step < 1 or self.chunk_size < 1:
            raise InputError(f"thoughts_per_step and chunk_size must be >= 1, got {self.thoughts_per_step}, {self.chunk_size}")
        if self.max_internal_tokens < self.chunk_size:
            raise InputError(f"max_internal_tokens ({self.max_internal_tokens}) must be >= chunk_size ({self.chunk_size})")


@dataclass
class PauseConfig(LatentRecipeConfig):
    """Pause tokens before CoT (the `pause` recipe, the "pause tokens before CoT" row):
    `n_pause` learnable embeddings inserted right after the prompt and followed by the
    full explicit chain of thought, trained with a prefix-only loss: cross-entropy on the
    first `prefix_tokens` tokens of that chain only. `targets`: "gold" (the reference
    chain) or "self" (the model's own greedy chain). What this measures is whether pauses
    leave the model's CoT intact, not latent computation (that is `pause-answer`); it is
    neither Goyal et al.'s pause training nor UPFT (that is `upft`). The base stays frozen
    unless `train_modules` / `lora_rank` say otherwise."""

    recipe: str = "pause"
    out_dir: str = "runs/pause"
    n_pause: int = 4
    prefix_tokens: int = 8
    targets: str = "gold"
    train_modules: list[str] = field(default_factory=list)
    lr: float = 3e-3

    def validate(self) -> None:
        super().validate()
        if self.n_pause < 1 or self.prefix_tokens < 1:
            raise InputError(f"n_pause and prefix_tokens must be >= 1, got {self.n_pause}, {self.prefix_tokens}")
        if self.targets not in ("gold", "self"):
            raise InputError(f"targets must be 'gold' or 'self', got {self.targets!r}")


@dataclass
class PauseAnswerConfig(LatentRecipeConfig):
    """Pause tokens then the answer, no chain of thought (Goyal et al. 2023, "Think before
    you speak", pause-finetuning): the prompt, `n_pause` pause embeddings, `</think>`
    (forced: the thinking block closes right after the pauses), then the answer. Loss:
    cross-entropy on the answer tokens only (what follows `</think>`); the prompt, the
    pause positions' outputs and the forced `</think>` carry none. `shared_pause`: one
    learned `<pause>` vector repeated `n_pause` times, as in the paper (False: `n_pause`
    distinct vectors). The pause vector(s) train together with the base model through the
    shared trainer (default: the decoder blocks and the final norm, or LoRA with
    `lora_rank`; `train_modules=[]` and `lora_rank=0` train the pause vectors alone)."""

    recipe: str = "pause-answer"
    out_dir: str = "runs/pause-answer"
    n_pause: int = 10
    shared_pause: bool = True
    steps: int = 300

    def validate(self) -> None:
        super().validate()
        check_int(self.n_pause, "n_pause", low=1)


@dataclass
class UpftConfig(LatentRecipeConfig):
    """UPFT (Ji et al. 2025, "The First Few Tokens Are All You Need"): fine-tune the model
    itself on its own sampled answers. One sample per training problem from the starting
    model (the CoT prompt, `temperature` / `top_p`, seeded by `seed`; kept in
    `<out_dir>/upft_samples.json` so a resumed run trains on the same samples). A fraction
    `full_ratio` of the problems (UPFT's structure-aware mix) keeps the whole sample (up to
    `max_sample_tokens` tokens); every other one only its first `prefix_tokens` tokens.
    Loss: cross-entropy on those sampled tokens only (the prompt carries none). Not a latent
    method: the result is evaluated with explicit CoT. The model's weights train
    (`train_modules` or `lora_rank`; a frozen base is refused)."""

    recipe: str = "upft"
    out_dir: str = "runs/upft"
    prefix_tokens: int = 8
    full_ratio: float = 0.1
    temperature: float = 0.7
    top_p: float = 1.0
    max_sample_tokens: int = 160
    lr: float = 1e-4
    steps: int = 200

    def validate(self) -> None:
        super().validate()
        if not self.train_modules and not self.lora_rank:
            raise InputError("upft fine-tunes the model itself: set train_modules (non-empty) or lora_rank > 0")
        check_int(self.prefix_tokens, "prefix_tokens", low=1)
        check_int(self.max_sample_tokens, "max_sample_tokens (at least prefix_tokens)", low=self.prefix_tokens)
        check_float(self.full_ratio, "full_ratio (the fraction of full-length samples)", low=0.0, high=1.0)
        check_float(self.temperature, "temperature (UPFT samples: > 0; 0 would be the greedy chain)", low=0.0, low_open=True)
        check_float(self.top_p, "top_p", low=0.0, high=1.0, low_open=True)


# --------------------------------------------------------------------------- the pieces


class LatentModel(nn.Module):
    """What the trainer optimises: the base model plus the recipe's own parameters (a head,
    pause embeddings); its trainable parameters are exactly what requires grad."""

    def __init__(self, base: nn.Module, head: nn.Module | None = None, pause: Tensor | None = None):
        super().__init__()
        self.base = base
        self.head = head
        self.pause = nn.Parameter(pause) if pause is not None else None

    @property
    def hf(self) -> nn.Module:
        m = self.base
        return m.get_base_model() if hasattr(m, "get_base_model") else m


def _prepare_base(hf: nn.Module, cfg: LatentRecipeConfig) -> nn.Module:
    if cfg.lora_rank > 0 or cfg.train_modules:
        return prepare_trainable(hf, cfg)
    for p in hf.parameters():
        p.requires_grad_(False)
    return hf


def _merged(base: nn.Module) -> nn.Module:
    return base.merge_and_unload() if hasattr(base, "merge_and_unload") else base


def _base_forward(hf: nn.Module, embeds: Tensor, mask: Tensor, hidden_states: bool = False):
    from ..generate import base_model
    from ..inputs import positions_from_mask

    return base_model(hf)(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False, output_hidden_states=hidden_states)


def _left_pad_embeds(hf: nn.Module, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Left-padded prompt embeddings [B, P, d], mask [B, P] and ids (-1 at padding)."""
    emb = hf.get_input_embeddings()
    b = pad_left(rows, -1)
    ids, mask = b.input_ids.to(emb.weight.device), b.attention_mask.to(emb.weight.device)
    return emb(ids.clamp(min=0)) * mask[..., None].to(emb.weight.dtype), mask, ids


def _right_pad(hf: nn.Module, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded embeddings [B, S, d], mask [B, S] (long) and ids (0 at padding)."""
    emb = hf.get_input_embeddings()
    ids, mask = pad_right(rows)
    ids, mask = ids.to(emb.weight.device), mask.long().to(emb.weight.device)
    return emb(ids), mask, ids


@dataclass
class Unrolled:
    hidden: Tensor  # [B, P + n*chunk + S, d] last hidden (after the final norm) of the final forward
    hidden_states: tuple | None  # every layer's, when asked
    latents: list[Tensor]  # n x [B, d]
    P: int
    n_positions: int  # n * chunk
    after_ids: Tensor  # [B, S]
    after_mask: Tensor  # [B, S]


def unroll(
    hf: nn.Module,
    prompts: Sequence[Sequence[int]],
    n_latent: int,
    next_latent: Callable[[int, Tensor, Tensor], Tensor] | None,
    after: Sequence[Sequence[int]],
    *,
    chunk: int = 1,
    fixed: Tensor | None = None,
    hidden_states: bool = False,
) -> Unrolled:
    """Prompt, then `n_latent` latent vectors (each fed `chunk` times), then the token ids
    `after`. Latent j = `next_latent(j, hidden [B, T, d], mask [B, T])` computed from a
    forward over everything before it (or `fixed[j]` [n, d] for constant vectors such as
    pause embeddings: then a single forward)."""
    E_p, m_p, _ = _left_pad_embeds(hf, prompts)
    B, P, _ = E_p.shape
    latents: list[Tensor] = []
    parts, masks = [E_p], [m_p]
    for j in range(n_latent):
        if fixed is not None:
            v = fixed[j].to(E_p.dtype)[None].expand(B, -1)
        else:
            E = torch.cat(parts, 1)
            M = torch.cat(masks, 1)
            h = _base_forward(hf, E, M).last_hidden_state
            v = next_latent(j, h, M)
        latents.append(v)
        parts.append(v[:, None].expand(B, chunk, -1))
        masks.append(torch.ones(B, chunk, dtype=m_p.dtype, device=m_p.device))
    E_a, m_a, a_ids = _right_pad(hf, after)
    out = _base_forward(hf, torch.cat(parts + [E_a], 1), torch.cat(masks + [m_a], 1), hidden_states)
    return Unrolled(out.last_hidden_state, out.hidden_states if hidden_states else None, latents, P, n_latent * chunk, a_ids, m_a)


def after_loss(vocab: VocabView, u: Unrolled, weights: Tensor | None = None) -> tuple[Tensor, int]:
    """Cross-entropy of the tokens after the latents (token t predicted at the position
    before it); `weights` [B, S] 0/1 selects which tokens count (default: all real ones)."""
    start = u.P + u.n_positions
    S = u.after_ids.shape[1]
    pred = u.hidden[:, start - 1 : start - 1 + S]
    sel = u.after_mask.bool() if weights is None else (u.after_mask.bool() & weights.bool().to(u.after_mask.device))
    n = int(sel.sum())
    if n == 0:
        return u.hidden.sum() * 0.0, 0
    return vocab.ce(pred[sel], u.after_ids[sel]), n


def close_id(tokenizer: Any) -> int | None:
    """`</think>`'s id, or None for a model without a thinking block (then the latents sit
    between the prompt and the answer, and no end marker is fed)."""
    from ..latent.policies import token_id

    return token_id(tokenizer, CLOSE)


def answer_index(e: Encoded, tokenizer: Any) -> int:
    """Index in `e.suffix` of the first token of the answer number (of the answer name,
    for a string answer: the first token with text after the "####")."""
    from ..tasks import is_name_answer

    if is_name_answer(e.problem.answer):
        for i in range(len(e.suffix)):
            text = tokenizer.decode(e.suffix[: i + 1])
            if "####" in text and text.rsplit("####", 1)[1].strip():
                return i
        raise InputError(f"no answer after '####' in the suffix of problem {e.problem.id}")
    for i, t in enumerate(e.suffix):
        s = tokenizer.decode([t]).strip()
        if s and (s[0].isdigit() or s[0] == "-"):
            return i
    raise InputError(f"no answer digits in the suffix of problem {e.problem.id}")


# --------------------------------------------------------------------------- shared setup


@dataclass
class Setup:
    bench: Any
    cfg: LatentRecipeConfig
    data: list[Encoded]
    vocab: VocabView
    close: int | None

    @property
    def end(self) -> str | None:
        return CLOSE if self.close is not None else None


def setup(cfg: LatentRecipeConfig, bench: Any = None) -> Setup:
    from ..models import load

    if bench is None:
        bench = load(cfg.model, device=cfg.device, dtype=cfg.dtype)
    problems = cfg.problems(seed=2000 + cfg.seed)
    data = encode_problems(bench.tokenizer, problems)
    if not data:
        raise InputError("the training corpus is empty")
    return Setup(bench, cfg, data, VocabView(bench.hf), close_id(bench.tokenizer))


def _write_policy(tmp: Path, policy: dict) -> None:
    atomic_write_text(tmp / POLICY_FILE, json.dumps(policy, indent=1) + "\n")


def _save_model(hf: nn.Module, tokenizer: Any, folder: Path) -> None:
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(path))


def _finish(cfg: LatentRecipeConfig, write: Callable[[Path], None], results: dict) -> Path:
    """Write the recipe's artifacts into `<out_dir>/final` atomically (a half-written
    folder never appears) and return it."""
    target = Path(cfg.out_dir) / "final"
    with atomic_dir(target) as tmp:
        write(Path(tmp))
        atomic_write_text(Path(tmp) / "train_summary.json", json.dumps(results, indent=1, default=str) + "\n")
    return target


def quick_eval(bench: Any, spec: Any, n: int, task: str = "arith") -> dict[str, float]:
    """Held-out accuracy on `task`'s eval sets through the latent engine itself (what
    inference will see)."""
    from ..latent.eval import evaluate
    from .arith import eval_set_names

    if n <= 0:
        return {}
    out = {}
    for name in eval_set_names(task):
        _, summary = evaluate(bench, {"m": spec}, eval_problems(name, n), progress=False)
        out[name] = summary[0].accuracy
    return out


# --------------------------------------------------------------------------- COCONUT


def coconut_stage_seed(seed: int, stage: int) -> int:
    """The trainer seed of COCONUT stage `stage` (its data order and any sampling): the
    original reshuffles the whole set every epoch; here each stage draws its own order."""
    return int(seed) + 7919 * int(stage)


def coconut_stage_eval(s: Setup, hf: nn.Module, cfg: CoconutConfig, k: int, folder: Path) -> dict[str, float]:
    """Held-out accuracy after stage `k` as that stage's model runs: k x c latents, then
    (before the last stage) the remaining steps as explicit thinking up to the model's own
    `</think>`, or (last stage) `</think>` fed after the latents; stage 0 is explicit CoT.
    Kept in `<stage folder>/stage_eval.json`, so a resumed run reads it back."""
    from ..latent.policies import Coconut

    path = folder / "stage_eval.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("n") == cfg.stage_eval_n:
            return saved["accuracy"]
    n_lat = k * cfg.c
    spec = "cot" if n_lat == 0 else Coconut(steps=n_lat, end=s.end if k == cfg.stages else None)
    kept, s.bench.hf = s.bench.hf, hf.eval()
    try:
        acc = quick_eval(s.bench, spec, cfg.stage_eval_n, cfg.task)
    finally:
        s.bench.hf = kept
    atomic_write_text(path, json.dumps({"stage": k, "latents": n_lat, "n": cfg.stage_eval_n, "accuracy": acc}) + "\n")
    return acc


def run_coconut(cfg: CoconutConfig, resume: bool = False, bench: Any = None, on_step=None, cancel=None) -> dict:
    from ..latent.policies import Coconut

    s = setup(cfg, bench)
    hf, c = s.bench.hf, cfg.c
    results: dict[str, Any] = {"stages": [], "thoughts_per_step": c, "steps_per_stage": cfg.steps_per_stage}
    first = 0 if cfg.stage0 else 1
    for k in range(first, cfg.stages + 1):
        n_lat = k * c

        def loss_fn(model: LatentModel, batch: list[Encoded], k=k, n_lat=n_lat) -> StepLoss:
            after = [sum(e.steps[k:], []) + e.suffix for e in batch]
            u = unroll(model.hf, [e.prompt for e in batch], n_lat, lambda j, h, m: h[:, -1], after)
            loss, n = after_loss(s.vocab, u)
            return StepLoss(loss, tokens=n, metrics={"stage": float(k)})

        model = LatentModel(_prepare_base(hf, cfg))
        # each stage its own data order (seed + k): with one seed every stage would start at
        # step 0 of the same permutation and train on the same steps x batch problems
        scfg = cfg.replace(out_dir=str(Path(cfg.out_dir) / f"stage{k}"), seed=coconut_stage_seed(cfg.seed, k), steps=cfg.steps_per_stage)
        stage_resume = resume and (Path(scfg.out_dir) / "checkpoint").exists()
        # the stage's own inference, as coconut_stage_eval runs it (stage 0 has no latents: nothing to record)
        spec_k = lambda m, k=k, n_lat=n_lat: Coconut(steps=n_lat, end=s.end if k == cfg.stages else None) if n_lat else None  # noqa: E731
        probe = recorder_for(cfg, s.bench, spec_k, stage=k, offset=(k - first) * cfg.steps_per_stage)
        res = train(model, s.data, loss_fn, scfg, resume=stage_resume, on_step=on_step, cancel=cancel, on_checkpoint=probe)
        hf = _merged(model.base)
        for p in hf.parameters():
            p.requires_grad_(False)
        results["stages"].append({"stage": k, "latents": n_lat, "steps": res.step, "final_loss": res.final_loss})
        if res.status != "done":
            return {"status": res.status, **results}
        if cfg.stage_eval_n:
            results["stages"][-1]["eval"] = coconut_stage_eval(s, hf, cfg, k, Path(scfg.out_dir))
    s.bench.hf = hf
    hf.eval()
    steps = cfg.stages * c
    spec = Coconut(steps=steps, end=s.end)
    results["eval"] = quick_eval(s.bench, spec, cfg.eval_n, cfg.task)

    def write(tmp: Path) -> None:
        _save_model(hf, s.bench.tokenizer, tmp / "model")
        _write_policy(tmp, {"method": "coconut", "model": "model", "steps": steps, "end": s.end, "begin": None, "stop": None})

    return {"status": "done", "final": str(_finish(cfg, write, results)), **results}


# --------------------------------------------------------------------------- projection head


def _frozen_copy(hf: nn.Module) -> nn.Module:
    """An independent frozen copy of a transformers model (built from its config, weights
    copied; not `copy.deepcopy`, which would drag along whatever wraps the model)."""
    p = next(hf.parameters())
    with torch.random.fork_rng(devices=[]):
        teacher = type(hf)(hf.config)
    teacher.load_state_dict(hf.state_dict())
    teacher.to(device=p.device, dtype=p.dtype).eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    return teacher


def chain_ce(vocab: VocabView, hidden: Tensor, ids: Tensor, n_prompt: Sequence[int], length: Sequence[int]) -> tuple[Tensor, int]:
    """Cross-entropy of every token after the prompt of right-padded rows (`hidden` [B, S,
    d] from a forward over `ids` [B, S]; row i: `n_prompt[i]` prompt tokens, `length[i]`
    real ones): the token at t predicted at t - 1, one mean over all of them."""
    at = torch.arange(ids.shape[1] - 1, device=ids.device)[None]
    lo = torch.tensor([n - 1 for n in n_prompt], device=ids.device)[:, None]
    hi = torch.tensor([n - 1 for n in length], device=ids.device)[:, None]
    sel = (at >= lo) & (at < hi)
    return vocab.ce(hidden[:, :-1][sel], ids[:, 1:][sel]), int(sel.sum())


def projection_loss(
    vocab: VocabView, model: LatentModel, batch: Sequence[Encoded], answer_at: Sequence[int], K: int, distill_weight: float,
    teacher: nn.Module | None, teacher_ce_weight: float = 0.0,
) -> StepLoss:  # fmt: skip
    """`run_projection`'s loss on one batch: the student (prompt, K latents `head(last
    hidden)`, then the suffix) with its cross-entropy on the suffix, plus `distill_weight`
    x the mean over the L layers of smooth-L1(student, teacher) / std(teacher) at the
    position predicting the answer (`answer_at[i]`: the answer's first token in row i's
    suffix). The teacher reads the explicit chain (`Encoded.cot`): `teacher` a frozen
    model, or None for CODI's shared teacher, `model` itself, whose cross-entropy on the
    chain and answer is added with weight `teacher_ce_weight`. The teacher's hidden
    states are detached (a target, as in CODI, `src/model.py`: `ref_selected.detach()`)."""
    want_h = distill_weight > 0
    shared = teacher is None
    u = unroll(model.hf, [e.prompt for e in batch], K, lambda j, h, m: model.head(h[:, -1]), [e.suffix for e in batch], hidden_states=want_h)
    ce, n = after_loss(vocab, u)
    metrics = {"ce": float(ce.detach())}
    loss = ce
    if not want_h and not (shared and teacher_ce_weight > 0):
        return StepLoss(loss, tokens=n, metrics=metrics)
    net = model.hf if shared else teacher
    t_rows = [e.cot()[0] for e in batch]
    with torch.set_grad_enabled(shared and teacher_ce_weight > 0 and torch.is_grad_enabled()):
        E_t, m_t, ids_t = _right_pad(net, t_rows)
        t_out = _base_forward(net, E_t, m_t, hidden_states=want_h)
    if shared:
        t_ce, t_n = chain_ce(vocab, t_out.last_hidden_state, ids_t, [len(e.prompt) for e in batch], [len(r) for r in t_rows])
        metrics["teacher_ce"] = float(t_ce.detach())
        loss = loss + teacher_ce_weight * t_ce
        n += t_n
    if want_h:
        rows = torch.arange(len(batch))
        pos_s = torch.tensor([u.P + u.n_positions + a - 1 for a in answer_at])
        pos_t = torch.tensor([len(e.prompt) + sum(len(x) for x in e.steps) + a - 1 for e, a in zip(batch, answer_at)])
        dist = []
        for hs, ht in zip(u.hidden_states[1:], t_out.hidden_states[1:]):
            a, b = hs[rows, pos_s], ht[rows, pos_t].detach()
            dist.append(F.smooth_l1_loss(a, b) / (b.std() + 1e-6))
        distill = torch.stack(dist).mean()
        loss = loss + distill_weight * distill
        metrics["distill"] = float(distill.detach())
    return StepLoss(loss, tokens=n, metrics=metrics)


def run_projection(cfg: ProjectionConfig, resume: bool = False, bench: Any = None, on_step=None, cancel=None) -> dict:
    from ..latent.heads import ProjectionModule
    from ..latent.policies import ProjectionHead

    s = setup(cfg, bench)
    hf = s.bench.hf
    teacher = _frozen_copy(hf) if cfg.teacher == "frozen" else None  # None: CODI's, the model itself
    d = s.bench.arch.d_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = ProjectionModule(d, cfg.head_hidden or 2 * d).to(next(hf.parameters()).device)
    model = LatentModel(_prepare_base(hf, cfg), head=head)
    tok = s.bench.tokenizer
    a_idx = {id(e): answer_index(e, tok) for e in s.data}
    K = cfg.latent_steps

    def loss_fn(model: LatentModel, batch: list[Encoded]) -> StepLoss:
        return projection_loss(s.vocab, model, batch, [a_idx[id(e)] for e in batch], K, cfg.distill_weight, teacher, cfg.teacher_ce_weight)

    probe = recorder_for(cfg, s.bench, lambda m: ProjectionHead(head_tensors(m.head), steps=K, end=s.end))
    res = train(model, s.data, loss_fn, cfg, resume=resume, on_step=on_step, cancel=cancel, on_checkpoint=probe)
    results: dict[str, Any] = {"steps": res.step, "final_loss": res.final_loss}
    if res.status != "done":
        return {"status": res.status, **results}
    base_trained = bool(cfg.train_modules or cfg.lora_rank)
    hf = _merged(model.base).eval()
    s.bench.hf = hf
    tensors = {k: v.detach().float().cpu() for k, v in head.state_dict().items()}
    spec = ProjectionHead(tensors, steps=K, end=s.end)
    results["eval"] = quick_eval(s.bench, spec, cfg.eval_n, cfg.task)

    def write(tmp: Path) -> None:
        if base_trained:
            _save_model(hf, tok, tmp / "model")
        _save_tensors(tmp / "projection_head.safetensors", tensors)
        _write_policy(tmp, {"method": "projection", "model": "model" if base_trained else cfg.model, "steps": K, "end": s.end, "head": "projection_head.safetensors"})

    return {"status": "done", "final": str(_finish(cfg, write, results)), **results}


# --------------------------------------------------------------------------- latent head


def _grouped(data: Sequence[Encoded], size: int, seed: int) -> list[list[Encoded]]:
    """Batches of problems with the same number of reasoning steps (so every row of a batch
    thinks for the same number of latent steps), in a seeded order."""
    by: dict[int, list[Encoded]] = {}
    for e in data:
        by.setdefault(len(e.steps), []).append(e)
    out: list[list[Encoded]] = []
    rng = random.Random(f"latent-head-groups:{seed}")
    for n in sorted(by):
        items = by[n][:]
        rng.shuffle(items)
        out.extend(items[i : i + size] for i in range(0, len(items), size))
    return out


def curriculum_stage(step: int, steps: int, stages: int) -> int:
    """The curriculum stage (1..`stages`) of optimizer step `step` (0-based) of a run of
    `steps`: stage k trains steps floor((k-1) steps / stages) .. floor(k steps / stages) - 1.
    A pure function of the step (a resumed run is in the stage it left), the split even to
    one step, the last stage never empty; with fewer steps than stages the skipped stages
    are early ones."""
    return min(stages, -(-(step + 1) * stages // steps))


def curriculum_rows(e: Encoded, k: int | None) -> tuple[int, list[int]]:
    """(m, after) of problem `e` at curriculum stage `k`: its first m = min(k, n) reasoning
    steps become latent and `after` (fed after the latents) is the remaining steps as text,
    then the suffix (`</think>`, the answer). `k` None: every step latent (m = n, after =
    the suffix), the last stage and the recipe without a curriculum."""
    m = len(e.steps) if k is None else min(k, len(e.steps))
    return m, sum(e.steps[m:], []) + e.suffix


def _curriculum_resume(cfg: LatentHeadConfig) -> int:
    """The step a resume starts at (0 when there is no readable checkpoint: the trainer
    says why). A checkpoint that predates the curriculum trained with curriculum 'none'
    (it records none), and the stage boundaries split `steps`, so a curriculum run resumes
    only with the same `steps`; anything else is refused, never silently re-staged."""
    from .checkpoint import CKPT_DIR, STATE_JSON
    from .config import CONFIG_FILE

    ck = Path(cfg.out_dir) / CKPT_DIR
    try:
        old = json.loads((ck / CONFIG_FILE).read_text())
        step = json.loads((ck / STATE_JSON).read_text()).get("step", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    if isinstance(old, dict) and cfg.curriculum != "none":
        if "curriculum" not in old:
            raise InputError(f"checkpoint {str(ck)!r} predates the curriculum (it trained fully latent); resume it with curriculum='none', not {cfg.curriculum!r}")
        if old.get("steps") != cfg.steps:
            raise InputError(
                f"checkpoint {str(ck)!r} splits steps={old.get('steps')!r} over its curriculum stages; resuming with steps={cfg.steps} "
                f"would move the stage boundaries; resume with steps={old.get('steps')!r}"
            )
    return step if isinstance(step, int) and not isinstance(step, bool) else 0


def latent_head_stepper(
    head: nn.Module, hf: nn.Module, prompts: Sequence[Sequence[int]], pairing: str = "same"
) -> Callable[[int, Tensor, Tensor], Tensor]:
    """`next_latent` for `unroll` that does what the engine's latent-head runner does: at
    the first step, prefill the head over the (left-padded) prompt with `pairing` ("same":
    token t with hidden t, the default and the reference runtime's; "next": token t+1 with
    hidden t); at every step, fuse the model's greedy token with the newest hidden state
    and run the head causally over everything so far (no cache: gradients reach every
    step)."""
    from ..generate import base_model
    from ..latent.policies import _head_mask

    rotary = base_model(hf).rotary_emb
    emb, lm_head = hf.get_input_embeddings(), hf.get_output_embeddings()
    ids = pad_left(prompts, -1).input_ids.to(emb.weight.device)  # -1 at padding, as the engine's prompt ids
    state: dict[str, Tensor] = {}

    def next_latent(j: int, h: Tensor, m: Tensor) -> Tensor:
        if j == 0:
            if pairing == "next":
                tok, hh = ids[:, 1:], h[:, :-1]
                valid = (ids[:, 1:] >= 0) & (ids[:, :-1] >= 0)
            else:
                tok, hh, valid = ids, h, ids >= 0
            state["x"] = head.fuse(emb(tok.clamp(min=0)), hh)
            state["kv"] = valid.long()
            state["pos"] = (valid.long().cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            token = lm_head(h[:, -1]).argmax(-1)
        x = head.fuse(emb(token), h[:, -1])[:, None]
        state["x"] = torch.cat([state["x"], x], 1)
        state["kv"] = torch.cat([state["kv"], torch.ones_like(state["kv"][:, :1])], 1)
        state["pos"] = torch.cat([state["pos"], state["kv"].sum(-1, keepdim=True) - 1], 1)
        X, pos = state["x"], state["pos"]
        return head(X, rotary(X, pos), _head_mask(state["kv"], X.shape[1], X.dtype), pos, None)[:, -1]

    return next_latent


def _check_resume_pairing(cfg: LatentHeadConfig) -> None:
    """A checkpoint written before the pairing was a setting trained with "next" (then the
    only pairing) and records none; resuming it with another pairing would silently change
    the math, so it is refused."""
    from .checkpoint import CKPT_DIR
    from .config import CONFIG_FILE

    path = Path(cfg.out_dir) / CKPT_DIR / CONFIG_FILE
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # no checkpoint / unreadable: the trainer says so
    if isinstance(old, dict) and "pairing" not in old and cfg.pairing != "next":
        raise InputError(
            f"checkpoint {str(path.parent)!r} was trained with pairing 'next' (it predates the pairing setting); "
            f"resume it with pairing='next', not {cfg.pairing!r}"
        )


def run_latent_head(cfg: LatentHeadConfig, resume: bool = False, bench: Any = None, on_step=None, cancel=None) -> dict:
    from ..latent.heads import LATENT_HEAD_FILE, LatentHeadModule, passthrough_init_
    from ..latent.policies import LatentHead

    if resume:
        _check_resume_pairing(cfg)
    start = _curriculum_resume(cfg) if resume else 0
    s = setup(cfg, bench)
    if s.close is None:
        raise InputError(f"the latent head ends thinking by self-exit on {CLOSE!r}, which the tokenizer of {cfg.model!r} lacks; use a thinking model (e.g. qwen3.5-micro)")
    hf = s.bench.hf
    for p in hf.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = LatentHeadModule(hf, cfg.head_intermediate or None).to(next(hf.parameters()).device)
        if cfg.head_init == "passthrough":  # latent mode starts as greedy CoT with hidden tokens
            init = passthrough_init_(head, hf, seed=cfg.seed)
            init_info = {"head_init": "passthrough", "to_embed_scale": init["scale"], "embedding_rms": [init["rms_min"], init["rms_mean"], init["rms_max"]]}
        else:
            nn.init.normal_(head.core.fc.weight, std=0.02)
            nn.init.normal_(head.to_embed.weight, std=0.02)
            init_info = {"head_init": "random"}
    model = LatentModel(hf, head=head)
    groups = _grouped(s.data, cfg.batch_size, cfg.seed)
    close = s.close
    c, chunk = cfg.thoughts_per_step, cfg.chunk_size
    stages = (cfg.curriculum_stages or max(len(e.steps) for e in s.data)) if cfg.curriculum == "steps" else 1
    init_info["curriculum"] = {"kind": cfg.curriculum, "stages": stages, "steps_per_stage": [sum(curriculum_stage(t, cfg.steps, stages) == k for t in range(cfg.steps)) for k in range(1, stages + 1)]}
    # the trainer hands loss_fn no step: it is counted (grad_accum calls per optimizer step,
    # from the checkpoint's step on resume), so the stage stays a pure function of the step
    counted = {"start": start, "calls": 0}

    def loss_fn(model: LatentModel, batch: list[list[Encoded]]) -> StepLoss:
        step = counted["start"] + counted["calls"] // cfg.grad_accum
        counted["calls"] += 1
        k = curriculum_stage(step, cfg.steps, stages)
        total, n_tok, exit_terms = 0.0, 0, []
        for group in batch:  # one group: one step count n, so one latent count
            rows = [curriculum_rows(e, None if k == stages else k) for e in group]
            m = rows[0][0]
            n_lat, full = m * c, m == len(group[0].steps)
            prompts = [e.prompt for e in group]
            next_latent = latent_head_stepper(model.head, model.hf, prompts, cfg.pairing)
            u = unroll(model.hf, prompts, n_lat, next_latent, [a for _, a in rows], chunk=chunk)
            ce, n = after_loss(s.vocab, u)  # fully latent: the text starts with </think>, the exit at the last step
            loss = ce
            # "not yet" after every latent step not followed by </think>: all but the last of a
            # fully latent row, all of them when explicit steps follow
            ends = [u.P + (j + 1) * chunk - 1 for j in range(n_lat - 1 if full else n_lat)]
            if ends and cfg.exit_weight > 0:
                lp = s.vocab.logprob(u.hidden[:, ends].reshape(-1, u.hidden.shape[-1]), close)
                early = -torch.log1p(-lp.exp().clamp(max=1 - 1e-6)).mean()
                loss = loss + cfg.exit_weight * early
                exit_terms.append(float(early.detach()))
            total = total + loss / len(batch)
            n_tok += n
        metrics = {"stage": float(k)}
        if exit_terms:
            metrics["early_exit_loss"] = sum(exit_terms) / len(exit_terms)
        return StepLoss(total, tokens=n_tok, metrics=metrics)

    probe = recorder_for(cfg, s.bench, lambda m: LatentHead(head_tensors(m.head), think_close_token_id=close, max_internal_tokens=cfg.max_internal_tokens, chunk_size=chunk, pairing=cfg.pairing))
    res = train(model, groups, loss_fn, cfg.replace(batch_size=1), resume=resume, on_step=on_step, cancel=cancel, on_checkpoint=probe)
    results: dict[str, Any] = {"steps": res.step, "final_loss": res.final_loss, **init_info, "pairing": cfg.pairing}
    if res.status != "done":
        return {"status": res.status, **results}
    tensors = {k: v.detach().float().cpu() for k, v in head.state_dict().items()}
    adapter = {
        "format": "workbench-latent-head", "version": 1, "base_model": cfg.model, "hidden_size": s.bench.arch.d_model,
        "think_close_token_id": close, "max_internal_tokens": cfg.max_internal_tokens, "chunk_size": chunk, "pairing": cfg.pairing,
    }  # fmt: skip
    spec = LatentHead(tensors, think_close_token_id=close, max_internal_tokens=cfg.max_internal_tokens, chunk_size=chunk, pairing=cfg.pairing)
    results["eval"] = quick_eval(s.bench, spec, cfg.eval_n, cfg.task)

    def write(tmp: Path) -> None:
        _save_tensors(tmp / LATENT_HEAD_FILE, tensors)
        atomic_write_text(tmp / "adapter_config.json", json.dumps(adapter, indent=1) + "\n")
        _write_policy(tmp, {"method": "latent_head", "model": cfg.model, "head": LATENT_HEAD_FILE})

    return {"status": "done", "final": str(_finish(cfg, write, results)), **results}


# --------------------------------------------------------------------------- pause tokens


def _pause_init(hf: nn.Module, n: int, seed: int) -> Tensor:
    """`n` starting pause vectors [n, d] (float32): the mean of the real (non-zero) token
    embeddings plus Gaussian noise of their per-dimension std, seeded."""
    W = hf.get_input_embeddings().weight.detach()
    rows = W[(W != 0).any(-1)]
    g = torch.Generator().manual_seed(seed)
    init = rows.mean(0) + torch.randn(n, W.shape[1], generator=g).to(W) * rows.std(0)
    return init.float().clone()


def _save_pause_file(path: Path, embeds: Tensor, end: str | None) -> None:
    """The pause file; `end` (the marker fed after the pauses) goes in its metadata, so
    `PauseTokens.load` (and `load_policy`) rebuild the same policy."""
    from safetensors.torch import save_file

    save_file({"pause_embeds": embeds.detach().float().cpu().contiguous()}, str(path), metadata={"end": end} if end else None)


def run_pause(cfg: PauseConfig, resume: bool = False, bench: Any = None, on_step=None, cancel=None) -> dict:
    """Pause tokens before CoT (see `PauseConfig`)."""
    from ..latent.policies import PAUSE_FILE, PauseTokens

    s = setup(cfg, bench)
    hf, tok = s.bench.hf, s.bench.tokenizer
    targets: dict[int, list[int]] = {}
    if cfg.targets == "self":  # the model's own greedy chain, first prefix_tokens tokens
        from ..generate import generate_full

        for i in range(0, len(s.data), 64):
            chunk = s.data[i : i + 64]
            res = generate_full(s.bench, [e.prompt for e in chunk], max_new_tokens=cfg.prefix_tokens, chat=False)
            for e, ids in zip(chunk, res.token_ids):
                targets[id(e)] = list(ids)
    model = LatentModel(_prepare_base(hf, cfg), pause=_pause_init(hf, cfg.n_pause, cfg.seed))

    def loss_fn(model: LatentModel, batch: list[Encoded]) -> StepLoss:
        after = [sum(e.steps, []) + e.suffix for e in batch]
        u = unroll(model.hf, [e.prompt for e in batch], cfg.n_pause, None, after, fixed=model.pause)
        w = torch.zeros_like(u.after_mask)
        for i, e in enumerate(batch):
            if cfg.targets == "self":
                t = targets[id(e)]
                u.after_ids[i, : len(t)] = torch.as_tensor(t, device=u.after_ids.device)
                w[i, : min(len(t), cfg.prefix_tokens)] = 1
            else:
                w[i, : cfg.prefix_tokens] = 1
        loss, n = after_loss(s.vocab, u, w)
        return StepLoss(loss, tokens=n)

    probe = recorder_for(cfg, s.bench, lambda m: PauseTokens({"pause_embeds": m.pause.detach().float().cpu().clone()}))
    res = train(model, s.data, loss_fn, cfg, resume=resume, on_step=on_step, cancel=cancel, on_checkpoint=probe)
    results: dict[str, Any] = {"steps": res.step, "final_loss": res.final_loss}
    if res.status != "done":
        return {"status": res.status, **results}
    base_trained = bool(cfg.train_modules or cfg.lora_rank)
    hf = _merged(model.base).eval()
    s.bench.hf = hf
    tensors = {"pause_embeds": model.pause.detach().float().cpu()}
    results["eval"] = quick_eval(s.bench, PauseTokens(tensors), cfg.eval_n, cfg.task)

    def write(tmp: Path) -> None:
        if base_trained:
            _save_model(hf, tok, tmp / "model")
        _save_tensors(tmp / PAUSE_FILE, tensors)
        _write_policy(tmp, {"method": "pause", "model": "model" if base_trained else cfg.model, "head": PAUSE_FILE, "steps": cfg.n_pause})

    return {"status": "done", "final": str(_finish(cfg, write, results)), **results}


# --------------------------------------------------------------------------- pause tokens, then the answer (Goyal et al.)


def answer_weights(batch: Sequence[Encoded], close: int | None) -> list[list[int]]:
    """Per row of `pause_answer_loss`'s text after the pauses (`e.suffix`): 1 for an
    answer token, 0 for the leading `</think>` (forced at inference, so never predicted)."""
    out = []
    for e in batch:
        skip = 1 if close is not None and e.suffix[:1] == [close] else 0
        out.append([0] * skip + [1] * (len(e.suffix) - skip))
    return out


def pause_answer_loss(vocab: VocabView, model: LatentModel, batch: Sequence[Encoded], n_pause: int, close: int | None) -> StepLoss:
    """Goyal et al.'s pause-finetuning loss on one batch: prompt, `n_pause` pause vectors
    (`model.pause`, [1, d] repeated or [n_pause, d]), then `e.suffix`
    (`</think>\n\n#### ans<|im_end|>`); cross-entropy on the answer tokens only (every
    suffix token after `</think>`, each predicted from the position before it). The prompt
    and the pause positions' outputs carry no loss, nor does `</think>` (an input here, as
    at inference)."""
    pause = model.pause.expand(n_pause, -1) if model.pause.shape[0] == 1 else model.pause
    u = unroll(model.hf, [e.prompt for e in batch], n_pause, None, [e.suffix for e in batch], fixed=pause)
    w, _ = pad_right(answer_weights(batch, close))
    loss, n = after_loss(vocab, u, w[:, : u.after_ids.shape[1]])
    return StepLoss(loss, tokens=n)


def run_pause_answer(cfg: PauseAnswerConfig, resume: bool = False, bench: Any = None, on_step=None, cancel=None) -> dict:
    """Pause tokens then the answer, no chain (see `PauseAnswerConfig`)."""
    from ..latent.policies import PAUSE_FILE, PauseTokens

    s = setup(cfg, bench)
    hf, tok = s.bench.hf, s.bench.tokenizer
    K = cfg.n_pause
    base = _prepare_base(hf, cfg)
    model = LatentModel(base, pause=_pause_init(hf, 1 if cfg.shared_pause else K, cfg.seed))
    probe = recorder_for(cfg, s.bench, lambda m: PauseTokens({"pause_embeds": m.pause.detach().float().cpu().expand(K, -1).contiguous()}, end=s.end))
    res = train(model, s.data, lambda m, batch: pause_answer_loss(s.vocab, m, batch, K, s.close), cfg, resume=resume, on_step=on_step, cancel=cancel, on_checkpoint=probe)
    results: dict[str, Any] = {"steps": res.step, "final_loss": res.final_loss}
    if res.status != "done":
        return {"status": res.status, **results}
    base_trained = bool(cfg.train_modules or cfg.lora_rank)
    hf = _merged(model.base).eval()
    s.bench.hf = hf
    embeds = model.pause.detach().float().cpu().expand(K, -1).contiguous()
    spec = PauseTokens({"pause_embeds": embeds}, end=s.end)
    results["eval"] = quick_eval(s.bench, spec, cfg.eval_n, cfg.task)

    def write(tmp: Path) -> None:
        if base_trained:
            _save_model(hf, tok, tmp / "model")
        _save_pause_file(tmp / PAUSE_FILE, embeds, s.end)
        _write_policy(tmp, {"method": "pause", "recipe": "pause-answer", "model": "model" if base_trained else cfg.model, "head": PAUSE_FILE, "steps": K, "end": s.end})

    return {"status": "done", "final": str(_finish(cfg, write, results)), **results}


# --------------------------------------------------------------------------- UPFT (Ji et al.)

UPFT_SAMPLES = "upft_samples.json"
_SAMPLE_CHUNK = 64


@dataclass
class UpftExample:
    """One training row of `upft`: the CoT prompt and the model's own sampled tokens after
    it (the first `prefix_tokens`, or the whole sample for a full-length row)."""

    problem_id: str
    prompt: list[int]
    sample: list[int]
    full: bool


def upft_full_rows(n: int, ratio: float, seed: int) -> set[int]:
    """Indices of the `round(ratio * n)` problems that keep their whole sample (seeded)."""
    k = int(round(ratio * n))
    return set(random.Random(f"upft-full:{seed}").sample(range(n), k))


def upft_sample_seed(seed: int, full: bool, chunk: int) -> int:
    """Generator seed of sampling chunk `chunk` (of 64 prompts, in data order) of the
    prefix rows (full=False) or the full-length rows."""
    return (seed * 7919 + (100_003 if full else 0) + chunk) % 2_147_483_647


def upft_samples(bench: Any, data: Sequence[Encoded], cfg: UpftConfig) -> list[UpftExample]:
    """The model's own sampled answers to every training prompt (temperature
    `cfg.temperature`, `cfg.top_p`): `prefix_tokens` new tokens for a prefix row,
    `max_sample_tokens` for a full-length row (`upft_full_rows`), generated 64 prompts at a
    time (in data order, prefix rows first) with the seed `upft_sample_seed`. A sample
    ends early only where the model emits its end-of-turn token (kept: it is part of the
    sample)."""
    from ..generate import generate_full

    full = upft_full_rows(len(data), cfg.full_ratio, cfg.seed)
    out: list[UpftExample | None] = [None] * len(data)
    for is_full in (False, True):
        idx = [i for i in range(len(data)) if (i in full) == is_full]
        for c in range(0, len(idx), _SAMPLE_CHUNK):
            part = idx[c : c + _SAMPLE_CHUNK]
            res = generate_full(
                bench, [data[i].prompt for i in part], chat=False, temperature=cfg.temperature, top_p=cfg.top_p,
                max_new_tokens=cfg.max_sample_tokens if is_full else cfg.prefix_tokens, seed=upft_sample_seed(cfg.seed, is_full, c // _SAMPLE_CHUNK),
            )  # fmt: skip
            for i, ids in zip(part, res.token_ids):
                out[i] = UpftExample(str(data[i].problem.id), list(data[i].prompt), [int(t) for t in ids], is_full)
    return [x for x in out if x is not None]


DATA_KEYS = ("model", "seed", "task", "n_train", "min_reasoning_steps", "max_reasoning_steps", "digits", "min_hops", "max_hops")


def cache_header(cfg: Any, keys: Sequence[str]) -> dict:
    """The settings a cached sample file belongs to: the data's (`DATA_KEYS`) and `keys`."""
    return {k: getattr(cfg, k) for k in (*DATA_KEYS, *keys) if hasattr(cfg, k)}


def read_cached_rows(path: Path, header: dict, field_name: str, data: Sequence[Encoded], what: str) -> list[dict] | None:
    """The rows (one dict per training problem, in order, each with the problem's "id") a
    run cached in `path` for an exact resume; None when the file belongs to other settings
    (then the caller draws again). A file that is not JSON, holds the wrong number of rows
    or rows of other problems is a FileFormatError naming it and the field."""
    from ..errors import FileFormatError
    from ..paths import read_json_object

    try:
        saved = read_json_object(path)
    except (FileFormatError, ValueError) as e:
        raise FileFormatError(f"{path}: the saved {what} cannot be read ({e}); delete the file to sample again") from None
    if saved.get("config") != header:
        return None
    rows = saved.get(field_name)
    if not isinstance(rows, list) or len(rows) != len(data):
        raise FileFormatError(f"{path}: field {field_name!r} must list one entry per training problem ({len(data)})")
    for i, (e, r) in enumerate(zip(data, rows)):
        if not isinstance(r, dict) or r.get("id") != str(e.problem.id):
            raise FileFormatError(f"{path}: entry {i} of {field_name!r} is not training problem {e.problem.id!r}; delete the file to sample again")
    return rows


def _upft_header(cfg: UpftConfig) -> dict:
    return cache_header(cfg, ("prefix_tokens", "full_ratio", "temperature", "top_p", "max_sample_tokens"))


def _upft_load_samples(path: Path, cfg: UpftConfig, data: Sequence[Encoded]) -> list[UpftExample] | None:
    """The samples a run saved (for an exact resume), or None when they do not belong to
    this run's settings and data (then they are drawn again)."""
    from ..errors import FileFormatError

    rows = read_cached_rows(path, _upft_header(cfg), "samples", data, "UPFT samples")
    if rows is None:
        return None
    out = []
    for e, r in zip(data, rows):
        if not isinstance(r.get("ids"), list) or not isinstance(r.get("full"), bool):
            raise FileFormatError(f"{path}: sample {len(out)} of training problem {e.problem.id!r} is malformed; delete the file to sample again")
        out.append(UpftExample(str(e.problem.id), list(e.prompt), [int(t) for t in r["ids"]], r["full"]))
    return out


def _full_vocab_ce(vocab: VocabView, hidden: Tensor, targets: Tensor) -> Tensor:
    """`vocab.ce`, also for targets whose unembedding row is all zero (a compact-vocabulary
    model samples those too: their logit is exactly 0), so a sample is trained on as the
    model wrote it. Equal to the full-vocabulary cross-entropy either way."""
    from .arith import _full_logsumexp

    if vocab.ids is None:
        return vocab.ce(hidden, targets)
    W = vocab.hf.get_output_embeddings().weight
    local = vocab.lookup[targets.cpu()].to(W.device)
    logits = hidden.float() @ W[vocab.ids.to(W.device)].float().t()
    tgt = torch.where(local >= 0, logits.gather(-1, local.clamp(min=0)[:, None])[:, 0], torch.zeros_like(logits[:, 0]))
    return (_full_logsumexp(logits, vocab.V - len(vocab.ids)) - tgt).mean()


def upft_loss(vocab: VocabView, model: LatentModel, batch: Sequence[UpftExample]) -> StepLoss:
    """UPFT's loss: cross-entropy on each row's sampled tokens only (each predicted from the
    position before it); the prompt carries none."""
    rows = [x.prompt + x.sample for x in batch]
    E, M, ids = _right_pad(model.hf, rows)
    h = _base_forward(model.hf, E, M).last_hidden_state
    r_idx = [i for i, x in enumerate(batch) for _ in x.sample]
    p_idx = [len(x.prompt) - 1 + j for x in batch for j in range(len(x.sample))]
    if not r_idx:
        return StepLoss(h.sum() * 0.0, tokens=0)
    r, p = torch.tensor(r_idx, device=h.device), torch.tensor(p_idx, device=h.device)
    return StepLoss(_full_vocab_ce(vocab, h[r, p], ids[r, p + 1]), tokens=len(r_idx))


def run_upft(cfg: UpftConfig, resume: bool = False, bench: Any = None, on_step=None, cancel=None) -> dict:
    """UPFT (see `UpftConfig`): sample, then fine-tune the model on its own prefixes."""
    from ..errors import check_writable_target
    from ..paths import atomic_write_text as write_text
    from .checkpoint import CKPT_DIR

    check_writable_target(cfg.out_dir, "out_dir")
    out = Path(cfg.out_dir)
    if not resume and (out / CKPT_DIR).exists():  # before sampling overwrites that run's samples
        raise InputError(f"{str(out)!r} already holds a checkpoint; pass resume=True (--resume) to continue it, or choose another out_dir")
    s = setup(cfg, bench)
    hf, tok = s.bench.hf, s.bench.tokenizer
    path = out / UPFT_SAMPLES
    got = _upft_load_samples(path, cfg, s.data) if resume and path.is_file() else None
    if got is None:
        hf.eval()
        got = upft_samples(s.bench, s.data, cfg)
        out.mkdir(parents=True, exist_ok=True)
        rows = [{"id": x.problem_id, "full": x.full, "ids": x.sample} for x in got]
        write_text(path, json.dumps({"config": _upft_header(cfg), "samples": rows}) + "\n")
    examples = got
    model = LatentModel(_prepare_base(hf, cfg))
    res = train(model, examples, lambda m, batch: upft_loss(s.vocab, m, batch), cfg, resume=resume, on_step=on_step, cancel=cancel)
    n_full = sum(x.full for x in examples)
    results: dict[str, Any] = {
        "steps": res.step, "final_loss": res.final_loss, "samples": len(examples), "full_length_samples": n_full,
        "mean_prefix_tokens": sum(len(x.sample) for x in examples if not x.full) / max(1, len(examples) - n_full),
    }  # fmt: skip
    if res.status != "done":
        return {"status": res.status, **results}
    hf = _merged(model.base).eval()
    s.bench.hf = hf
    results["eval"] = quick_eval(s.bench, "cot", cfg.eval_n, cfg.task)

    def write(tmp: Path) -> None:
        _save_model(hf, tok, tmp / "model")
        _write_policy(tmp, {"method": "cot", "recipe": "upft", "model": "model"})

    return {"status": "done", "final": str(_finish(cfg, write, results)), **results}


RUNNERS = {
    "coconut": (CoconutConfig, run_coconut), "projection-head": (ProjectionConfig, run_projection), "latent-head": (LatentHeadConfig, run_latent_head),
    "pause": (PauseConfig, run_pause), "pause-answer": (PauseAnswerConfig, run_pause_answer), "upft": (UpftConfig, run_upft),
}  # fmt: skip


def _register_seed_recipes() -> None:
    """Latent-SFT and QThink's rollout teacher live in their own modules (which import
    this one and add themselves to RUNNERS at their end); importing them here, after
    everything above is defined, registers them whichever module is imported first."""
    import importlib

    for name in ("latent_sft", "qthink"):
        importlib.import_module(f"{__package__}.{name}")

__all__ = [
    "LatentRecipeConfig", "CoconutConfig", "ProjectionConfig", "LatentHeadConfig", "PauseConfig", "PauseAnswerConfig", "UpftConfig", "LatentModel",
    "unroll", "after_loss", "run_coconut", "run_projection", "run_latent_head", "run_pause", "run_pause_answer", "run_upft", "pause_answer_loss",
    "upft_samples", "upft_loss", "RUNNERS", "POLICY_FILE",
]  # fmt: skip

_register_seed_recipes()

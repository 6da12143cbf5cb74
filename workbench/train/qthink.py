"""QThink's teacher for the projection head (recipe `projection-qthink`).

QThink ("Parallel Latent Reasoning via Per-Step Distillation of Multiple Rollouts";
LakshyAAAgrawal's model cards QThink-Qwen3-1.7B-GSM8k and continuous-thought-r11_rw_
finalstep_v1 on the Hugging Face hub; we found no public training code, so this follows
those cards' description): the base model samples G = 16 chain-of-thought rollouts per
training problem; the teacher target is an average of the rollouts' hidden states,
"reward-weighted average of CORRECT rollouts only" (the cards' `codi_reward_weighted`)
or uniform over all rollouts (their best run), either at the final step only (CODI's
position: the one that predicts the answer) or per step as well (K evenly spaced
positions inside the `<think>` block, one per latent step).

Here, beside `run_projection`'s single-chain teacher (the frozen starting model reading
the reference chain), `rollout_teacher` averages, layer by layer, the frozen starting
model's hidden states over the rollouts at the same kind of position `run_projection`
distils (`distill_positions`), weighted by `weighting`:
  * "reward": w_g = r_g / sum r, r_g = 1 for a rollout whose answer is correct (the
    task's own check, `tasks.extract_answer` + `is_correct`), else 0 — with binary
    rewards, the uniform mean of the correct ones;
  * "uniform": w_g = 1 / G over every rollout that has the positions (one that never
    closes `</think>` or writes no answer has none and is left out).
When no rollout qualifies ("reward" with none correct, or none with positions), the
target falls back to the single-chain teacher: the same positions on the reference
chain (documented fallback; `fallback` counts them).

Rollouts (token ids and correctness) are sampled once and kept in
`<out_dir>/qthink_rollouts.json`; a resumed run reads them back, so its targets (a
deterministic function of the rollouts and the frozen teacher) are the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import FileFormatError, InputError, check_float, check_int
from .arith import Encoded
from .latent_recipes import (
    RUNNERS,
    LatentModel,
    ProjectionConfig,
    _base_forward,
    _finish,
    _frozen_copy,
    _merged,
    _prepare_base,
    _right_pad,
    _save_model,
    _save_tensors,
    _write_policy,
    after_loss,
    answer_index,
    cache_header,
    quick_eval,
    read_cached_rows,
    setup,
    unroll,
)
from .loop import StepLoss, train
from .trajectories import head_tensors, recorder_for

ROLLOUTS_FILE = "qthink_rollouts.json"
_CHUNK = 64


@dataclass
class QThinkConfig(ProjectionConfig):
    """The projection head (`ProjectionConfig`) with QThink's teacher: `n_rollouts`
    samples per problem from the starting model (`rollout_temperature`, `rollout_top_p`,
    at most `max_rollout_tokens` tokens), averaged with `weighting` ("reward": correct
    ones; "uniform": all) at `positions` ("final": the position predicting the answer;
    "per_step": also one evenly spaced position in the chain per latent step)."""

    recipe: str = "projection-qthink"
    out_dir: str = "runs/projection-qthink"
    n_rollouts: int = 16
    rollout_temperature: float = 1.0
    rollout_top_p: float = 1.0
    max_rollout_tokens: int = 64
    weighting: str = "reward"
    positions: str = "final"

    def validate(self) -> None:
        super().validate()
        check_int(self.n_rollouts, "n_rollouts", low=1)
        check_int(self.max_rollout_tokens, "max_rollout_tokens", low=2)
        check_float(self.rollout_temperature, "rollout_temperature (> 0: rollouts are samples)", low=0.0, low_open=True)
        check_float(self.rollout_top_p, "rollout_top_p", low=0.0, high=1.0, low_open=True)
        check_float(self.distill_weight, "distill_weight (> 0: the teacher is the point of this recipe)", low=0.0, low_open=True)
        if self.weighting not in ("reward", "uniform"):
            raise InputError(f"weighting must be 'reward' (correct rollouts) or 'uniform' (all rollouts), got {self.weighting!r}")
        if self.positions not in ("final", "per_step"):
            raise InputError(f"positions must be 'final' or 'per_step', got {self.positions!r}")


# --------------------------------------------------------------------------- the teacher target


def rollout_teacher(states: Tensor, rewards: Tensor, valid: Tensor, weighting: str, fallback: Tensor) -> tuple[Tensor, bool]:
    """The teacher target from G rollouts: states [G, ...] (each rollout's hidden states at
    the distillation positions, any trailing shape, e.g. [S, L, d]), rewards [G] (1 correct,
    0 not, or any non-negative score), valid [G] (the rollout has those positions).
    "reward": sum_g r_g s_g / sum_g r_g over valid rollouts; "uniform": the mean over valid
    rollouts. Returns (target, fell_back): `fallback` (the single-chain teacher's states)
    when no rollout qualifies (no valid one, or all rewards 0 under "reward")."""
    w = valid.to(states.dtype)
    if weighting == "reward":
        w = w * rewards.to(states.dtype)
    elif weighting != "uniform":
        raise InputError(f"weighting must be 'reward' or 'uniform', got {weighting!r}")
    total = float(w.sum())
    if total <= 0:
        return fallback, True
    return torch.einsum("g,g...->...", w / total, states), False


def distill_positions(close_at: int | None, answer_at: int | None, n_prompt: int, steps: int, per_step: bool) -> list[int] | None:
    """Positions (in prompt + continuation) whose hidden states are distilled for one
    chain: `answer_at` (index in the continuation of the first answer-digit token) gives
    the final one, n_prompt + answer_at - 1 (the position predicting the answer, as
    `run_projection`); per step also, for j < `steps`, n_prompt - 1 + ceil((j + 1) n /
    steps) with n = `close_at` (the chain's tokens before `</think>`). None when the chain
    lacks them (no answer, no `</think>`, or an empty chain)."""
    if answer_at is None:
        return None
    final = [n_prompt + answer_at - 1]
    if not per_step:
        return final
    if close_at is None or close_at < 1:
        return None
    return [n_prompt - 1 + math.ceil((j + 1) * close_at / steps) for j in range(steps)] + final


def _answer_at(tokenizer: Any, ids: Sequence[int], close: int | None) -> tuple[int | None, int | None]:
    """(index of `</think>`, index of the first answer-digit token after it) in `ids`."""
    c = ids.index(close) if close is not None and close in ids else None
    if close is not None and c is None:
        return None, None
    start = c + 1 if c is not None else 0
    for t in range(start, len(ids)):
        s = tokenizer.decode([ids[t]]).strip()
        if s and (s[0].isdigit() or s[0] == "-") and "####" in tokenizer.decode(list(ids[start:t])):
            return c, t
    return c, None


def rollout_correct(tokenizer: Any, ids: Sequence[int], answer: Any, close: int | None) -> bool:
    """The task's answer check on the text after the rollout's `</think>` (the whole text
    for a model without one; a rollout that never closes its think block is wrong)."""
    from ..tasks import extract_answer, is_correct

    if close is not None:
        if close not in ids:
            return False
        ids = ids[ids.index(close) + 1 :]
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    return bool(is_correct(extract_answer(text), answer))


# --------------------------------------------------------------------------- rollouts and their cache


def rollout_seed(seed: int, chunk: int) -> int:
    return (int(seed) * 7919 + 200_003 + int(chunk)) % 2_147_483_647


def sample_rollouts(bench: Any, data: Sequence[Encoded], cfg: QThinkConfig) -> list[list[list[int]]]:
    """`n_rollouts` sampled continuations per problem (in data order, 64 rows per call,
    seeded by `rollout_seed`)."""
    from ..generate import generate_full

    G = cfg.n_rollouts
    flat = [(i, g) for i in range(len(data)) for g in range(G)]
    out: list[list[list[int]]] = [[[] for _ in range(G)] for _ in data]
    for c in range(0, len(flat), _CHUNK):
        part = flat[c : c + _CHUNK]
        res = generate_full(bench, [data[i].prompt for i, _ in part], chat=False, temperature=cfg.rollout_temperature, top_p=cfg.rollout_top_p,
                            max_new_tokens=cfg.max_rollout_tokens, seed=rollout_seed(cfg.seed, c // _CHUNK))  # fmt: skip
        for (i, g), ids in zip(part, res.token_ids):
            out[i][g] = [int(t) for t in ids]
    return out


def _header(cfg: QThinkConfig) -> dict:
    return cache_header(cfg, ("n_rollouts", "rollout_temperature", "rollout_top_p", "max_rollout_tokens"))


def _load_rollouts(path: Path, cfg: QThinkConfig, data: Sequence[Encoded]) -> list[list[list[int]]] | None:
    rows = read_cached_rows(path, _header(cfg), "problems", data, "QThink rollouts")
    if rows is None:
        return None
    out = []
    for e, r in zip(data, rows):
        if not isinstance(r.get("rollouts"), list) or len(r["rollouts"]) != cfg.n_rollouts:
            raise FileFormatError(f"{path}: entry {len(out)} does not hold {cfg.n_rollouts} rollouts of problem {e.problem.id!r}; delete the file to sample again")
        out.append([[int(t) for t in x] for x in r["rollouts"]])
    return out


def teacher_targets(teacher: Any, tokenizer: Any, data: Sequence[Encoded], rollouts: Sequence[Sequence[Sequence[int]]], close: int | None, cfg: QThinkConfig) -> tuple[dict[int, Tensor], dict]:
    """Per problem (keyed by its index) the target [S, L, d] (S = 1 or latent_steps + 1
    positions, L layers after the embedding), and statistics (correct rollouts, problems
    that fell back to the single-chain teacher)."""
    per = cfg.positions == "per_step"
    K = cfg.latent_steps
    targets: dict[int, Tensor] = {}
    n_correct, n_fallback = 0, 0
    jobs: list[tuple[int, int, list[int], list[int]]] = []  # (problem, rollout or -1 = reference, ids, positions)
    meta: dict[int, dict] = {}
    for i, (e, rs) in enumerate(zip(data, rollouts)):
        ref_ids = [t for s in e.steps for t in s] + list(e.suffix)
        c_ref = len(ref_ids) - len(e.suffix) if close is not None else None
        ref_pos = distill_positions(c_ref, len(ref_ids) - len(e.suffix) + answer_index(e, tokenizer), len(e.prompt), K, per)
        jobs.append((i, -1, list(e.prompt) + ref_ids, ref_pos))
        rewards, valid = [], []
        for g, ids in enumerate(rs):
            ok = rollout_correct(tokenizer, ids, e.problem.answer, close)
            c, a = _answer_at(tokenizer, ids, close)
            pos = distill_positions(c, a, len(e.prompt), K, per)
            rewards.append(1.0 if ok else 0.0)
            valid.append(pos is not None)
            if pos is not None:
                jobs.append((i, g, list(e.prompt) + list(ids), pos))
        n_correct += int(sum(rewards))
        meta[i] = {"rewards": torch.tensor(rewards), "valid": torch.tensor(valid), "states": {}}
    with torch.no_grad():
        for c in range(0, len(jobs), _CHUNK):
            part = jobs[c : c + _CHUNK]
            E, M, _ = _right_pad(teacher, [j[2] for j in part])
            hs = _base_forward(teacher, E, M, hidden_states=True).hidden_states[1:]
            H = torch.stack(hs, 1)  # [R, L, T, d]
            for r, (i, g, _, pos) in enumerate(part):
                meta[i]["states"][g] = H[r][:, pos].transpose(0, 1).float().cpu()  # [S, L, d]
    for i, m in meta.items():
        ref = m["states"][-1]
        G = len(m["rewards"])
        states = torch.stack([m["states"].get(g, torch.zeros_like(ref)) for g in range(G)]) if G else ref[None]
        t, fell = rollout_teacher(states, m["rewards"], m["valid"], cfg.weighting, ref)
        targets[i] = t
        n_fallback += int(fell)
    stats = {"rollouts": len(data) * cfg.n_rollouts, "correct_rollouts": n_correct, "fallback_problems": n_fallback}
    return targets, stats


# --------------------------------------------------------------------------- the recipe


def run_projection_qthink(cfg: QThinkConfig, resume: bool = False, bench: Any = None, on_step=None, cancel=None) -> dict:
    """`run_projection`'s student, loss form and saved policy, with `teacher_targets` as
    the teacher (see the module docstring)."""
    from ..errors import check_writable_target
    from ..latent.heads import ProjectionModule
    from ..latent.policies import ProjectionHead
    from ..paths import atomic_write_text
    from .checkpoint import CKPT_DIR

    check_writable_target(cfg.out_dir, "out_dir")
    out = Path(cfg.out_dir)
    if not resume and (out / CKPT_DIR).exists():  # before sampling overwrites that run's rollouts
        raise InputError(f"{str(out)!r} already holds a checkpoint; pass resume=True (--resume) to continue it, or choose another out_dir")
    s = setup(cfg, bench)
    if s.close is None and cfg.positions == "per_step":
        raise InputError(f"positions='per_step' spaces its positions inside the think block, which the tokenizer of {cfg.model!r} lacks ('</think>'); use positions='final'")
    hf, tok = s.bench.hf, s.bench.tokenizer
    teacher = _frozen_copy(hf)
    path = out / ROLLOUTS_FILE
    rollouts = _load_rollouts(path, cfg, s.data) if resume and path.is_file() else None
    if rollouts is None:
        hf.eval()
        rollouts = sample_rollouts(s.bench, s.data, cfg)
        out.mkdir(parents=True, exist_ok=True)
        rows = [{"id": str(e.problem.id), "rollouts": r} for e, r in zip(s.data, rollouts)]
        atomic_write_text(path, json.dumps({"config": _header(cfg), "problems": rows}) + "\n")
    targets, stats = teacher_targets(teacher, tok, s.data, rollouts, s.close, cfg)
    del teacher
    index = {id(e): i for i, e in enumerate(s.data)}
    d = s.bench.arch.d_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = ProjectionModule(d, cfg.head_hidden or 2 * d).to(next(hf.parameters()).device)
    model = LatentModel(_prepare_base(hf, cfg), head=head)
    a_idx = {id(e): answer_index(e, tok) for e in s.data}
    K = cfg.latent_steps
    per = cfg.positions == "per_step"

    def loss_fn(model: LatentModel, batch: list[Encoded]) -> StepLoss:
        u = unroll(model.hf, [e.prompt for e in batch], K, lambda j, h, m: model.head(h[:, -1]), [e.suffix for e in batch], hidden_states=True)
        ce, n = after_loss(s.vocab, u)
        final = [u.P + u.n_positions + a_idx[id(e)] - 1 for e in batch]
        pos_s = torch.tensor([([u.P + j for j in range(K)] if per else []) + [f] for f in final])  # [B, S]
        rows = torch.arange(len(batch))[:, None]
        T = torch.stack([targets[index[id(e)]] for e in batch]).to(u.hidden.device, u.hidden.dtype)  # [B, S, L, d]
        dist = []
        for l, hs in enumerate(u.hidden_states[1:]):
            a, b = hs[rows, pos_s], T[:, :, l]
            dist.append(F.smooth_l1_loss(a, b) / (b.std() + 1e-6))
        distill = torch.stack(dist).mean()
        return StepLoss(ce + cfg.distill_weight * distill, tokens=n, metrics={"ce": float(ce.detach()), "distill": float(distill.detach())})

    probe = recorder_for(cfg, s.bench, lambda m: ProjectionHead(head_tensors(m.head), steps=K, end=s.end))
    res = train(model, s.data, loss_fn, cfg, resume=resume, on_step=on_step, cancel=cancel, on_checkpoint=probe)
    results: dict[str, Any] = {"steps": res.step, "final_loss": res.final_loss, "teacher": {"weighting": cfg.weighting, "positions": cfg.positions, **stats}}
    if res.status != "done":
        return {"status": res.status, **results}
    base_trained = bool(cfg.train_modules or cfg.lora_rank)
    hf = _merged(model.base).eval()
    s.bench.hf = hf
    tensors = {k: v.detach().float().cpu() for k, v in head.state_dict().items()}
    spec = ProjectionHead(tensors, steps=K, end=s.end)
    results["eval"] = quick_eval(s.bench, spec, cfg.eval_n)

    def write(tmp: Path) -> None:
        if base_trained:
            _save_model(hf, tok, tmp / "model")
        _save_tensors(tmp / "projection_head.safetensors", tensors)
        _write_policy(tmp, {"method": "projection", "recipe": "projection-qthink", "model": "model" if base_trained else cfg.model, "steps": K, "end": s.end, "head": "projection_head.safetensors"})

    return {"status": "done", "final": str(_finish(cfg, write, results)), **results}


__all__ = ["QThinkConfig", "run_projection_qthink", "rollout_teacher", "distill_positions", "rollout_correct", "sample_rollouts", "teacher_targets", "ROLLOUTS_FILE"]

RUNNERS["projection-qthink"] = (QThinkConfig, run_projection_qthink)

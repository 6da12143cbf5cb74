"""The shared trainer: one loop for every recipe (bake, curricula, heads, pause tokens).

A recipe hands `train()` a model whose trainable parameters are marked (`prepare_trainable`:
LoRA adapters through PEFT, or full fine-tuning of chosen modules), a list of examples and
a loss function `loss_fn(model, examples) -> StepLoss`. The loop does the rest, the same
way for everyone:

* AdamW or APOLLO-Mini (`optim.make_optimizer`), warm-up + schedule as a pure function of
  the step, gradient accumulation over `grad_accum` micro batches, gradient clipping;
* seeded and deterministic: the example order of epoch e is a permutation drawn from
  (seed, e), so which examples step s sees depends on s only;
* a checkpoint every `ckpt_every` steps (`checkpoint.save_checkpoint`, atomic) and
  `resume=True` that continues exactly where the last one stopped (parameters, optimizer
  moments and projections, RNG states, step);
* metrics as JSONL (`<out_dir>/metrics.jsonl`: step, loss, lr, grad_norm, tokens, tokens/s,
  the recipe's metrics and eval results), a tqdm bar, an `on_step(metrics)` callback (live
  curves in the app) and a `cancel` flag (threading.Event or any callable -> bool) that
  stops after the current step with a checkpoint;
* an `on_checkpoint` recorder (`CheckpointRecorder`: `begin` once, `record` after every
  checkpoint, before `on_step` sees that row) that looks at the model as it is at each
  checkpoint without changing the run: it runs in eval mode, without grad, with the
  torch, Python and NumPy random states put back afterwards (the latent recipes'
  trajectories, `train.trajectories`);
* a NaN / inf loss or gradient stops the run before the optimizer applies it: the last
  good checkpoint stays as it was, and `TrainingDiverged` says which one it is.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError, OutputNotWritableError, WorkbenchError, check_writable_target
from ..paths import atomic_write_text
from .checkpoint import CKPT_DIR, read_checkpoint, restore, save_checkpoint, seed_everything
from .config import RESUME_MAY_CHANGE, TrainConfig
from .optim import lr_at, make_optimizer, set_lr
from .speed import fast_training, training_autocast

METRICS_FILE = "metrics.jsonl"


class TrainingDiverged(WorkbenchError, ValueError):
    """The loss (or gradient) became NaN/inf; the run stopped before applying that step
    (a WorkbenchError: the command line reports it in one line)."""

    def __init__(self, message: str, step: int, last_checkpoint: Path | None):
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint


@dataclass
class StepLoss:
    """What a recipe's loss function returns for one micro batch.

    loss: scalar tensor with a graph to the trainable parameters.
    tokens: how many tokens (or positions) the loss covers, for tokens/s.
    metrics: extra scalars to log (averaged over micro batches).
    """

    loss: Tensor
    tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """status: "done", "cancelled". step: optimizer steps completed. history: the metrics
    rows of this process (the full log is `metrics_path`)."""

    status: str
    step: int
    out_dir: Path
    checkpoint: Path | None
    metrics_path: Path
    history: list[dict[str, Any]]
    resumed_from: int | None = None
    logged_loss: float | None = None  # the last loss in the metrics log before this process ran

    @property
    def final_loss(self) -> float | None:
        """The loss of the last step taken: from this process's rows, or, for a run resumed
        after it had finished (no step left to take), from the metrics log."""
        if self.history:
            return self.history[-1]["loss"]
        return self.logged_loss


class CheckpointRecorder(Protocol):
    """What `train(on_checkpoint=...)` calls: `begin(model, step, steps, resumed)` once
    before the first step (`step`: where the run starts, the checkpoint's step on resume;
    `steps`: the run's total), `record(model, step)` after every checkpoint is written.
    Both are called through `observe`: eval mode, no grad, random states restored."""

    def begin(self, model: nn.Module, step: int, steps: int, resumed: bool) -> None: ...

    def record(self, model: nn.Module, step: int) -> None: ...


# --------------------------------------------------------------------------- trainable set


def linear_module_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def prepare_trainable(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Freeze `model`, then unfreeze what `cfg` asks for. Returns the model to train: a
    PEFT wrapper (LoRA, `cfg.lora_rank` > 0; LoRA init is seeded with `cfg.seed`) or
    `model` itself with the parameters matching `cfg.train_modules` trainable.

    Raises ValueError (before changing anything) when a LoRA target or a module pattern
    matches nothing."""
    names = [n for n, _ in model.named_parameters()]
    if cfg.lora_rank > 0:
        linears = linear_module_names(model)
        unmatched = [t for t in cfg.lora_targets if not any(n == t or n.endswith("." + t) for n in linears)]
        if unmatched:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise InputError(f"LoRA target(s) {unmatched} match no Linear module of this model; its Linear modules end in: {', '.join(suffixes)}")
        from peft import LoraConfig, get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(cfg.seed)
        lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_targets), bias="none")
        return get_peft_model(model, lcfg)
    if not cfg.train_modules:
        raise InputError("nothing to train: set lora_rank > 0 (LoRA) or train_modules (regular expressions over parameter names)")
    try:
        pats = [re.compile(p) for p in cfg.train_modules]
    except re.error as e:
        raise InputError(f"train_modules has an invalid regular expression: {e}") from None
    unmatched = [p.pattern for p in pats if not any(p.search(n) for n in names)]
    if unmatched:
        raise InputError(f"train_modules pattern(s) {unmatched} match no parameter; parameter names look like {names[:3]} ... {names[-2:]}")
    for n, p in model.named_parameters():
        p.requires_grad_(any(pat.search(n) for pat in pats))
    return model


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------- data order


def batch_indices(n: int, step: int, micro: int, cfg: TrainConfig) -> list[int]:
    """Example indices of micro batch `micro` of optimizer step `step`: a deterministic
    function of (seed, step, micro), so a resumed run sees exactly the same examples."""
    out = []
    start = (step * cfg.grad_accum + micro) * cfg.batch_size
    cache: dict[int, Tensor] = {}
    for i in range(start, start + cfg.batch_size):
        epoch, pos = divmod(i, n)
        if epoch not in cache:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            cache[epoch] = torch.randperm(n, generator=g)
        out.append(int(cache[epoch][pos]))
    return out


# --------------------------------------------------------------------------- metrics log


def _read_metrics(path: Path) -> list[dict]:
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a torn last line from a killed run
            continue
    return rows


def _truncate_metrics(path: Path, upto_step: int) -> None:
    rows = [r for r in _read_metrics(path) if r.get("step", 0) <= upto_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


# --------------------------------------------------------------------------- the loop


def train(
    model: nn.Module,
    data: Sequence[Any],
    loss_fn: Callable[[nn.Module, list[Any]], StepLoss],
    cfg: TrainConfig,
    *,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    cancel: Any = None,
    resume: bool = False,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    fast_kernels: bool | None = None,
    on_checkpoint: CheckpointRecorder | None = None,
    pool: Callable[[int], Sequence[int]] | None = None,
) -> TrainResult:
    """Train the parameters of `model` that require grad on `data` with `loss_fn`.

    data: the examples (any objects; `loss_fn` collates a list of them).
    loss_fn(model, examples) -> StepLoss for one micro batch.
    eval_fn(model) -> dict of metrics, run without grad every `cfg.eval_every` steps and
        at the end (logged in the metrics row of that step).
    on_step(metrics): called after every optimizer step with that step's row.
    cancel: threading.Event (or callable -> bool); when set, the loop stops after the
        current step and writes a checkpoint.
    resume: continue from `<out_dir>/checkpoint` (ValueError if there is none, or it is
        corrupt, foreign or from a run with different math settings). Without resume an
        existing checkpoint is refused rather than overwritten.
    extra_state(): a JSON-able dict stored in each checkpoint (recipe bookkeeping).
    fast_kernels: run the steps inside `speed.fast_training()` (Qwen3.5 Gated DeltaNet in
        its whole-sequence parallel form, and length-bucketed forwards for recipes that
        use `speed.hidden_states`): the same losses to float rounding, faster on the CPU.
        None (default): the config's `fast_kernels` field if it has one, else on;
        WORKBENCH_FAST_KERNELS=0 turns it off everywhere. A checkpoint resumes the same
        with it on or off.
    on_checkpoint: a `CheckpointRecorder`; `begin` before the first step, `record` after
        every checkpoint (before `on_step` gets that row), both through `observe` (the
        steps taken are the same with or without it).
    pool(step): the indices of `data` that step `step` draws its batches from (a data
        curriculum: a pure function of the step, so a resumed run draws the same batches);
        None: all of `data`.
    """
    if len(data) == 0:
        raise InputError("the training corpus is empty; give at least one example")
    if not cfg.out_dir:
        raise InputError("out_dir is empty; give the folder for checkpoints and metrics")
    check_writable_target(cfg.out_dir, "out_dir")
    if Path(cfg.out_dir).is_file():
        raise OutputNotWritableError(f"out_dir {cfg.out_dir!r} is a file; training writes a folder there")
    out = Path(cfg.out_dir)
    ckpt = out / CKPT_DIR
    metrics_path = out / METRICS_FILE
    named = trainable_parameters(model)
    if not named:
        raise InputError("the model has no trainable parameters (prepare_trainable marks them)")
    opt = make_optimizer(named, cfg)
    fingerprint = base_fingerprint(model)
    start = 0
    resumed_from = None
    if resume:
        ck = read_checkpoint(ckpt)
        try:
            old = type(cfg).from_dict(ck.config, source=str(ckpt / "config.json"))
        except ValueError as e:
            raise InputError(f"checkpoint {str(ckpt)!r} has an unreadable config: {e}") from None
        diff = cfg.math_differences(old)
        if diff:
            shown = ", ".join(f"{k}: {a!r} here vs {b!r} in the checkpoint" for k, (a, b) in list(diff.items())[:4])
            raise InputError(f"cannot resume {str(ckpt)!r} with different settings ({shown}); only {', '.join(sorted(RESUME_MAY_CHANGE))} may change")
        if ck.step > cfg.steps:
            raise InputError(f"checkpoint {str(ckpt)!r} is at step {ck.step}, beyond steps={cfg.steps}")
        theirs = ck.state.get("base_fingerprint")
        if theirs is not None and not _close(theirs, fingerprint):
            raise InputError(
                f"checkpoint {str(ckpt)!r} was trained on top of different frozen weights (fingerprint {theirs} there, "
                f"{fingerprint} here); resume needs the same base model"
            )
        restore(ck, named, opt)
        start = resumed_from = ck.step
    else:
        if ckpt.exists():
            raise InputError(f"{str(out)!r} already holds a checkpoint; pass resume=True (--resume) to continue it, or choose another out_dir")
        seed_everything(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out)
    logged_loss = None
    if resume:
        _truncate_metrics(metrics_path, start)
        losses = [r["loss"] for r in _read_metrics(metrics_path) if isinstance(r, dict) and isinstance(r.get("loss"), (int, float))]
        logged_loss = losses[-1] if losses else None
    elif metrics_path.exists():
        atomic_write_text(metrics_path, "")

    history: list[dict[str, Any]] = []
    last_ckpt: Path | None = ckpt if resume else None
    was_training = model.training
    model.train()
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=cfg.recipe, unit="step", dynamic_ncols=True)
    status = "done"
    step = start
    fast = bool(getattr(cfg, "fast_kernels", True)) if fast_kernels is None else bool(fast_kernels)
    try:
        with open(metrics_path, "a") as log, fast_training(fast):
            if on_checkpoint is not None:
                observe(model, lambda: on_checkpoint.begin(model, start, cfg.steps, resume))
            while step < cfg.steps:
                t0 = time.perf_counter()
                lr = lr_at(step, cfg)
                set_lr(opt, lr)
                opt.zero_grad(set_to_none=True)
                total, tokens, extra = 0.0, 0, {}
                for micro in range(cfg.grad_accum):
                    if pool is None:
                        idx = batch_indices(len(data), step, micro, cfg)
                    else:
                        active = pool(step)
                        idx = [int(active[j]) for j in batch_indices(len(active), step, micro, cfg)]
                    with training_autocast(cfg, model):  # the forward only: backward runs in the dtypes the forward chose
                        res = loss_fn(model, [data[i] for i in idx])
                    lv = float(res.loss.detach())
                    if not torch.isfinite(torch.tensor(lv)):
                        _diverged(step, "loss", lv, last_ckpt)
                    (res.loss / cfg.grad_accum).backward()
                    total += lv / cfg.grad_accum
                    tokens += int(res.tokens)
                    for k, v in res.metrics.items():
                        extra[k] = extra.get(k, 0.0) + float(v) / cfg.grad_accum
                params = [p for _, p in named]
                if cfg.max_grad_norm is not None:
                    gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                else:
                    gn = float(torch.norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None])))
                if not torch.isfinite(torch.tensor(gn)):
                    _diverged(step, "gradient norm", gn, last_ckpt)
                opt.step()
                step += 1
                dt = time.perf_counter() - t0
                row: dict[str, Any] = {"step": step, "loss": total, "lr": lr, "grad_norm": gn, "tokens": tokens, "tokens_per_s": tokens / dt if dt > 0 else 0.0, "seconds": dt, **extra}
                if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                    row.update({f"eval_{k}": v for k, v in _evaluate(model, eval_fn).items()})
                if step % cfg.ckpt_every == 0 or step == cfg.steps:
                    save_checkpoint(ckpt, step=step, named_params=named, opt=opt, cfg=cfg, extra=extra_state() if extra_state else None, fingerprint=fingerprint)
                    last_ckpt = ckpt
                    row["checkpoint"] = True
                    if on_checkpoint is not None:
                        observe(model, lambda: on_checkpoint.record(model, step))
                if step % cfg.log_every == 0 or step == cfg.steps:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                history.append(row)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total:.4g}", lr=f"{lr:.2g}")
                if on_step is not None:
                    on_step(row)
                if _cancelled(cancel):
                    if not row.get("checkpoint"):
                        save_checkpoint(ckpt, step=step, named_params=named, opt=opt, cfg=cfg, extra=extra_state() if extra_state else None, fingerprint=fingerprint)
                        last_ckpt = ckpt
                        row["checkpoint"] = True
                        if on_checkpoint is not None:
                            observe(model, lambda: on_checkpoint.record(model, step))
                    if step % cfg.log_every != 0 and step != cfg.steps:
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                    status = "cancelled"
                    break
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return TrainResult(status, step, out, last_ckpt, metrics_path, history, resumed_from, logged_loss)


def base_fingerprint(model: nn.Module) -> list[float]:
    """[sum, sum of squares] (float64) over the frozen parameters: a cheap check that a
    resumed run sits on the same base weights as the checkpoint (which holds only the
    trainable part)."""
    s = s2 = 0.0
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                d = p.detach().double()
                s += float(d.sum())
                s2 += float((d * d).sum())
    return [s, s2]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y)) for x, y in zip(a, b))


def observe(model: nn.Module, fn: Callable[[], Any]) -> Any:
    """Run `fn()` (which may run `model`) so that the training run cannot tell: `model` in
    eval mode and no grad for the duration, then its train/eval mode, the torch RNGs (CPU
    and every CUDA device), Python's `random` and NumPy's global state as they were, also
    when `fn` raises."""
    import random

    import numpy as np

    was = model.training
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            return fn()
    finally:
        model.train(was)
        random.setstate(py)
        np.random.set_state(npy)


def _evaluate(model: nn.Module, eval_fn) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad():
            return {k: float(v) for k, v in eval_fn(model).items()}
    finally:
        model.train()


def _diverged(step: int, what: str, value: float, last: Path | None):
    where = f"the last good checkpoint is {str(last)!r}, left as it was" if last is not None else "no checkpoint had been written yet"
    raise TrainingDiverged(f"training stopped at step {step + 1}: the {what} is {value} (not finite); {where}", step, last)


__all__ = ["train", "observe", "CheckpointRecorder", "prepare_trainable", "trainable_parameters", "batch_indices", "StepLoss", "TrainResult", "TrainingDiverged", "METRICS_FILE", "linear_module_names"]

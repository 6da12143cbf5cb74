"""Training: one shared trainer for every recipe (`loop.train`), optimizers (AdamW,
APOLLO-Mini), atomic checkpoints with exact resume, and the recipes built on it.

    from workbench import train as tr
    cfg = tr.TrainConfig(steps=200, lora_rank=8, out_dir="runs/x")
    model = tr.prepare_trainable(hf, cfg)
    result = tr.train(model, examples, loss_fn, cfg, on_step=print)

Recipes (`python -m workbench.train RECIPE --config cfg.json`, `workbench train RECIPE`):
see `recipes.RECIPES`. Names load lazily (no torch import until one is used).
"""

from __future__ import annotations

from .._lazy import lazy_exports


_EXPORTS = {
    "TrainConfig": "config",
    "parse_overrides": "config",
    "train": "loop",
    "prepare_trainable": "loop",
    "trainable_parameters": "loop",
    "StepLoss": "loop",
    "TrainResult": "loop",
    "TrainingDiverged": "loop",
    "make_optimizer": "optim",
    "optimizer_state_bytes": "optim",
    "lr_at": "optim",
    "read_checkpoint": "checkpoint",
    "Checkpoint": "checkpoint",
    "fold_ablation": "bake",
    "fold_offset": "bake",
    "BakeConfig": "bake",
    "bake": "bake",
    "bake_report": "bake",
    "BakeReport": "bake",
    "RECIPES": "recipes",
}
_SUBMODULES = {"config", "loop", "optim", "checkpoint", "bake", "recipes"}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, set(_SUBMODULES))

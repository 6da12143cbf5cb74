"""Training recipes by name, and the command line shared by `python -m workbench.train`
and `workbench train`.

    python -m workbench.train bake --config bake.json --set vector=\\"vec.safetensors\\"
    workbench train bake --set vector=\\"vec.safetensors\\" --set steps=150 --out runs/bake
    workbench train bake ... --resume          # continue the run in --out exactly

Each recipe has a config dataclass (a `TrainConfig` subclass) read from `--config` (JSON;
unknown keys warn) with `--set KEY=VALUE` overrides (values parsed as JSON).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InputError
from .config import TrainConfig, parse_overrides


@dataclass(frozen=True)
class Recipe:
    name: str
    help: str
    config_class: Callable[[], type[TrainConfig]] | None  # lazy: None when not implemented
    run: Callable[[TrainConfig, bool], dict] | None


def _bake_config():
    from .bake import BakeConfig

    return BakeConfig


def _run_bake(cfg, resume: bool) -> dict:
    import os

    from ..errors import FileFormatError, MissingFileError
    from ..models import load
    from .bake import bake

    if not cfg.vector:
        raise InputError("recipe bake needs a steering vector file: --set vector='\"path/to/vector.safetensors\"' (or in --config)")
    # what can be refused before the model is loaded
    if not os.path.exists(cfg.vector):
        raise MissingFileError(f"vector {cfg.vector!r} does not exist; give a steering vector file (.safetensors or .gguf)")
    if os.path.isdir(cfg.vector):
        raise FileFormatError(f"vector {cfg.vector!r} is a folder, not a steering vector file (.safetensors or .gguf)")
    from .bake import load_probe_set

    load_probe_set(cfg.probe_set)
    if cfg.corpus_file and not os.path.isfile(cfg.corpus_file):
        raise MissingFileError(f"corpus_file {cfg.corpus_file!r} is not a file; give a text file of prompts, one per line")
    bench = load(cfg.model, device=cfg.device, dtype=cfg.dtype)
    res = bake(bench, cfg.vector, cfg, resume=resume)
    if res.report is None:
        return {"status": res.train.status, "step": res.train.step, "checkpoint": str(res.train.checkpoint)}
    print(res.report.summary())
    return {"status": "done", "model_dir": str(res.model_dir), **res.report.to_dict()}


def _micro_config():
    from .micro import MicroConfig

    return MicroConfig


def _run_micro(cfg, resume: bool) -> dict:
    from .micro import run_recipe

    return run_recipe(cfg, resume)


def _latent_config(name: str):
    def get():
        from .latent_recipes import RUNNERS

        return RUNNERS[name][0]

    return get


def _latent_run(name: str):
    def run(cfg, resume: bool) -> dict:
        from .latent_recipes import RUNNERS

        return RUNNERS[name][1](cfg, resume)

    return run


RECIPES: dict[str, Recipe] = {
    "bake": Recipe("bake", "bake a steering vector into the weights (distillation, or an exact fold with mode=\"fold\")", _bake_config, _run_bake),
    "coconut": Recipe("coconut", "COCONUT curriculum: stage k replaces k reasoning steps with k x c latent thoughts", _latent_config("coconut"), _latent_run("coconut")),
    "projection-head": Recipe("projection-head", "CODI/QThink projection head: match the teacher's hidden states at the answer", _latent_config("projection-head"), _latent_run("projection-head")),
    "latent-head": Recipe("latent-head", "latent head (latent_head.safetensors) on a frozen base", _latent_config("latent-head"), _latent_run("latent-head")),
    "pause": Recipe("pause", "pause tokens before CoT: learnable embeddings after the prompt, then the explicit chain (loss on its first tokens)", _latent_config("pause"), _latent_run("pause")),
    "pause-answer": Recipe("pause-answer", "pause tokens, no CoT (Goyal et al. 2023): prompt + pauses + </think>, loss on the answer only", _latent_config("pause-answer"), _latent_run("pause-answer")),
    "upft": Recipe("upft", "UPFT (Ji et al. 2025): fine-tune the model on the first tokens of its own sampled answers; evaluated with CoT", _latent_config("upft"), _latent_run("upft")),
    "latent-sft": Recipe("latent-sft", "Latent-SFT: stage 1 encoder/decoder under induction/supervision masks, stage 2 KL + CE to the soft labels", _latent_config("latent-sft"), _latent_run("latent-sft")),
    "projection-qthink": Recipe("projection-qthink", "projection head with QThink's teacher: reward-weighted mean hidden states of correct sampled rollouts", _latent_config("projection-qthink"), _latent_run("projection-qthink")),
    "micro": Recipe("micro", "train the Qwen3.5 micro model from scratch with <think> chains on arithmetic (or --set task=graph: the graph task) (the machine cache without --out)", _micro_config, _run_micro),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    lines = "\n".join(f"  {r.name:<16} {r.help}{'' if r.run else '  [not implemented yet]'}" for r in RECIPES.values())
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (p.description or "Train with the shared trainer.") + "\n\nrecipes:\n" + lines
    p.add_argument("recipe", choices=sorted(RECIPES), metavar="RECIPE", help="one of: " + ", ".join(RECIPES))
    p.add_argument("--config", help="JSON file with the recipe's config (unknown keys warn)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (value as JSON); repeatable")
    p.add_argument("--out", help="output folder (config field out_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder from its last checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def get_recipe(name: Any) -> Recipe:
    """The recipe called `name`; InputError naming the valid ones otherwise."""
    if not isinstance(name, str) or name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    return RECIPES[name]


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    recipe = get_recipe(args.recipe)
    if recipe.run is None:
        raise InputError(f"recipe {args.recipe!r} is not implemented yet (available now: {', '.join(n for n, r in RECIPES.items() if r.run)})")
    cls = recipe.config_class()
    data: dict[str, Any] = {}
    if args.config:
        data = json.loads(cls.load(args.config).to_json())
    data.update(parse_overrides(args.set))
    if args.out:
        data["out_dir"] = args.out
    data["recipe"] = args.recipe
    return cls.from_dict(data, source=args.config or "--set")


def run(args: argparse.Namespace) -> int:
    from ..errors import check_writable_target

    cfg = resolve_config(args)
    if args.print_config:
        print(cfg.to_json(), end="")
        return 0
    if cfg.out_dir:  # refused before a model is loaded (micro's "" is the machine cache)
        check_writable_target(cfg.out_dir, "out_dir")
    result = get_recipe(args.recipe).run(cfg, bool(args.resume))
    print(json.dumps(result, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(prog="python -m workbench.train", description="Train with the shared trainer.")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except Exception as e:  # noqa: BLE001 - a defect is re-raised with its traceback
        from ..cli import user_error

        msg = user_error(e)
        if msg is None:
            raise
        print(f"workbench.train {args.recipe}: error: {msg}", file=sys.stderr)
        return 2


__all__ = ["Recipe", "RECIPES", "get_recipe", "add_arguments", "resolve_config", "run", "main"]

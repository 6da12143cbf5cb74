"""`workbench train RECIPE`: the shared trainer's recipes (same as `python -m workbench.train`)."""

from __future__ import annotations


def register(sub) -> None:
    from ..train.recipes import add_arguments, run

    p = sub.add_parser("train", help="training recipes: bake, coconut, projection-head, latent-head, pause, pause-answer, upft, micro")
    add_arguments(p)
    p.set_defaults(func=run)

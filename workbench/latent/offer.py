"""What a client should offer first for latent reasoning: trained recipe folders and
micro models that exist on this machine, or, when there are none, the one line that says
how to make them. The app's Latent tab and the command line read this; neither decides it.

Latent loops on an untrained model (COCONUT's latents fed to a model never trained on
them) show the machinery, not latent reasoning; a researcher opening the tool should be
pointed at a model where the latents mean something.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .policies import POLICY_FILE

MAX_DEPTH = 5  # folders below a search root that are looked into
MAX_FOLDERS = 20


@dataclass
class Offer:
    """recipe_folders: `final` folders of latent recipes (newest first; a `cot` training
    path such as upft is not a latent policy and is left out); micro_models: the micro
    models already built on this machine (registry names); message: one line for the
    client to show."""

    recipe_folders: list[Path] = field(default_factory=list)
    micro_models: list[str] = field(default_factory=list)
    message: str = ""


def find_recipe_folders(roots: Iterable[str | os.PathLike], max_depth: int = MAX_DEPTH) -> list[Path]:
    """Folders holding a latent recipe's `latent_policy.json` below `roots` (at most
    `max_depth` levels down, symlinks not followed, unreadable folders skipped), newest
    first, latent policies only."""
    import json

    found: list[tuple[float, Path]] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        base = len(root.parts)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            if len(here.parts) - base >= max_depth:
                dirnames[:] = []
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if POLICY_FILE in filenames:
                try:
                    method = json.loads((here / POLICY_FILE).read_text()).get("method")
                    mtime = (here / POLICY_FILE).stat().st_mtime
                except (OSError, ValueError, AttributeError):
                    continue
                if method not in (None, "cot"):
                    found.append((mtime, here))
    found.sort(key=lambda t: (-t[0], str(t[1])))
    seen, out = set(), []
    for _, p in found:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out[:MAX_FOLDERS]


def built_micro_models() -> list[str]:
    """Registry names of the micro models whose cache folder exists (never trains one)."""
    from ..paths import workbench_cache_dir
    from ..train.micro import CACHE_KEYS, MODEL_NAMES

    return [MODEL_NAMES[t] for t, key in CACHE_KEYS.items() if (workbench_cache_dir() / key).is_dir()]


def offer(roots: Iterable[str | os.PathLike]) -> Offer:
    """The recipe folders below `roots` and the built micro models, with the line to show."""
    folders = find_recipe_folders(roots)
    micro = built_micro_models()
    if folders:
        msg = f"Trained latent recipes found: policy `trained` with {folders[0]} is selected (run it on the model it was trained on)."
    elif micro:
        msg = (
            f"{', '.join(micro)} is built but no latent recipe has been trained on it here: train one in the Training tab "
            "(e.g. coconut) or run `workbench train coconut`; until then latent loops show the machinery on a model "
            "never trained on latents."
        )
    else:
        msg = (
            "No model trained for latent reasoning on this machine: `workbench train micro` (about 18 minutes on 2 CPU "
            "cores), then `workbench train coconut` or the Training tab. Until then latent loops show the machinery on a "
            "model never trained on latents."
        )
    return Offer(folders, micro, msg)

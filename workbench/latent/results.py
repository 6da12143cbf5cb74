"""`workbench latent results`: the README's latent-reasoning results table in one command.

On the Qwen3.5 micro model (trained once per machine): train every latent recipe with its
default config (skipped when `<out>/<recipe>/final` exists; an interrupted run resumes),
then score no-CoT, explicit CoT and each recipe through the latent engine on the held-out
arithmetic sets of every difficulty (`train.arith.EVAL_SETS`); a training path that is not
a latent method (`upft`) is scored as explicit CoT on its fine-tuned model. Writes
`results.json` and `results.md` (atomic) into `out`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# (row label, recipe). Each label says what the row measures: "pause tokens before CoT" is
# the pause recipe followed by the model's explicit chain (do pauses leave CoT intact?);
# "pause tokens, no CoT (Goyal)" answers right after the pauses (latent computation in the
# pause positions); "UPFT, then CoT" is the model fine-tuned on its own sampled prefixes,
# scored with explicit CoT (a training path, not a latent method).
RECIPE_ROWS = (
    ("COCONUT", "coconut"), ("projection head", "projection-head"), ("latent head", "latent-head"),
    ("pause tokens before CoT", "pause"), ("pause tokens, no CoT (Goyal)", "pause-answer"), ("UPFT, then CoT", "upft"),
)  # fmt: skip


def row_method(final: str | Path) -> tuple[Any, str]:
    """(what `evaluate` runs, the model it runs on) for a recipe's final folder: what
    `load_policy` reads (a latent policy, or "cot" on the folder's fine-tuned model for a
    training path evaluated with explicit CoT, such as `upft`)."""
    from .policies import load_policy

    return load_policy(str(final))


def ensure_recipe(recipe: str, out: Path, model: str, retrain: bool = False, overrides: dict | None = None) -> tuple[Path, dict]:
    """`<out>/<recipe>/final`, training it with the default config when missing."""
    import shutil

    from ..train.latent_recipes import RUNNERS

    run_dir = out / recipe
    final = run_dir / "final"
    if retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    summary_path = final / "train_summary.json"
    if final.is_dir() and summary_path.is_file():
        return final, json.loads(summary_path.read_text())
    cls, run = RUNNERS[recipe]
    cfg = cls(model=model, out_dir=str(run_dir), eval_n=0, **(overrides or {}))
    resume = (run_dir / "checkpoint").exists() or any(run_dir.glob("stage*/checkpoint"))  # an interrupted run
    t0 = time.perf_counter()
    res = run(cfg, resume=resume)
    if res.get("status") != "done":
        raise RuntimeError(f"recipe {recipe} stopped: {res}")
    info = json.loads(summary_path.read_text())
    info["train_seconds"] = round(time.perf_counter() - t0, 1)
    from ..paths import atomic_write_text

    atomic_write_text(summary_path, json.dumps(info, indent=1, default=str) + "\n")
    return final, info


def results(
    out_dir: str | Path = "runs/latent-results",
    *,
    n: int = 100,
    model: str = "qwen3.5-micro",
    retrain: bool = False,
    batch_size: int = 32,
    recipes: tuple[str, ...] | None = None,
    overrides: dict[str, dict] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from .. import load
    from ..paths import atomic_write_text
    from ..train.arith import EVAL_SETS, eval_problems
    from .eval import evaluate

    from ..errors import InputError, check_writable_target
    from ..inputs import check_integer

    known = [r for _, r in RECIPE_ROWS]
    if isinstance(recipes, str):  # one name, not its letters
        recipes = (recipes,)
    if recipes is not None and not hasattr(recipes, "__iter__"):
        raise InputError(f"recipes must be a list of recipe names ({', '.join(known)}) or None, got {recipes!r}")
    unknown = [r for r in (recipes or ()) if r not in known]
    if unknown:
        raise InputError(f"unknown recipe(s) {unknown}; valid: {', '.join(known)}")
    n = check_integer(n, "n (problems per set)", low=1)
    batch_size = check_integer(batch_size, "batch_size", low=1)
    check_writable_target(out_dir, "out_dir")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = load(model, device="cpu")
    benches: dict[str, Any] = {model: base}
    rows: list[tuple[str, Any, Any, dict]] = [("no-CoT", base, "no_think", {}), ("CoT", base, "cot", {})]
    for label, recipe in RECIPE_ROWS:
        if recipes is not None and recipe not in recipes:
            continue
        final, info = ensure_recipe(recipe, out, model, retrain, (overrides or {}).get(recipe))
        spec, m = row_method(final)
        if m not in benches:
            benches[m] = load(m, device="cpu")
        rows.append((label, benches[m], spec, {"train_seconds": info.get("train_seconds"), "folder": str(final)}))
    problems = {name: eval_problems(name, n) for name in EVAL_SETS}
    table: list[dict[str, Any]] = []
    for label, bench, method, extra in rows:
        entry: dict[str, Any] = {"method": label, **extra, "sets": {}}
        for set_name, probs in problems.items():
            _, summary = evaluate(bench, {label: method}, probs, batch_size=batch_size, progress=progress)
            s = summary[0]
            entry["sets"][set_name] = {**asdict(s), "thinking_positions": s.latent_positions + s.think_steps}
        table.append(entry)
    report = {"model": model, "n_per_set": n, "sets": list(EVAL_SETS), "rows": table}
    atomic_write_text(out / "results.json", json.dumps(report, indent=1, default=str) + "\n")
    md = markdown(report)
    atomic_write_text(out / "results.md", md + "\n")
    return report


def markdown(report: dict[str, Any]) -> str:
    sets = report["sets"]
    head = "| method | " + " | ".join(f"acc {s}" for s in sets) + " | thinking positions | visible tokens | train time |"
    sep = "|---|" + "---:|" * (len(sets) + 3)
    lines = [head, sep]
    for r in report["rows"]:
        accs = " | ".join(f"{r['sets'][s]['accuracy']:.2f}" for s in sets)
        pos = " / ".join(f"{r['sets'][s]['thinking_positions']:.1f}" for s in sets)
        vis = " / ".join(f"{r['sets'][s]['visible_tokens']:.1f}" for s in sets)
        t = r.get("train_seconds")
        lines.append(f"| {r['method']} | {accs} | {pos} | {vis} | {'' if t is None else f'{t / 60:.1f} min'} |")
    lines.append("")
    lines.append(f"{report['n_per_set']} held-out problems per set; thinking positions and visible tokens are means per set ({' / '.join(sets)}).")
    return "\n".join(lines)


__all__ = ["results", "markdown", "ensure_recipe", "row_method", "RECIPE_ROWS"]
